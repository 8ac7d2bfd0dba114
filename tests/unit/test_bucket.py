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
from tilepipe.records import TileEvent
from tilepipe.tiles import tile_key
from tilepipe.versions import version_key

T0 = 1_800_000_000_000
W0 = T0 + 3_600_000.0  # wall clock in the same epoch as event time
CFG = OrderConfig(allowed_lateness_ms=1000, max_delay_ms=250, state_ttl_ms=60_000)


def ev(x: int, version: int, ts: int, event_id: str | None = None) -> TileEvent:
    return TileEvent(
        key=tile_key(14, x, 5373),
        tms="WebMercatorQuad",
        z=14,
        x=x,
        y=5373,
        version=version,
        vkey=version_key(version),
        ts_ms=T0 + ts,
        event_id=event_id or f"e-{x}-{version}",
        source="test",
        layers=None,
        received_ms=W0,
    )


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
    out = b.on_events([ev(1, 1, 0), ev(2, 1, 0)], W0)
    assert out.updates == [] and out.added == 2
    out = b.on_events([ev(3, 1, 0), ev(1, 2, 5)], W0 + 100)
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
        events = [ev(x, v, v * 7, f"e{step}-{i}")
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
    b.on_events([ev(1, 1, 0)], W0)
    b.on_timer(W0 + 250)
    b.on_events([ev(2, 1, 0)], W0 + 40_000)
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
    b.on_events([ev(1, 5, 0)], W0)
    b.on_timer(W0 + 250)  # tile 1 applied v5
    b.on_events([ev(2, 1, 0), ev(2, 2, 10)], W0 + 300)  # tile 2 pending
    snap = pickle.loads(pickle.dumps(b.snapshot()))  # what recovery stores
    r = TileBucket(CFG, snap, W0 + 310)
    assert len(r) == 2
    # The pending tile is released on time after the restart...
    [update] = run_until_quiet(r, W0 + 310, W0 + 600)
    assert (update.x, update.version, update.events) == (2, 2, 2)
    # ...and the applied version still gates: an older one is stale, a replay a duplicate.
    out = r.on_events([ev(1, 4, 0, "older"), ev(1, 5, 0)], W0 + 5_000)
    assert out.updates == [] and out.stale + out.duplicates == 2


def test_flush_releases_everything_pending() -> None:
    b = TileBucket(CFG, None, W0)
    b.on_events([ev(x, 1, 0) for x in range(5)], W0)
    assert sorted(u.x for u in b.flush(W0 + 1).updates) == [0, 1, 2, 3, 4]
    assert b.flush(W0 + 2).updates == []
