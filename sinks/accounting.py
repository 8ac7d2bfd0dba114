"""What a sink reports once a batch is safely out: outcomes and latencies.

Outcomes are counted where they become final. An update counts its events
as ``broadcast`` only after the publish succeeded; an update the store
refused (it already held that version or a newer one, e.g. after a replay)
counts them as ``duplicate`` or ``stale``. An update the sink dead-lettered
(``DEAD_LETTERED``, see ``sinks/guard.py``) is counted by the DLQ that wrote
its letter, as ``dead_letter``, and is skipped here.
"""

from __future__ import annotations

from collections.abc import Iterable

from tilepipe import metrics
from tilepipe.records import TileUpdate
from tilepipe.timeutil import now_ms

PUBLISHED, DUPLICATE, STALE, DEAD_LETTERED = 1, 0, -1, 2


def record_results(updates: Iterable[TileUpdate], results: Iterable[int]) -> None:
    now = now_ms()
    broadcast = duplicate = stale = published = suppressed = 0
    newest_ts = 0
    e2e: list[float] = []
    processing: list[float] = []
    for update, result in zip(updates, results, strict=True):
        if result == PUBLISHED:
            published += 1
            broadcast += update.records
            e2e.append(max(0.0, now - update.ts_ms) / 1000.0)
            processing.append(max(0.0, now - update.oldest_received_ms) / 1000.0)
            newest_ts = max(newest_ts, update.ts_ms)
        elif result == DEAD_LETTERED:
            continue
        elif result == DUPLICATE:
            suppressed += 1
            duplicate += update.records
        else:
            suppressed += 1
            stale += update.records
    if published:
        metrics.E2E_LATENCY.observe_many(e2e)
        metrics.PROCESSING_LATENCY.observe_many(processing)
        metrics.EVENTS.labels("broadcast").inc(broadcast)
        metrics.TILE_UPDATES.labels("published").inc(published)
        metrics.WATERMARK_LAG.set(max(0.0, now - newest_ts) / 1000.0)
    if suppressed:
        metrics.EVENTS.labels("duplicate").inc(duplicate)
        metrics.EVENTS.labels("stale").inc(stale)
        metrics.TILE_UPDATES.labels("suppressed").inc(suppressed)
