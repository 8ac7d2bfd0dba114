"""Prometheus metrics, named the Prometheus way (``tilepipe_`` prefix, base units,
``_total`` counters, ``_seconds`` histograms); the README's "Metrics" lists them.

No label carries a tile or an H3 cell: label values come from small closed
sets (outcomes, reason codes, topics and partitions). :class:`Accounting`
reads the counters back for the end-of-input summary line.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily


def service_registry() -> CollectorRegistry:
    """A registry of a service's own (the ingress, the gateway, the tile server), with the
    process collectors, so its ``/metrics`` shows what it does and not the dataflow's
    metrics at zero."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


# 5 ms .. 60 s, roughly x2 per bucket: resolves sub-second sync and outages alike.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.175, 0.25, 0.35, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip

OUTCOMES = ("broadcast", "duplicate", "stale", "dead_letter")

EVENTS_IN = Counter("tilepipe_events_in_total", "Input records read by the sources.")
EVENTS = Counter(
    "tilepipe_events_total",
    "Input records by final outcome: broadcast (alone or coalesced), duplicate, stale,"
    " dead_letter. Every record read ends in exactly one.",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "tilepipe_dead_letters_total", "Records sent to the dead-letter output, by reason.", ["reason"]
)
DEAD_LETTERS_DROPPED = Counter(
    "tilepipe_dead_letters_dropped_total",
    "Dead letters the DLQ broker refused even in their minimal form (logged as errors).",
)
LATE_EVENTS = Counter(
    "tilepipe_late_events_total", "Events that arrived behind their tile's watermark."
)
TILE_UPDATES = Counter(
    "tilepipe_tile_updates_total",
    "Render triggers (coalesced tile updates) by what the sink did with them.",
    ["result"],  # published | suppressed (store already had this or a newer version)
)
BROADCAST_ERRORS = Counter(
    "tilepipe_broadcast_errors_total", "Failed attempts to write a batch to the sink.", ["sink"]
)
BROADCAST_RETRIES = Counter(
    "tilepipe_broadcast_retries_total", "Batches retried after a sink error.", ["sink"]
)


class BatchHistogram:
    """A histogram fed a batch at a time.

    prometheus_client's ``Histogram.observe`` takes a lock and walks the
    buckets for every value, which cost more than the rest of the sink per
    update. This one counts a whole batch with ``bisect`` under one lock and
    is exported by a collector in the standard histogram format.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        REGISTRY.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts = self.bounds, self._counts
        with self._lock:
            for v in values:
                counts[bisect.bisect_left(bounds, v)] += 1
                self._sum += v

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def count(self) -> int:
        return sum(self._counts)

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, c in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            running += c
            cumulative.append((bound, running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, total)
        return [family]

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]


E2E_LATENCY = BatchHistogram(
    "tilepipe_end_to_end_latency_seconds",
    "Event time of the newest event in an update to its publish.",
    LATENCY_BUCKETS,
)
PROCESSING_LATENCY = BatchHistogram(
    "tilepipe_processing_latency_seconds",
    "Ingest (source read) of the oldest event in an update to its publish.",
    LATENCY_BUCKETS,
)


class _TileCount:
    """Tiles with state here; a plain int on the hot path, read at scrape time."""

    value = 0


TILE_COUNT = _TileCount()


class PlainCounter:
    """A counter the single worker thread bumps as a plain int; exported at scrape time.

    For increments on the per-tile path, where ``Counter.inc`` (a lock per
    call) would cost more than the work it counts.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        REGISTRY.register(self)

    def collect(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, value=self.value)]

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation)]


RENDER_TRIGGERS = PlainCounter(
    "tilepipe_render_triggers",
    "Render triggers: coalesced tile updates the apply step emitted (one per tile per"
    " release), before the sink decides whether to publish them.",
)
TILES_TRACKED = Gauge("tilepipe_tiles_tracked", "Tiles with state in this process.")
TILES_TRACKED.set_function(lambda: TILE_COUNT.value)
WATERMARK_LAG = Gauge(
    "tilepipe_watermark_lag_seconds",
    "Wall clock minus the event time of the newest update published (how far behind"
    " real time the output is).",
)
OFFSET_OUT_OF_RANGE = Counter(
    "tilepipe_kafka_offset_out_of_range_total",
    "Times a Kafka partition's position was outside what the broker retains (e.g. deleted by"
    " retention while the job was down); the source resumed at the earliest retained offset"
    " and logged how many records were lost.",
    ["topic", "partition"],
)
CONSUMER_LAG = Gauge(
    "tilepipe_kafka_consumer_lag",
    "Log-end offset minus this job's position, per topic and partition (messages).",
    ["topic", "partition"],
)
FANOUT_TILES = Histogram(
    "tilepipe_fanout_tiles",
    "Tiles one feature or telemetry event expanded to.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536),
)
COVERS = Counter(
    "tilepipe_covers_total",
    "Feature covers by method: exact, bbox (exact too slow), zoom_capped (over the tile budget).",
    ["method"],
)
SINK_UP = Gauge("tilepipe_sink_up", "1 when the sink's last write succeeded, else 0.", ["sink"])


# Known label values start at 0, so rates and dashboards see them before the first event.
for _outcome in OUTCOMES:
    EVENTS.labels(_outcome)
for _result in ("published", "suppressed"):
    TILE_UPDATES.labels(_result)
for _method in ("exact", "bbox", "zoom_capped"):
    COVERS.labels(_method)
for _sink in ("redis", "dlq"):  # the sinks that retry (tilepipe/retry.py callers)
    BROADCAST_ERRORS.labels(_sink)
    BROADCAST_RETRIES.labels(_sink)


class Accounting:
    """The outcome counters as plain numbers, for summaries and tests."""

    @staticmethod
    def snapshot() -> dict[str, int]:
        counts = {o: int(EVENTS.labels(o)._value.get()) for o in OUTCOMES}
        counts["in"] = int(EVENTS_IN._value.get())
        return counts

    @staticmethod
    def summary_line(counts: dict[str, int]) -> str:
        """One line that accounts for every record, and how fast the flow ran.

        ``run_ms`` is the dataflow's own run time (connections included, imports
        and pre-flight checks not); several processes ran side by side, so the
        cluster's is the longest of theirs. ``peak_rss_kb`` adds up across them.
        """
        accounted = sum(counts[o] for o in OUTCOMES)
        pending = counts["in"] - accounted
        line = (
            f"tilepipe: {counts['in']} records in: {counts['broadcast']} broadcast,"
            f" {counts['duplicate']} duplicate, {counts['stale']} stale,"
            f" {counts['dead_letter']} dead-lettered"
            + ("" if pending == 0 else f", {pending} unaccounted")
        )
        run_ms = counts.get("run_ms")
        if run_ms:
            line += f"; ran {run_ms / 1000:.2f} s, {counts['in'] * 1000 / run_ms:.0f} records/s"
        if counts.get("peak_rss_kb"):
            line += f", peak RSS {counts['peak_rss_kb'] / 1024:.0f} MiB"
        return line
