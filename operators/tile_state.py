"""Stages 5-7 (``docs/ARCHITECTURE.md``) for one tile: order by watermark, apply once, coalesce.

:class:`TileState` is the whole per-tile state as a plain object (no Bytewax,
no I/O, time passed in), so tests drive it directly. The three stages share
one state per tile on purpose: one keyed step instead of three keeps the
memory per tracked tile and the per-batch overhead down.

Release rule: a tile holds its events until the watermark has passed all of
them, or until the oldest has waited ``max_delay`` of wall time, and then
releases everything it holds at once, applied in (event time, version)
order. So no event waits longer than ``max_delay``, and a busy tile (a burst,
a chatty sensor) broadcasts once per ``max_delay`` however many events it
gets; releasing part of a tile's events would only mean more broadcasts. An event
that arrives after the watermark already passed it is late: applied at once
if newer than what was applied and than what is held of its object, dropped
as stale otherwise. (Judging it against the applied versions alone let a late
replay of v13 go out ahead of a held v14, and the held v1..v12 were then all
counted stale: 12 stale for one replay on a hot tile.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from operators.coalesce import coalesce
from operators.dedup import Verdict, VersionGate
from operators.order import Watermark
from tilepipe.records import TileEvent, TileUpdate


@dataclass(frozen=True)
class OrderConfig:
    allowed_lateness_ms: int = 1000
    max_delay_ms: int = 250
    state_ttl_ms: int = 300_000
    """Idle tiles (nothing pending, no event for this long) are evicted."""
    max_recent_ids: int = 64
    max_objects_per_tile: int = 256


class Release(NamedTuple):
    """What one call produced: at most one update, plus the records it dropped.

    ``duplicates`` and ``stale`` count input records (event weights), ``late``
    counts tile events.
    """

    updates: list[TileUpdate]
    duplicates: int = 0
    stale: int = 0
    late: int = 0  # arrived behind the watermark (applied or stale)


class _Pending(NamedTuple):
    event: TileEvent
    arrived_ms: float


class TileStateSnapshot(NamedTuple):
    newest_ms: int | None
    base_ms: int
    set_at_ms: float
    pending: tuple[_Pending, ...]
    # The VersionGate's two tuples, inline: an idle tile is kept as this
    # snapshot, and a nested pair would cost every tracked tile 56 bytes.
    applied: tuple
    recent_ids: tuple[str, ...]
    last_active_ms: float
    floor_ms: int = 0  # the gate's floor; last, so snapshots written before it still load


class TileState:
    __slots__ = (
        "_cfg", "_gate", "_last_active_ms", "_newest_pending_ms", "_pending", "_pending_ids", "_wm",
    )  # fmt: skip

    def __init__(self, cfg: OrderConfig, snapshot: TileStateSnapshot | None = None) -> None:
        self._cfg = cfg
        if snapshot is None:
            self._wm = Watermark(cfg.allowed_lateness_ms)
            # An idle tile holds the shared empty tuple, not a list of its own.
            self._pending: list[_Pending] | tuple[()] = ()
            # The ids held, so a repeat is found without scanning a busy tile's queue.
            self._pending_ids: set[str] | None = None
            self._newest_pending_ms = 0
            self._gate = VersionGate(cfg.max_recent_ids, cfg.max_objects_per_tile)
            self._last_active_ms = 0.0
        else:
            self._wm = Watermark(
                cfg.allowed_lateness_ms, snapshot.newest_ms, snapshot.base_ms, snapshot.set_at_ms
            )
            self._pending = list(snapshot.pending) if snapshot.pending else ()
            self._pending_ids = {p.event.event_id for p in self._pending} or None
            self._newest_pending_ms = max((p.event.ts_ms for p in self._pending), default=0)
            self._gate = VersionGate.restore(
                cfg.max_recent_ids,
                cfg.max_objects_per_tile,
                (snapshot.applied, snapshot.recent_ids),
                snapshot.floor_ms,
            )
            self._last_active_ms = snapshot.last_active_ms

    # -- the verbs the operator calls -------------------------------------------------

    def on_events(self, events: list[TileEvent], now_ms: float) -> Release:
        self._last_active_ms = now_ms
        applied: list[TileEvent] = []
        duplicates = stale = late = 0
        watermark = self._wm.at(now_ms)
        for ev in events:
            if ev.ts_ms <= watermark:
                late += 1
                if self._pending and (self._is_pending(ev.event_id) or self._held_newer(ev)):
                    verdict = Verdict.DUPLICATE if self._is_pending(ev.event_id) else Verdict.STALE
                else:
                    verdict = self._gate.offer(ev)
                if verdict is Verdict.APPLY:
                    applied.append(ev)
                elif verdict is Verdict.DUPLICATE:
                    duplicates += ev.weight
                else:
                    stale += ev.weight
            elif self._gate.seen(ev.event_id) or self._is_pending(ev.event_id):
                duplicates += ev.weight
            else:
                if self._pending:
                    self._pending.append(_Pending(ev, now_ms))  # type: ignore[union-attr]
                    self._pending_ids.add(ev.event_id)  # type: ignore[union-attr]
                    if ev.ts_ms > self._newest_pending_ms:
                        self._newest_pending_ms = ev.ts_ms
                else:
                    self._pending = [_Pending(ev, now_ms)]
                    self._pending_ids = {ev.event_id}
                    self._newest_pending_ms = ev.ts_ms
                self._wm.observe(ev.ts_ms, now_ms)
        return self._release(now_ms, applied, duplicates, stale, late, flush=False)

    def on_timer(self, now_ms: float) -> Release:
        return self._release(now_ms, [], 0, 0, 0, flush=False)

    def flush(self, now_ms: float) -> Release:
        """Release everything held (end of input)."""
        return self._release(now_ms, [], 0, 0, 0, flush=True)

    def next_wakeup_ms(self) -> float:
        """When to call :meth:`on_timer` next: the next release, or eviction."""
        if not self._pending:
            return self._last_active_ms + self._cfg.state_ttl_ms
        oldest_deadline = self._pending[0].arrived_ms + self._cfg.max_delay_ms
        return min(oldest_deadline, self._wm.passes_at(self._newest_pending_ms))

    def evictable(self, now_ms: float) -> bool:
        return not self._pending and now_ms >= self._last_active_ms + self._cfg.state_ttl_ms

    def snapshot(self) -> TileStateSnapshot:
        wm = self._wm
        applied, recent_ids = self._gate.snapshot()
        return TileStateSnapshot(
            wm.newest_ms,
            wm.base_ms,
            wm.set_at_ms,
            tuple(self._pending),
            applied,
            recent_ids,
            self._last_active_ms,
            self._gate.floor_ms,
        )

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # -- internals --------------------------------------------------------------------

    def _is_pending(self, event_id: str) -> bool:
        return self._pending_ids is not None and event_id in self._pending_ids

    def _held_newer(self, ev: TileEvent) -> bool:
        """Whether a held event of ``ev``'s object supersedes it (a scan, but only for a
        late event on a tile that holds events: rare, and bounded by ``max_delay``)."""
        mine = (ev.vkey, ev.ts_ms)
        obj = ev.object_id
        return any(
            p.event.object_id == obj and (p.event.vkey, p.event.ts_ms) > mine for p in self._pending
        )

    def _release(
        self,
        now_ms: float,
        applied: list[TileEvent],
        duplicates: int,
        stale: int,
        late: int,
        *,
        flush: bool,
    ) -> Release:
        pending = self._pending
        if pending and (
            flush
            or pending[0].arrived_ms <= now_ms - self._cfg.max_delay_ms
            or self._wm.at(now_ms) >= self._newest_pending_ms
        ):
            self._pending = ()
            self._pending_ids = None
            if len(pending) > 1:
                pending.sort(key=lambda p: (p.event.ts_ms, p.event.vkey))
            for p in pending:
                verdict = self._gate.offer(p.event)
                if verdict is Verdict.APPLY:
                    applied.append(p.event)
                elif verdict is Verdict.DUPLICATE:
                    duplicates += p.event.weight
                else:
                    stale += p.event.weight
        updates = [coalesce(applied)] if applied else []
        return Release(updates, duplicates, stale, late)
