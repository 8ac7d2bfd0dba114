"""The gateway's Prometheus metrics, served by the gateway itself at ``/metrics``.

A registry of its own (plus the process collectors), so the gateway exports
only what it does. No label carries a tile, a session or a user.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# 0.5 ms .. 10 s: on loopback a delivery takes a millisecond; a conflated slow client seconds.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTIONS = Gauge(
    "tilepipe_gateway_connections", "Open client sessions by transport.", ["transport"],
    registry=REGISTRY,
)  # fmt: skip
CONNECTS = Counter(
    "tilepipe_gateway_connects_total",
    "Session attempts by result: accepted, rejected_full (503), rejected_auth, rejected_origin.",
    ["result"],
    registry=REGISTRY,
)
RECEIVED = Counter(
    "tilepipe_gateway_received_total",
    "tile_updated messages read from Redis pub/sub (each once per process).",
    registry=REGISTRY,
)
DELIVERED = Counter(
    "tilepipe_gateway_delivered_total",
    "Messages written to client sockets, by source: live (pub/sub) or state (read from the"
    " per-tile hash on resume).",
    ["source"],
    registry=REGISTRY,
)
CONFLATED = Counter(
    "tilepipe_gateway_conflated_total",
    "Pending messages replaced by a newer one for the same tile before a slow client read them.",
    registry=REGISTRY,
)
LATENCY = Histogram(
    "tilepipe_gateway_delivery_latency_seconds",
    "From reading a message off the Redis subscription to writing it to a client's socket:"
    " what the gateway adds.",
    buckets=_BUCKETS,
    registry=REGISTRY,
)
SLOW_CLOSES = Counter(
    "tilepipe_gateway_slow_closes_total",
    "Sessions closed because their socket stayed full longer than slow_timeout (code 4008).",
    registry=REGISTRY,
)
RESYNCS = Counter(
    "tilepipe_gateway_resyncs_total",
    "State reads sent to sessions, by reason: resume (a track with versions), redis_reconnected"
    " (the subscription came back), overflow (too many area updates at once), session_lost.",
    ["reason"],
    registry=REGISTRY,
)
TRACKED = Gauge(
    "tilepipe_gateway_tracked_tiles", "Distinct tiles tracked by this process's sessions.",
    registry=REGISTRY,
)  # fmt: skip
REDIS_UP = Gauge(
    "tilepipe_gateway_redis_subscribed", "1 while the Redis subscription is confirmed.",
    registry=REGISTRY,
)  # fmt: skip
REFUSED = Counter(
    "tilepipe_gateway_refused_total",
    "Client requests refused with an error frame, by code (bad_frame, forbidden, ...).",
    ["code"],
    registry=REGISTRY,
)
GC_PAUSE = Histogram(
    "tilepipe_gateway_gc_pause_seconds",
    "Python's cyclic garbage collector, by generation: a full (2) collection stops the loop"
    " for time proportional to the live objects, ~150 per session.",
    ["generation"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)


def watch_gc() -> None:
    """Time every collection into :data:`GC_PAUSE` (once per process)."""
    started = [0.0]
    pauses = [GC_PAUSE.labels(str(g)) for g in range(3)]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].observe(time.perf_counter() - started[0])

    if callback not in gc.callbacks:
        gc.callbacks.append(callback)
