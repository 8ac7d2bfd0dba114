"""The ingress's Prometheus metrics, served on its own port at ``/metrics``.

They live in a registry of their own so the ingress exports only what it
does (plus the process collectors), not the dataflow's metrics at zero.
Label values come from closed sets: HTTP status codes, reason codes, key ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tilepipe.metrics import service_registry

REGISTRY = service_registry()

# 1 ms .. 10 s: acks on loopback take milliseconds, an outage takes produce_timeout.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "tilepipe_ingress_requests_total", "HTTP requests to /v1/events by status.", ["status"],
    registry=REGISTRY,
)  # fmt: skip
RECORDS = Counter(
    "tilepipe_ingress_records_total",
    "Records by result: accepted (acked by the broker), duplicate (id seen within the dedup"
    " window), rejected (invalid), unavailable (the broker did not ack).",
    ["result"],
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "tilepipe_ingress_rejections_total",
    "Every rejection, of a request (bad_signature, unsupported_media_type, too_large, ...) or of"
    " one record (the dead-letter reason codes, e.g. missing_field).",
    ["reason"],
    registry=REGISTRY,
)
SIGNATURE_FAILURES = Counter(
    "tilepipe_ingress_signature_failures_total",
    "Requests refused for their signature: missing, malformed, expired (outside the tolerance"
    " window) or mismatch.",
    ["reason"],
    registry=REGISTRY,
)
SIGNATURES_VERIFIED = Counter(
    "tilepipe_ingress_signatures_verified_total",
    "Requests whose signature matched, by key id: when a retired key's count stops rising,"
    " it can be removed.",
    ["key_id"],
    registry=REGISTRY,
)
PRODUCE_LATENCY = Histogram(
    "tilepipe_ingress_produce_latency_seconds",
    "From queuing a request's records to the broker's last acknowledgement (or failure).",
    buckets=_BUCKETS,
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "tilepipe_ingress_request_duration_seconds",
    "Time to answer a request to /v1/events, whatever the answer.",
    buckets=_BUCKETS,
    registry=REGISTRY,
)
DEDUP_ENTRIES = Gauge(
    "tilepipe_ingress_dedup_entries", "event_ids remembered by the dedup window.",
    registry=REGISTRY,
)  # fmt: skip
JOB_REQUESTS = Counter(
    "tilepipe_ingress_job_requests_total",
    "Job API requests (/v1/jobs) by method and HTTP status.",
    ["method", "status"],
    registry=REGISTRY,
)
