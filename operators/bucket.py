"""Stage 4, key by tile bucket: many tiles' state under one Bytewax key.

The per-tile cost without the per-key cost (stages: ``docs/ARCHITECTURE.md``).

Keying Bytewax by tile costs about 15 µs for every new key (a logic object, a
map entry, a timer and a snapshot each, in Rust and Python), more than all of
a tile's own work. So tiles are grouped into a fixed number of buckets by a
stable hash of their key, and a :class:`TileBucket` keeps the tiles of one
bucket:

- A tile with events pending is *live*: a :class:`TileState` object, with an
  entry in the bucket's wake-up heap for its next release.
- Every other tile is *idle* and kept as its snapshot, an immutable tuple:
  smaller than the live objects, and a bucket's snapshot is then one dict
  copy plus the few live tiles, however many tiles the bucket tracks.
- Idle tiles past ``state_ttl`` are dropped by a sweep every ``ttl / 8`` (at
  most every 30 s), not by a timer per tile.

The hash must not change between runs (recovery finds a tile's state in its
bucket), so it is CRC-32 of the tile key, never Python's salted ``hash``, and
:data:`BUCKETS` is a constant.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable
from typing import NamedTuple

from operators.tile_state import OrderConfig, Release, TileState, TileStateSnapshot
from tilepipe.records import TileEvent, TileUpdate

BUCKETS = 512
"""Fixed: changing it moves tiles to other buckets, so a recovery store would not find them."""
BUCKET_KEYS = tuple(f"b{i:03x}" for i in range(BUCKETS))

BucketSnapshot = dict[str, TileStateSnapshot]


def bucket_of(tile_key: str) -> str:
    """The Bytewax key of the bucket that holds ``tile_key``."""
    return BUCKET_KEYS[zlib.crc32(tile_key.encode()) % BUCKETS]


class Outcome(NamedTuple):
    """What one call on a bucket produced, summed over its tiles (see :class:`Release`)."""

    updates: list[TileUpdate]
    duplicates: int
    stale: int
    late: int
    added: int  # tiles this bucket started tracking
    evicted: int  # tiles it stopped tracking


class TileBucket:
    __slots__ = ("_cfg", "_heap", "_idle", "_live", "_next_sweep_ms", "_sweep_every_ms")

    def __init__(self, cfg: OrderConfig, snapshot: BucketSnapshot | None, now_ms: float) -> None:
        self._cfg = cfg
        self._live: dict[str, TileState] = {}
        self._idle: BucketSnapshot = {}
        self._heap: list[tuple[float, str]] = []  # (wake-up, tile) for live tiles only
        self._sweep_every_ms = float(min(max(cfg.state_ttl_ms / 8, 1000), 30_000))
        self._next_sweep_ms = now_ms + self._sweep_every_ms
        for key, snap in (snapshot or {}).items():
            if snap.pending:
                state = TileState(cfg, snap)
                self._live[key] = state
                heapq.heappush(self._heap, (state.next_wakeup_ms(), key))
            else:
                self._idle[key] = snap

    def __len__(self) -> int:
        return len(self._live) + len(self._idle)

    # -- the verbs the operator calls -------------------------------------------------

    def on_events(self, events: Iterable[TileEvent], now_ms: float) -> Outcome:
        by_tile: dict[str, list[TileEvent]] = {}
        for ev in events:
            group = by_tile.get(ev.key)
            if group is None:
                by_tile[ev.key] = [ev]
            else:
                group.append(ev)
        out = _Sum()
        for key, group in by_tile.items():
            state = self._live.get(key)
            if state is None:
                snap = self._idle.pop(key, None)
                if snap is None:
                    out.added += 1
                state = TileState(self._cfg, snap)
                out.add(state.on_events(group, now_ms))
                if state.pending_count:
                    self._live[key] = state
                    heapq.heappush(self._heap, (state.next_wakeup_ms(), key))
                else:  # applied at once (late, newer): straight back to idle
                    self._idle[key] = state.snapshot()
            else:  # already live, so already in the heap
                out.add(state.on_events(group, now_ms))
                if not state.pending_count:
                    self._to_idle(key, state)
        return out.done()

    def on_timer(self, now_ms: float) -> Outcome:
        out = _Sum()
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            _, key = heapq.heappop(heap)
            state = self._live.get(key)
            if state is None:  # released by an event since, and idle now
                continue
            out.add(state.on_timer(now_ms))
            if state.pending_count:
                heapq.heappush(heap, (max(state.next_wakeup_ms(), now_ms + 1), key))
            else:
                self._to_idle(key, state)
        if now_ms >= self._next_sweep_ms:
            out.evicted += self._sweep(now_ms)
            self._next_sweep_ms = now_ms + self._sweep_every_ms
        return out.done()

    def flush(self, now_ms: float) -> Outcome:
        """Release everything held (end of input)."""
        out = _Sum()
        for key, state in list(self._live.items()):
            out.add(state.flush(now_ms))
            self._to_idle(key, state)
        self._heap.clear()
        return out.done()

    def next_wakeup_ms(self) -> float:
        """The next release due in this bucket, or the next eviction sweep."""
        if self._heap:
            return min(self._heap[0][0], self._next_sweep_ms)
        return self._next_sweep_ms

    def snapshot(self) -> BucketSnapshot:
        snap = dict(self._idle)
        for key, state in self._live.items():
            snap[key] = state.snapshot()
        return snap

    # -- internals --------------------------------------------------------------------

    def _to_idle(self, key: str, state: TileState) -> None:
        del self._live[key]
        self._idle[key] = state.snapshot()

    def _sweep(self, now_ms: float) -> int:
        oldest = now_ms - self._cfg.state_ttl_ms
        stale = [k for k, s in self._idle.items() if s.last_active_ms <= oldest]
        for key in stale:
            del self._idle[key]
        return len(stale)


class _Sum:
    """Adds up the :class:`Release` of each tile a call touched."""

    __slots__ = ("added", "duplicates", "evicted", "late", "stale", "updates")

    def __init__(self) -> None:
        self.updates: list[TileUpdate] = []
        self.duplicates = self.stale = self.late = self.added = self.evicted = 0

    def add(self, release: Release) -> None:
        if release.updates:
            self.updates.extend(release.updates)
        self.duplicates += release.duplicates
        self.stale += release.stale
        self.late += release.late

    def done(self) -> Outcome:
        return Outcome(
            self.updates, self.duplicates, self.stale, self.late, self.added, self.evicted
        )
