"""Stages 4-7 as one keyed Bytewax step around :class:`TileState`.

Events are keyed by tile (``"{z}:{quadkey}"``); each tile's state is built on
first sight, woken by a timer when its next event is due (or when it may be
evicted), flushed at end of input, and discarded after ``state_ttl`` idle.
Outcome counts for dropped events (duplicate, stale) are recorded here;
applied events are counted by the sink once they are out.
"""

from __future__ import annotations

from datetime import datetime, timezone

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.tile_state import OrderConfig, Release, TileState, TileStateSnapshot
from tilepipe import metrics
from tilepipe.records import TileEvent, TileUpdate
from tilepipe.timeutil import now_ms


def _record(release: Release) -> list[TileUpdate]:
    if release.duplicates:
        metrics.EVENTS.labels("duplicate").inc(release.duplicates)
    if release.stale:
        metrics.EVENTS.labels("stale").inc(release.stale)
    if release.late:
        metrics.LATE_EVENTS.inc(release.late)
    metrics.RENDER_TRIGGERS.value += len(release.updates)
    return release.updates


class _TileLogic(StatefulBatchLogic[TileEvent, TileUpdate, TileStateSnapshot]):
    def __init__(self, cfg: OrderConfig, resume: TileStateSnapshot | None) -> None:
        self._state = TileState(cfg, resume)
        metrics.TILE_COUNT.value += 1

    def on_batch(self, values: list[TileEvent]) -> tuple[list[TileUpdate], bool]:
        return _record(self._state.on_events(values, now_ms())), self.RETAIN

    def on_notify(self) -> tuple[list[TileUpdate], bool]:
        now = now_ms()
        out = _record(self._state.on_timer(now))
        if self._state.evictable(now):
            metrics.TILE_COUNT.value -= 1
            return out, self.DISCARD
        return out, self.RETAIN

    def on_eof(self) -> tuple[list[TileUpdate], bool]:
        return _record(self._state.flush(now_ms())), self.RETAIN

    def notify_at(self) -> datetime:
        return datetime.fromtimestamp(self._state.next_wakeup_ms() / 1000.0, tz=timezone.utc)

    def snapshot(self) -> TileStateSnapshot:
        return self._state.snapshot()


@operator
def order_and_apply(
    step_id: str, up: Stream[TileEvent], *, config: OrderConfig
) -> Stream[TileUpdate]:
    """Key by tile, order by watermark, apply versions once, coalesce.

    ```python
    updates = order_and_apply("apply", tiles, config=OrderConfig(max_delay_ms=250))
    ```

    :arg config: lateness, maximum hold, state TTL and dedup bounds.
    :returns: one :class:`TileUpdate` per tile per release.
    """
    keyed = op.key_on("key", up, lambda ev: ev.key)
    applied = op.stateful_batch("tile_state", keyed, lambda resume: _TileLogic(config, resume))
    return op.map("unkey", applied, lambda kv: kv[1])
