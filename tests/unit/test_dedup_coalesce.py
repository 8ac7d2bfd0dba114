"""Stage 6 (VersionGate: apply once, only forward) and stage 7 (coalesce)."""

from __future__ import annotations

import json
import pickle
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.coalesce import coalesce, update_hash
from operators.dedup import Verdict, VersionGate
from operators.validate import ValidationConfig, validate_record
from tests.support.events import T0, W0, state_event
from tilepipe.records import RawRecord, TileEvent, TileUpdate
from tilepipe.tiles import tile_key
from tilepipe.versions import order_key, version_key

TMS = "WebMercatorQuad"
Z, X, Y = 14, 8802, 5373
KEY = tile_key(Z, X, Y)
EAST = (Z, X + 1, Y)  # the neighbouring tile

APPLY, DUPLICATE, STALE = Verdict.APPLY, Verdict.DUPLICATE, Verdict.STALE


def ok(version: int | str, ts: int = 0) -> str:
    return order_key(version_key(version), T0 + ts)


def gate(max_ids: int = 1000, max_objects: int = 1000) -> VersionGate:
    return VersionGate(max_ids, max_objects)


# == VersionGate ======================================================================


def test_first_event_applies() -> None:
    g = gate()
    assert g.offer(state_event(version=1)) is APPLY
    assert g.seen("/1@0")


def test_same_event_again_is_duplicate() -> None:
    g = gate()
    e = state_event(version=1, event_id="a")
    assert g.offer(e) is APPLY
    assert g.offer(e) is DUPLICATE
    # Its event_id decides, even if a producer re-sent it with another version.
    assert g.offer(state_event(version=9, ts=5, event_id="a")) is DUPLICATE


def test_same_version_and_time_under_another_id_is_duplicate() -> None:
    g = gate()
    assert g.offer(state_event(version=2, ts=10, event_id="a")) is APPLY
    assert g.offer(state_event(version=2, ts=10, event_id="b")) is DUPLICATE
    assert (
        g.offer(state_event(version="2.0", ts=10, event_id="c")) is DUPLICATE
    )  # "2.0" is version 2
    assert not g.seen("b")


def test_newer_applies_older_is_stale() -> None:
    g = gate()
    assert g.offer(state_event(version=5, ts=10, event_id="v5")) is APPLY
    assert g.offer(state_event(version=4, ts=99, event_id="v4")) is STALE
    assert (
        g.offer(state_event(version=5, ts=9, event_id="v5-earlier")) is STALE
    )  # same version, earlier time
    assert (
        g.offer(state_event(version=5, ts=11, event_id="v5-later")) is APPLY
    )  # same version, later time
    assert g.offer(state_event(version=6, ts=0, event_id="v6")) is APPLY
    assert g.offer(state_event(version=5, ts=50, event_id="v5-late")) is STALE
    assert not g.seen("v4")
    assert not g.seen("v5-late")
    assert g.seen("v6")


def test_dotted_versions_compare_numerically() -> None:
    g = gate()
    assert g.offer(state_event(version="1.9.0", ts=0, event_id="a")) is APPLY
    assert g.offer(state_event(version="1.10.0", ts=0, event_id="b")) is APPLY
    assert g.offer(state_event(version="1.9.9", ts=5, event_id="c")) is STALE
    assert g.offer(state_event(version="1.10", ts=0, event_id="d")) is DUPLICATE
    assert g.offer(state_event(version="1.10.0.1", ts=0, event_id="e")) is APPLY


def test_judge_does_not_change_anything() -> None:
    g = gate()
    before = g.snapshot()
    for _ in range(3):
        assert g.judge(state_event(version=1, event_id="a")) is APPLY
    assert g.snapshot() == before
    assert not g.seen("a")
    assert g.offer(state_event(version=1, event_id="a")) is APPLY
    assert g.judge(state_event(version=1, event_id="a")) is DUPLICATE
    assert g.judge(state_event(version=0, event_id="b")) is STALE


def test_objects_do_not_suppress_each_other() -> None:
    g = gate()
    assert g.offer(state_event(version=50, ts=0, obj="feature/1")) is APPLY
    assert g.offer(state_event(version=1, ts=0, obj="feature/2")) is APPLY
    assert g.offer(state_event(version=1, ts=0, obj="")) is APPLY
    assert g.offer(state_event(version=49, ts=5, obj="feature/1")) is STALE
    assert g.offer(state_event(version=2, ts=0, obj="feature/2")) is APPLY
    applied = g.applied()
    assert applied == {
        "feature/1": ((50,), T0),
        "feature/2": ((2,), T0),
        "": ((1,), T0),
    }


def test_recent_ids_bounded_by_max_ids_oldest_dropped_first() -> None:
    g = gate(max_ids=3)
    for v in range(1, 6):
        assert g.offer(state_event(version=v, event_id=f"id{v}")) is APPLY
    assert g.snapshot()[1] == ("id3", "id4", "id5")
    assert not g.seen("id1")
    assert not g.seen("id2")
    assert g.seen("id5")
    # A forgotten id is still judged by its version: no re-application.
    assert g.offer(state_event(version=1, event_id="id1")) is STALE


def test_objects_bounded_by_max_objects_oldest_dropped_first() -> None:
    g = gate(max_objects=2)
    assert g.offer(state_event(version=1, obj="a")) is APPLY
    assert g.offer(state_event(version=1, obj="b")) is APPLY
    assert (
        g.offer(state_event(version=2, obj="b")) is APPLY
    )  # an object already tracked: nobody evicted
    assert list(g.applied()) == ["a", "b"]
    assert g.offer(state_event(version=1, obj="c")) is APPLY
    assert list(g.applied()) == ["b", "c"]
    assert g.applied()["b"] == ((2,), T0)
    # Judging or rejecting never evicts.
    assert g.offer(state_event(version=1, obj="b", event_id="b-old")) is STALE
    assert g.judge(state_event(version=1, ts=1, obj="d")) is APPLY  # newer than the forgotten a
    assert (
        g.judge(state_event(version=1, obj="d")) is STALE
    )  # not newer than a: could be an old replay
    assert list(g.applied()) == ["b", "c"]


gate_events = st.builds(
    lambda v, t, obj, eid: state_event(version=v, ts=t, event_id=f"e{eid}", obj=obj),
    st.integers(0, 6) | st.sampled_from(["1.5", "2.0", "3.0.1"]),
    st.integers(0, 5),
    st.sampled_from(["", "a", "b", "c", "d"]),
    st.integers(0, 40),
)


@given(st.lists(gate_events, max_size=60), st.integers(1, 5), st.integers(1, 4))
def test_state_stays_within_bounds(events: list[TileEvent], max_ids: int, max_obj: int) -> None:
    g = gate(max_ids, max_obj)
    for e in events:
        g.offer(e)
        applied, ids = g.snapshot()
        assert len(ids) <= max_ids
        assert len(applied) <= max_obj
        assert len(set(ids)) == len(ids)


@given(st.lists(gate_events, max_size=60))
def test_gate_matches_reference_model(events: list[TileEvent]) -> None:
    """With room for everything the gate is exactly: first id wins, strictly newer applies."""
    g = gate()
    applied: dict[str, tuple[tuple[int, ...], int]] = {}
    ids: set[str] = set()
    for e in events:
        current = (e.vkey, e.ts_ms)
        last = applied.get(e.object_id)
        if e.event_id in ids:
            expected = DUPLICATE
        elif last is None or current > last:
            expected = APPLY
            applied[e.object_id] = current
            ids.add(e.event_id)
        elif current == last:
            expected = DUPLICATE
        else:
            expected = STALE
        assert g.offer(e) is expected
    assert g.applied() == applied
    assert set(g.snapshot()[1]) == ids


@given(st.lists(gate_events, max_size=40), st.lists(gate_events, max_size=40))
def test_snapshot_restore_round_trip(before: list[TileEvent], after: list[TileEvent]) -> None:
    g = gate(max_ids=7, max_objects=3)
    for e in before:
        g.offer(e)
    snap = g.snapshot()
    snap = pickle.loads(pickle.dumps(snap))  # as Bytewax recovery stores it
    r = VersionGate.restore(7, 3, snap, g.floor_ms)
    assert r.snapshot() == g.snapshot()
    # The restored gate behaves exactly like the original from here on,
    # including which ids and objects are dropped first.
    for e in after:
        assert r.offer(e) is g.offer(e)
        assert r.snapshot() == g.snapshot()


def test_a_forgotten_object_cannot_come_back_older() -> None:
    """Review M5: past max_objects an object is forgotten; its old version stays refused."""
    g = gate(max_objects=4)
    assert g.offer(state_event(version=5, ts=100, obj="A")) is APPLY
    for i, name in enumerate("BCDEF"):
        assert g.offer(state_event(version=1, ts=101 + i, obj=name)) is APPLY
    assert "A" not in g.applied()
    assert (
        g.offer(state_event(version=3, ts=50, obj="A")) is STALE
    )  # a late replay of A's older version
    assert (
        g.offer(state_event(version=1, ts=200, obj="G")) is APPLY
    )  # a new object: its own version counts
    # The floor survives a snapshot, as Bytewax recovery stores it.
    r = VersionGate.restore(1000, 4, pickle.loads(pickle.dumps(g.snapshot())), g.floor_ms)
    assert r.offer(state_event(version=2, ts=60, obj="A", event_id="again")) is STALE


def test_restore_does_not_share_state_with_the_snapshot() -> None:
    g = gate()
    g.offer(state_event(version=1, event_id="a"))
    snap = g.snapshot()
    r = VersionGate.restore(10, 10, snap)
    r.offer(state_event(version=2, event_id="b"))
    assert g.snapshot() == snap
    assert not g.seen("b")
    assert r.seen("a")
    assert r.seen("b")


def test_verdict_values_are_stable_strings() -> None:
    assert [v.value for v in Verdict] == ["apply", "duplicate", "stale"]
    assert Verdict.APPLY == "apply"


# == coalesce =========================================================================


def test_coalesce_single_event() -> None:
    e = state_event(version=3, ts=10, layers=("roads",), received_ms=W0 + 7)
    u = coalesce([e])
    assert isinstance(u, TileUpdate)
    objects = (("", ok(3, 10)),)
    assert u == TileUpdate(
        key=KEY,
        tms=TMS,
        z=Z,
        x=X,
        y=Y,
        version=3,
        objects=objects,
        hash=update_hash(TMS, Z, X, Y, objects),
        ts_ms=T0 + 10,
        oldest_ts_ms=T0 + 10,
        oldest_received_ms=W0 + 7,
        events=1,
        records=1,
        layers=("roads",),
        coverage="tile",
        h3_cells=(),
    )
    assert re.fullmatch(r"[0-9a-f]{16}", u.hash)


def test_coalesce_picks_the_newest_version() -> None:
    applied = [
        state_event(version=1, ts=30, received_ms=W0 + 3),
        state_event(version="1.5", ts=10, received_ms=W0 + 1),
        state_event(version="2.0", ts=20, received_ms=W0 + 2),
    ]
    u = coalesce(applied)
    assert u.version == "2.0"  # as received
    assert u.ts_ms == T0 + 20
    assert u.objects == (("", ok(2, 20)),)
    assert u.events == 3
    assert u.oldest_ts_ms == T0 + 10
    assert u.oldest_received_ms == W0 + 1


def test_coalesce_keeps_latest_order_of_each_object_sorted() -> None:
    applied = [
        state_event(version=1, ts=0, obj="zeta"),
        state_event(version=7, ts=0, obj="alpha"),
        state_event(version=2, ts=5, obj="zeta"),
        state_event(version=8, ts=1, obj="alpha"),
        state_event(version=1, ts=2, obj="mid", coverage="exact", h3="8a1f"),
    ]
    u = coalesce(applied)
    assert u.objects == (
        ("alpha", ok(8, 1)),
        ("mid", ok(1, 2)),
        ("zeta", ok(2, 5)),
    )
    assert u.events == 5
    assert u.version == 1  # the last applied event's version
    assert u.coverage == "exact"


def test_coalesce_layers_union() -> None:
    u = coalesce(
        [
            state_event(version=1, layers=("water", "roads")),
            state_event(version=2, layers=("roads", "labels")),
        ]
    )
    assert u.layers == ("labels", "roads", "water")
    assert (
        coalesce([state_event(version=1, layers=()), state_event(version=2, layers=())]).layers
        == ()
    )


@pytest.mark.parametrize("where", [0, 1, 2])
def test_coalesce_layers_none_if_any_event_is_for_all_layers(where: int) -> None:
    applied = [state_event(version=v, layers=("roads",)) for v in (1, 2, 3)]
    applied[where] = applied[where]._replace(layers=None)
    assert coalesce(applied).layers is None


def test_coalesce_h3_cells_unique_sorted() -> None:
    applied = [
        state_event(version=1, obj="s1", h3="8a2"),
        state_event(version=1, obj="s2", h3="8a1"),
        state_event(version=2, obj="s1", h3="8a2"),
        state_event(version=1, obj="s3"),
    ]
    assert coalesce(applied).h3_cells == ("8a1", "8a2")


def test_hash_deterministic_and_over_objects_only() -> None:
    a = coalesce(
        [
            state_event(version=1, ts=0, layers=("x",), received_ms=W0 + 1),
            state_event(version=2, ts=5, layers=("x",)),
        ]
    )
    b = coalesce(
        [state_event(version=2, ts=5, event_id="other", layers=("y", "z"), received_ms=W0 + 99)]
    )
    assert a.hash == b.hash
    assert a.hash == update_hash(TMS, Z, X, Y, (("", ok(2, 5)),))
    assert (
        a.hash
        == coalesce(
            [
                state_event(version=1, ts=0, layers=("x",), received_ms=W0 + 1),
                state_event(version=2, ts=5),
            ]
        ).hash
    )


def test_hash_changes_with_any_version_time_object_or_tile() -> None:
    base = coalesce(
        [state_event(version=2, ts=5, obj="a"), state_event(version=1, ts=0, obj="b")]
    ).hash
    variants = [
        coalesce(
            [state_event(version=3, ts=5, obj="a"), state_event(version=1, ts=0, obj="b")]
        ),  # newer version
        coalesce(
            [state_event(version=2, ts=6, obj="a"), state_event(version=1, ts=0, obj="b")]
        ),  # later time
        coalesce(
            [state_event(version=2, ts=5, obj="a"), state_event(version=1, ts=0, obj="c")]
        ),  # another object
        coalesce([state_event(version=2, ts=5, obj="a")]),  # fewer objects
        coalesce(
            [
                state_event(version=2, ts=5, obj="a", tile=EAST),
                state_event(version=1, ts=0, obj="b", tile=EAST),
            ]
        ),  # other tile
    ]
    hashes = [v.hash for v in variants]
    assert base not in hashes
    assert len(set(hashes)) == len(hashes)
    assert update_hash("WorldCRS84Quad", Z, X, Y, (("", ok(1)),)) != update_hash(
        TMS, Z, X, Y, (("", ok(1)),)
    )


def test_update_hash_ignores_order_of_objects() -> None:
    objs = (("a", ok(1)), ("b", ok(2)), ("c", ok("1.5", 3)))
    assert update_hash(TMS, Z, X, Y, objs) == update_hash(TMS, Z, X, Y, objs[::-1])


@st.composite
def grouped_histories(draw: st.DrawFn) -> tuple[list[TileEvent], list[TileEvent]]:
    """One release of several objects' increasing versions, and a regrouping of it.

    Returns ``(full, other)``: ``full`` interleaves all events (each object's in
    increasing order); ``other`` keeps a different interleaving of a subset that
    still ends every object with its final event.
    """
    n_obj = draw(st.integers(1, 4))
    per_obj: dict[str, list[TileEvent]] = {}
    for i in range(n_obj):
        obj = f"feature/{i}"
        steps = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), min_size=1))
        v, t, evs = 0, 0, []
        for dv, dt in steps:
            v, t = v + dv, t + dt + (1 if dv == 0 else 0)  # strictly newer each step
            evs.append(state_event(version=v, ts=t, obj=obj, layers=("roads",)))
        per_obj[obj] = evs

    def interleave(lists: dict[str, list[TileEvent]]) -> list[TileEvent]:
        queues = {k: list(v) for k, v in lists.items()}
        labels = [k for k, v in queues.items() for _ in v]
        order = draw(st.permutations(labels))
        return [queues[k].pop(0) for k in order]

    full = interleave(per_obj)
    subset = {
        k: [e for e in evs[:-1] if draw(st.booleans())] + [evs[-1]] for k, evs in per_obj.items()
    }
    return full, interleave(subset)


@settings(max_examples=150)
@given(grouped_histories())
def test_hash_independent_of_grouping(hist: tuple[list[TileEvent], list[TileEvent]]) -> None:
    full, other = hist
    a, b = coalesce(full), coalesce(other)
    assert a.objects == b.objects
    assert a.hash == b.hash
    finals = {e.object_id: order_key(e.vkey, e.ts_ms) for e in full}
    assert dict(a.objects) == finals


@settings(max_examples=100)
@given(grouped_histories())
def test_gate_then_coalesce_replay_gives_same_hash(
    hist: tuple[list[TileEvent], list[TileEvent]],
) -> None:
    """A replay of an already applied release applies nothing new: nothing to re-hash."""
    full, _ = hist
    g = gate()
    applied = [e for e in full if g.offer(e) is APPLY]
    assert applied == full  # each object's versions only go forward
    assert all(g.offer(e) is not APPLY for e in full)
    # A fresh gate (state lost) re-applies them and produces the same hash.
    g2 = gate()
    again = [e for e in full if g2.offer(e) is APPLY]
    assert coalesce(again).hash == coalesce(applied).hash


def test_update_hash_is_unambiguous_for_odd_object_ids() -> None:
    k1, k2 = ok(1), ok(2)
    two = (("a", k1), ("b", k2))
    one = ((f"a={k1};b", k2),)
    assert update_hash(TMS, Z, X, Y, two) != update_hash(TMS, Z, X, Y, one)


# == from the wire through the gate to one update ====================================


def test_wire_records_through_gate_and_coalesce() -> None:
    cfg = ValidationConfig()

    def raw(i: int, **fields: Any) -> RawRecord:
        doc = {
            "event_id": f"evt-{i}",
            "kind": "tile",
            "source": "editor",
            "z": Z,
            "x": X,
            "y": Y,
            **fields,
        }
        return RawRecord(json.dumps(doc).encode(), {"offset": i}, received_ms=W0)

    records = [
        raw(1, version="1.9.0", ts=T0),
        raw(2, version="1.10.0", ts=T0 + 1, layers=["roads"]),
        raw(2, version="1.10.0", ts=T0 + 1, layers=["roads"]),  # redelivered
        raw(3, version="1.9.5", ts=T0 + 2),  # older version, late
        raw(4, version="1.10", ts=T0 + 1, layers=["water"]),  # same as 2
    ]
    events = [validate_record(r, cfg) for r in records]
    assert all(isinstance(e, TileEvent) for e in events)
    g = gate()
    verdicts = [g.offer(e) for e in events]  # type: ignore[arg-type]
    assert verdicts == [APPLY, APPLY, DUPLICATE, STALE, DUPLICATE]
    u = coalesce([e for e, v in zip(events, verdicts, strict=True) if v is APPLY])  # type: ignore[misc]
    assert u.key == KEY == "14:12021023322212"
    assert u.version == "1.10.0"
    assert u.objects == (("", order_key((1, 10), T0 + 1)),)
    assert u.events == 2
    assert u.layers is None  # event 1 was for all layers
    assert u.oldest_ts_ms == T0
