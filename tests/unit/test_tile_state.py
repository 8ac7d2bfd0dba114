"""Per-tile ordering, once-only application and coalescing (stages 5-7),
driven directly with an explicit clock."""

from __future__ import annotations

import random

from operators.tile_state import OrderConfig, TileState
from tests.support.events import T0, W0, state_event
from tilepipe.versions import version_key

CFG = OrderConfig(allowed_lateness_ms=1000, max_delay_ms=250, state_ttl_ms=60_000)


def drain(state: TileState, now: float) -> list:
    """Fire timers until nothing is pending, as the runtime would."""
    out = []
    for _ in range(100):
        if not state.pending_count:
            break
        now = max(now, state.next_wakeup_ms())
        out.extend(state.on_timer(now).updates)
    return out


def test_a_single_event_is_held_then_released_within_max_delay():
    s = TileState(CFG)
    assert s.on_events([state_event(version=1, ts=0)], W0).updates == []
    assert s.next_wakeup_ms() <= W0 + CFG.max_delay_ms
    assert s.on_timer(W0 + 100).updates == []
    [update] = s.on_timer(W0 + CFG.max_delay_ms).updates
    assert (update.version, update.events) == (1, 1)


def test_shuffled_events_within_lateness_give_one_broadcast_of_the_newest():
    events = [state_event(version=v, ts=v * 10) for v in range(1, 21)]
    random.Random(3).shuffle(events)
    s = TileState(CFG)
    # Arrive over 200 ms of wall time, all inside the lateness window.
    outs = []
    for i, e in enumerate(events):
        outs += s.on_events([e], W0 + i * 10).updates
    outs += drain(s, W0 + 200)
    assert len(outs) == 1
    assert outs[0].version == 20
    assert outs[0].events == 20  # every superseded version folds into the one broadcast
    assert s.pending_count == 0


def test_shuffled_release_counts_every_event():
    events = [state_event(version=v, ts=v * 10) for v in range(1, 21)]
    random.Random(5).shuffle(events)
    s = TileState(CFG)
    r = s.on_events(events, W0)
    rest = s.on_timer(W0 + CFG.max_delay_ms)
    applied = sum(u.events for u in r.updates + rest.updates)
    dropped = r.duplicates + r.stale + rest.duplicates + rest.stale
    assert applied + dropped == 20
    assert [u.version for u in rest.updates] == [20]


def test_duplicate_event_id_never_broadcasts_again():
    s = TileState(CFG)
    s.on_events([state_event(version=1, ts=0, event_id="a")], W0)
    assert [u.version for u in s.on_timer(W0 + 300).updates] == [1]
    again = s.on_events([state_event(version=1, ts=0, event_id="a")], W0 + 400)
    assert again.updates == [] and again.duplicates == 1
    assert drain(s, W0 + 400) == []


def test_duplicate_while_still_pending_is_dropped():
    s = TileState(CFG)
    r = s.on_events(
        [state_event(version=1, ts=0, event_id="a"), state_event(version=1, ts=0, event_id="a")], W0
    )
    assert r.duplicates == 1
    [u] = s.on_timer(W0 + 300).updates
    assert u.events == 1


def test_replayed_old_version_is_stale_and_not_broadcast():
    s = TileState(CFG)
    s.on_events([state_event(version=5, ts=500)], W0)
    assert [u.version for u in s.on_timer(W0 + 300).updates] == [5]
    r = s.on_events([state_event(version=3, ts=300, event_id="replay-3")], W0 + 5000)
    assert r.updates == [] and r.stale == 1 and r.late == 1


def test_late_newer_version_is_applied_at_once():
    s = TileState(CFG)
    s.on_events([state_event(version=1, ts=5000)], W0)
    s.on_timer(W0 + 300)
    # Event time far behind the watermark, but a newer version: applied now.
    r = s.on_events([state_event(version=2, ts=0)], W0 + 10_000)
    assert [u.version for u in r.updates] == [2]
    assert r.late == 1


def test_versions_never_go_backwards_under_random_arrival():
    rng = random.Random(11)
    for _ in range(50):
        events = [state_event(version=v, ts=v * rng.randrange(1, 50)) for v in range(1, 30)]
        events += [
            state_event(version=rng.randrange(1, 30), ts=rng.randrange(0, 2000), event_id=f"x{i}")
            for i in range(10)
        ]
        rng.shuffle(events)
        s = TileState(CFG)
        now = W0
        seen = []
        for e in events:
            now += rng.randrange(0, 400)
            seen += s.on_events([e], now).updates
            if rng.random() < 0.3:
                seen += s.on_timer(now).updates
        seen += s.flush(now).updates
        keys = [(version_key(u.version), u.ts_ms) for u in seen]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert seen[-1].version == max(version_key(e.version) for e in events)[0]


def test_dotted_versions_compare_numerically():
    s = TileState(CFG)
    s.on_events([state_event(version="1.10.0", ts=10), state_event(version="1.9.0", ts=20)], W0)
    [u] = s.on_timer(W0 + 300).updates
    assert u.version == "1.10.0"


def test_equal_versions_tie_break_on_event_time():
    s = TileState(CFG)
    s.on_events(
        [
            state_event(version=4, ts=30, event_id="late-time"),
            state_event(version=4, ts=10, event_id="early-time"),
        ],
        W0,
    )
    [u] = s.on_timer(W0 + 300).updates
    assert u.ts_ms == T0 + 30


def test_watermark_does_not_declare_a_replayed_backlog_late():
    """After an outage a backlog arrives fast with old event times: the
    watermark follows the newest event seen, not the wall clock."""
    s = TileState(CFG)
    backlog = [state_event(version=v, ts=v * 1000) for v in range(1, 11)]  # 10 s of event time
    r = s.on_events(backlog[:5], W0)
    assert r.late == 0
    r2 = s.on_events(backlog[5:], W0 + 50)
    assert r2.late == 0 and r2.stale == 0


def test_flush_releases_everything_held():
    s = TileState(OrderConfig(allowed_lateness_ms=60_000, max_delay_ms=60_000))
    s.on_events([state_event(version=1, ts=0), state_event(version=2, ts=10)], W0)
    assert s.on_timer(W0 + 1000).updates == []
    [u] = s.flush(W0 + 1000).updates
    assert u.version == 2 and s.pending_count == 0


def test_idle_state_becomes_evictable_after_ttl_and_not_before():
    s = TileState(CFG)
    s.on_events([state_event(version=1, ts=0)], W0)
    s.on_timer(W0 + 300)
    assert s.next_wakeup_ms() == W0 + CFG.state_ttl_ms
    assert not s.evictable(W0 + CFG.state_ttl_ms - 1)
    assert s.evictable(W0 + CFG.state_ttl_ms)


def test_pending_state_is_never_evictable():
    s = TileState(OrderConfig(state_ttl_ms=10, max_delay_ms=10_000, allowed_lateness_ms=10_000))
    s.on_events([state_event(version=1, ts=0)], W0)
    assert not s.evictable(W0 + 1_000)


def test_snapshot_restores_the_same_decisions():
    s = TileState(CFG)
    s.on_events(
        [state_event(version=1, ts=0, event_id="a"), state_event(version=2, ts=10, event_id="b")],
        W0,
    )
    s.on_timer(W0 + 300)
    s.on_events([state_event(version=3, ts=20, event_id="c")], W0 + 400)
    restored = TileState(CFG, s.snapshot())
    assert (
        restored.on_events([state_event(version=2, ts=10, event_id="b")], W0 + 500).duplicates == 1
    )
    assert [u.version for u in restored.on_timer(W0 + 700).updates] == [3]


def test_snapshot_is_immutable():
    s = TileState(CFG)
    s.on_events([state_event(version=1, ts=0)], W0)
    snap = s.snapshot()
    s.on_events([state_event(version=2, ts=10)], W0 + 1)
    s.on_timer(W0 + 400)
    assert len(snap.pending) == 1
    assert (snap.applied, snap.recent_ids) == ((), ())


def test_objects_on_one_tile_do_not_suppress_each_other():
    s = TileState(CFG)
    s.on_events([state_event(version=9, ts=0, obj="road-1")], W0)
    s.on_timer(W0 + 300)
    r = s.on_events([state_event(version=2, ts=10, obj="park-7")], W0 + 400)
    [u] = r.updates + s.on_timer(W0 + 700).updates
    assert u.version == 2
    assert dict(u.objects).keys() == {"park-7"}


def test_a_busy_tile_broadcasts_once_per_max_delay():
    """A chatty sensor: 200 events over one second, each newer than the last."""
    s = TileState(CFG)
    updates = []
    now = W0
    for i in range(200):
        now = W0 + i * 5
        while s.pending_count and s.next_wakeup_ms() <= now:
            updates += s.on_timer(s.next_wakeup_ms()).updates
        updates += s.on_events([state_event(version=i + 1, ts=i * 5)], now).updates
    updates += drain(s, now)
    assert 4 <= len(updates) <= 1000 // CFG.max_delay_ms + 1
    assert sum(u.events for u in updates) == 200
    assert updates[-1].version == 200


def test_a_future_dated_event_does_not_turn_off_ordering():
    """Review L7: an event 5 min ahead made every later event of its tile 'late'."""
    s = TileState(CFG)
    now = W0
    ahead = int(W0 - T0) + 300_000  # event time 5 min after the wall clock
    s.on_events([state_event(version=9, ts=ahead, obj="clock-skewed")], now)
    drain(s, now)
    # It counts as dated now + lateness: past that, the tile's events are ordered again.
    now += 3 * CFG.allowed_lateness_ms
    on_time = int(now - T0)
    late = s.on_events(
        [state_event(version=3, ts=on_time - 200), state_event(version=2, ts=on_time - 400)], now
    )
    assert late.late == 0 and late.updates == []  # held and ordered, not applied at once
    [update] = drain(s, now)
    assert (update.version, update.events) == (3, 2)


def test_a_late_replay_superseded_by_a_held_event_is_stale_itself():
    """Issue 12: a late v13 went out ahead of a held v14, and the held v1..v12 were stale."""
    s = TileState(CFG)
    now = W0
    base = int(W0 - T0)
    # v1..v12 and v14 arrive in time and are held (the tile is hot: nothing released yet).
    held = [state_event(version=v, ts=base + v, event_id=f"h{v}") for v in (*range(1, 13), 14)]
    assert s.on_events(held, now).updates == []
    # A replay of the old v13, dated 10 s before: behind the watermark, so late.
    out = s.on_events(
        [state_event(version=13, ts=base + 14 - 10_000, event_id="replay")], now + 100
    )
    assert (out.late, out.stale, out.updates) == (1, 1, [])
    released = s.on_timer(now + CFG.max_delay_ms)
    [update] = released.updates
    assert (update.version, update.events, released.stale) == (14, 13, 0)
    # A late event newer than everything held of its object still goes out at once.
    s.on_events([state_event(version=15, ts=base + 20, event_id="fresh")], now + 2_000)
    s.on_timer(now + 2_000 + CFG.max_delay_ms)
    newer = s.on_events(
        [state_event(version=16, ts=base + 19, event_id="late-but-new")], now + 10_000
    )
    assert [u.version for u in newer.updates] == [16]
