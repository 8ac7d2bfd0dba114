"""Stages 4-7 (``docs/ARCHITECTURE.md``) as one keyed Bytewax step around :class:`TileBucket`.

Events are keyed by bucket (a stable hash of the tile key, see
``operators/bucket.py``), and each bucket holds the state of its tiles:
built on first sight, woken by a timer when a tile's next release is due or
the bucket's eviction sweep is, flushed at end of input, and snapshotted as
one dict. Outcome counts for dropped events (duplicate, stale) are recorded
here; applied events are counted by the sink once they are out.
"""

from __future__ import annotations

from datetime import datetime, timezone

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.bucket import BucketSnapshot, Outcome, TileBucket, bucket_of
from operators.tile_state import OrderConfig
from tilepipe import metrics
from tilepipe.records import TileEvent, TileUpdate
from tilepipe.timeutil import now_ms


def _record(out: Outcome) -> list[TileUpdate]:
    if out.duplicates:
        metrics.EVENTS.labels("duplicate").inc(out.duplicates)
    if out.stale:
        metrics.EVENTS.labels("stale").inc(out.stale)
    if out.late:
        metrics.LATE_EVENTS.inc(out.late)
    if out.added or out.evicted:
        metrics.TILE_COUNT.value += out.added - out.evicted
    metrics.RENDER_TRIGGERS.value += len(out.updates)
    return out.updates


class _BucketLogic(StatefulBatchLogic[TileEvent, TileUpdate, BucketSnapshot]):
    def __init__(self, cfg: OrderConfig, resume: BucketSnapshot | None) -> None:
        self._bucket = TileBucket(cfg, resume, now_ms())
        metrics.TILE_COUNT.value += len(self._bucket)

    def on_batch(self, values: list[TileEvent]) -> tuple[list[TileUpdate], bool]:
        return _record(self._bucket.on_events(values, now_ms())), self.RETAIN

    def on_notify(self) -> tuple[list[TileUpdate], bool]:
        out = _record(self._bucket.on_timer(now_ms()))
        return out, (self.RETAIN if len(self._bucket) else self.DISCARD)

    def on_eof(self) -> tuple[list[TileUpdate], bool]:
        return _record(self._bucket.flush(now_ms())), self.RETAIN

    def notify_at(self) -> datetime:
        return datetime.fromtimestamp(self._bucket.next_wakeup_ms() / 1000.0, tz=timezone.utc)

    def snapshot(self) -> BucketSnapshot:
        return self._bucket.snapshot()


@operator
def order_and_apply(
    step_id: str, up: Stream[TileEvent], *, config: OrderConfig
) -> Stream[TileUpdate]:
    """Key by tile bucket, order by watermark, apply versions once, coalesce.

    ```python
    updates = order_and_apply("apply", tiles, config=OrderConfig(max_delay_ms=250))
    ```

    :arg config: lateness, maximum hold, state TTL and dedup bounds.
    :returns: one :class:`TileUpdate` per tile per release.
    """
    keyed = op.key_on("bucket", up, lambda ev: bucket_of(ev.key))
    # A new step id: recovery stores written when the state was keyed by tile are
    # not read back as buckets.
    applied = op.stateful_batch("tile_buckets", keyed, lambda resume: _BucketLogic(config, resume))
    return op.map("unkey", applied, lambda kv: kv[1])
