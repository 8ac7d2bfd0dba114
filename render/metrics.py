"""The render worker's Prometheus metrics (``tilepipe_render_*``), served on its
``--metrics-port`` beside ``/healthz`` and ``/readyz``.

Labels come from small closed sets: job states, zoom levels (0..30), hit or
miss or error, published or suppressed. No label carries a tile or a job id.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

STATES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "DEGRADED", "FAILED", "DEAD")

# Renders take milliseconds (builtin) to minutes (a real renderer on a dense tile).
RENDER_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

JOBS = Counter(
    "tilepipe_render_jobs_total",
    "Render job state transitions this process made, by the state entered (the ledger holds"
    " the durable counts).",
    ["state"],
)
RENDER_LATENCY = Histogram(
    "tilepipe_render_latency_seconds",
    "Render, stage and commit of one tile, by zoom level.",
    ["z"],
    buckets=RENDER_BUCKETS,
)
DEGRADED = Counter(
    "tilepipe_render_degraded_total",
    "Jobs degraded to invalidate-only, by reason: circuit_open, deadline.",
    ["reason"],
)
CACHE_INVALIDATIONS = Counter(
    "tilepipe_render_cache_invalidations_total",
    "Tile cache invalidations after a commit or degrade: hit (the tile was cached), miss, or"
    " error (the cache's Redis failed; logged, the job still succeeds).",
    ["result"],
)
PURGES = Counter(
    "tilepipe_render_purges_total",
    "HTTP PURGE of a tile to the tile cache (TILEPIPE_RENDER_PURGE_URL) after a commit, degrade"
    " or DEAD job: hit (200/204), miss (404) or error (anything else, timeout, refused).",
    ["result"],
)
BROADCASTS = Counter(
    "tilepipe_render_broadcasts_total",
    "tile_updated after a commit: published, or suppressed by the forward-only store.",
    ["result"],
)
QUEUE_DEPTH = Gauge(
    "tilepipe_render_queue_depth",
    "Render jobs not yet done: waiting, in progress, or waiting out a retry back-off.",
)
DEAD_LETTERS = Gauge("tilepipe_render_dead_letters", "Jobs on the render dead-letter list.")
CIRCUIT_OPEN = Gauge(
    "tilepipe_render_circuit_open", "1 while the renderer's circuit breaker is open, else 0."
)

for _state in STATES:
    JOBS.labels(_state)
for _reason in ("circuit_open", "deadline"):
    DEGRADED.labels(_reason)
for _result in ("hit", "miss", "error"):
    CACHE_INVALIDATIONS.labels(_result)
for _result in ("hit", "miss", "error"):
    PURGES.labels(_result)
for _result in ("published", "suppressed"):
    BROADCASTS.labels(_result)


def watch(
    depth: Callable[[], int], dead: Callable[[], int], circuit_open: Callable[[], bool]
) -> None:
    """Read the gauges from these at scrape time (a Redis round trip each; -1 if it fails)."""

    def safe(f: Callable[[], float]) -> Callable[[], float]:
        def read() -> float:
            try:
                return float(f())
            except Exception:
                return -1.0

        return read

    QUEUE_DEPTH.set_function(safe(depth))
    DEAD_LETTERS.set_function(safe(dead))
    CIRCUIT_OPEN.set_function(safe(lambda: 1.0 if circuit_open() else 0.0))
