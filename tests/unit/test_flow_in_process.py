"""The real tile-update flow, in process, through ``bytewax.testing``.

``build_flow`` is wired exactly as ``tilepipe run`` wires it (validate, enrich,
order, apply once, coalesce); only its ends are Bytewax's testing source and
sinks, so ordering, dedup, coalescing and dead letters are checked in well
under a second without a broker, Redis or a subprocess. The same rules through
the real parts are in tests/integration/test_dataflow.py.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.settings import Settings
from dataflows.tile_updates import build_flow
from tests.support.events import dumps, tile_event
from tilepipe.records import DeadLetter, RawRecord, TileUpdate

NOW = int(time.time() * 1000)  # wall clock: the ordering stage holds events by it
HOLD = timedelta(milliseconds=50)
# Long enough after the first release for its timer to have fired on a shared,
# busy machine: the test's outcome does not depend on how long it really takes.
AFTER_RELEASE = TestingSource.PAUSE(timedelta(seconds=1))


def raw(value: bytes, offset: int) -> RawRecord:
    return RawRecord(value, {"topic": "in", "partition": 0, "offset": offset}, NOW)


def run(items: list[Any]) -> tuple[list[TileUpdate], list[DeadLetter]]:
    """Run the flow on ``items`` (records, or ``TestingSource`` signals) to end of input."""
    updates: list[TileUpdate] = []
    letters: list[DeadLetter] = []
    settings = Settings(allowed_lateness=timedelta(seconds=1), max_delay=HOLD, dlq="file:/dev/null")
    flow = build_flow(
        settings, source=TestingSource(items), sink=TestingSink(updates), dlq=TestingSink(letters)
    )
    run_main(flow)
    return updates, letters


def records(*docs: dict[str, Any] | bytes) -> list[RawRecord]:
    return [raw(d if isinstance(d, bytes) else dumps(d), i) for i, d in enumerate(docs)]


def test_shuffled_versions_of_a_tile_are_one_update_of_the_newest() -> None:
    shuffled = [
        tile_event(event_id=f"t1-v{v}", version=v, x=1, ts=NOW + v * 10) for v in (3, 1, 5, 2, 4)
    ]
    updates, letters = run(records(*shuffled))
    assert letters == []
    assert [(u.x, u.version, u.events, u.ts_ms) for u in updates] == [(1, 5, 5, NOW + 50)]


def test_a_redelivered_event_id_is_applied_once_and_each_tile_has_its_own_update() -> None:
    first = tile_event(event_id="a", version=1, x=1, ts=NOW)
    stream = records(first, tile_event(event_id="b", version=1, x=2, ts=NOW), first)
    updates, _ = run(stream)
    assert sorted((u.x, u.version, u.events) for u in updates) == [(1, 1, 1), (2, 1, 1)]
    assert sum(u.records for u in updates) == 2  # the redelivery accounts for nothing


def test_an_old_version_replayed_after_the_release_is_stale_and_a_newer_one_goes_out() -> None:
    before = records(
        tile_event(event_id="v5", version=5, x=1, ts=NOW + 500),
        tile_event(event_id="w1", version=1, x=2, ts=NOW),
    )
    after = records(
        tile_event(event_id="v3-replay", version=3, x=1, ts=NOW + 300),  # older: stale
        tile_event(event_id="v6", version=6, x=1, ts=NOW),  # newer version, older time
    )
    updates, _ = run([*before, AFTER_RELEASE, *after])
    assert [(u.x, u.version) for u in updates[:2]] in ([(1, 5), (2, 1)], [(2, 1), (1, 5)])
    assert [(u.x, u.version, u.events) for u in updates[2:]] == [(1, 6, 1)]


def test_bad_records_are_dead_letters_with_their_reason_and_origin_and_do_not_stop_the_flow() -> (
    None
):
    stream = records(
        b"{nope",
        b"[1, 2]",
        tile_event(event_id="range", version=1, z=2, x=1, y=9, ts=NOW),
        tile_event(event_id="ok", version=1, x=1, ts=NOW),
        tile_event(event_id="when", version=1, x=1, ts="soon"),
    )
    updates, letters = run(stream)
    assert [(u.x, u.version) for u in updates] == [(1, 1)]
    assert [(d.reason, d.origin["offset"]) for d in letters] == [
        ("invalid_json", 0),
        ("not_an_object", 1),
        ("tile_out_of_range", 2),
        ("invalid_timestamp", 4),
    ]
    assert letters[0].raw == b"{nope"
