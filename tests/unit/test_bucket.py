"""Many tiles under one key (operators/bucket.py), driven with an explicit clock.

The per-tile rules are tested in test_tile_state.py; these tests check that a
bucket gives every tile exactly what a state of its own would: releases on
time, idle tiles kept compactly and evicted after the TTL, and a snapshot that
restores the same behaviour.
"""

from __future__ import annotations

import pickle
import random

from operators.bucket import BUCKET_KEYS, TileBucket, bucket_of
from operators.tile_state import OrderConfig, TileState
from tests.support.events import W0, state_event
from tilepipe.tiles import tile_key

CFG = OrderConfig(allowed_lateness_ms=1000, max_delay_ms=250, state_ttl_ms=60_000)


def at(x: int) -> tuple[int, int, int]:
    """Tile ``x`` of the row these tests use."""
    return (14, x, 5373)


def run_until_quiet(bucket: TileBucket, now: float, until: float) -> list:
    """Fire the bucket's timer whenever it asks, as Bytewax would, up to ``until``."""
    out = []
    while (due := bucket.next_wakeup_ms()) <= until:
        now = max(now, due)
        out.extend(bucket.on_timer(now).updates)
    return out


def test_the_bucket_of_a_tile_is_stable_and_spread() -> None:
    keys = [tile_key(14, x, y) for x in range(100) for y in range(100)]
    assert bucket_of(keys[0]) == bucket_of(str(keys[0]))
    # CRC-32, not the salted hash(): the same in every process, so recovery finds it.
    assert bucket_of(tile_key(14, 8802, 5373)) == "b0bd"
    used = {bucket_of(k) for k in keys}
    assert len(used) == len(BUCKET_KEYS)


def test_each_tile_is_released_on_its_own_schedule() -> None:
    b = TileBucket(CFG, None, W0)
    out = b.on_events(
        [state_event(tile=at(1), version=1, ts=0), state_event(tile=at(2), version=1, ts=0)], W0
    )
    assert out.updates == [] and out.added == 2
    out = b.on_events(
        [state_event(tile=at(3), version=1, ts=0), state_event(tile=at(1), version=2, ts=5)],
        W0 + 100,
    )
    assert out.added == 1
    # Tiles 1 and 2 have waited max_delay at W0+250; tile 3 only at W0+350.
    first = b.on_timer(W0 + 250).updates
    assert sorted((u.x, u.version) for u in first) == [(1, 2), (2, 1)]
    assert b.next_wakeup_ms() == W0 + 350
    [third] = b.on_timer(W0 + 350).updates
    assert (third.x, third.version) == (3, 1)
    assert len(b) == 3  # idle now, still tracked


def test_a_bucket_matches_separate_states_on_a_random_stream() -> None:
    rng = random.Random(7)
    bucket = TileBucket(CFG, None, W0)
    alone = {x: TileState(CFG) for x in range(20)}
    got, want = [], []
    now = W0
    for step in range(300):
        now += rng.choice((0, 10, 50, 300))
        events = [state_event(tile=at(x), version=v, ts=v * 7, event_id=f"e{step}-{i}")
                  for i, (x, v) in enumerate((rng.randrange(20), rng.randrange(1, 30))
                                             for _ in range(rng.randrange(1, 6)))]  # fmt: skip
        got += run_until_quiet(bucket, now - 1, now)
        for st in alone.values():
            while st.pending_count and st.next_wakeup_ms() <= now:
                want += st.on_timer(max(st.next_wakeup_ms(), now - 1)).updates
        got += bucket.on_events(events, now).updates
        for x in {e.x for e in events}:
            want += alone[x].on_events([e for e in events if e.x == x], now).updates

    def key(u):  # type: ignore[no-untyped-def]
        return (u.x, u.version, u.events)

    assert sorted(map(key, got)) == sorted(map(key, want))
    assert got  # the stream did broadcast


def test_idle_tiles_are_evicted_by_the_sweep_after_the_ttl() -> None:
    b = TileBucket(CFG, None, W0)
    b.on_events([state_event(tile=at(1), version=1, ts=0)], W0)
    b.on_timer(W0 + 250)
    b.on_events([state_event(tile=at(2), version=1, ts=0)], W0 + 40_000)
    b.on_timer(W0 + 40_250)
    assert len(b) == 2
    evicted_at = None
    while evicted_at is None:
        now = b.next_wakeup_ms()
        assert now < W0 + 100_000, "never evicted"
        if b.on_timer(now).evicted:
            evicted_at = now
    # Tile 1 went after its TTL, at most one sweep interval (ttl/8) late; tile 2 stays.
    assert W0 + 60_000 <= evicted_at <= W0 + 60_000 + CFG.state_ttl_ms / 8
    assert len(b) == 1


def test_a_snapshot_restores_pending_and_applied_versions() -> None:
    b = TileBucket(CFG, None, W0)
    b.on_events([state_event(tile=at(1), version=5, ts=0)], W0)
    b.on_timer(W0 + 250)  # tile 1 applied v5
    b.on_events(
        [state_event(tile=at(2), version=1, ts=0), state_event(tile=at(2), version=2, ts=10)],
        W0 + 300,
    )  # tile 2 pending
    snap = pickle.loads(pickle.dumps(b.snapshot()))  # what recovery stores
    r = TileBucket(CFG, snap, W0 + 310)
    assert len(r) == 2
    # The pending tile is released on time after the restart...
    [update] = run_until_quiet(r, W0 + 310, W0 + 600)
    assert (update.x, update.version, update.events) == (2, 2, 2)
    # ...and the applied version still gates: an older one is stale, a replay a duplicate.
    out = r.on_events(
        [
            state_event(tile=at(1), version=4, ts=0, event_id="older"),
            state_event(tile=at(1), version=5, ts=0),
        ],
        W0 + 5_000,
    )
    assert out.updates == [] and out.stale + out.duplicates == 2


def test_flush_releases_everything_pending() -> None:
    b = TileBucket(CFG, None, W0)
    b.on_events([state_event(tile=at(x), version=1, ts=0) for x in range(5)], W0)
    assert sorted(u.x for u in b.flush(W0 + 1).updates) == [0, 1, 2, 3, 4]
    assert b.flush(W0 + 2).updates == []
