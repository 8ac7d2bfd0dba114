"""The metrics port: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

Kubernetes probes and Prometheus share one small HTTP server on
``--metrics-port``. Liveness says only that the process answers: a job held
back by a sink outage is doing the right thing (back-pressure), and
restarting it would not bring the sink back. Readiness says the process has
joined its Bytewax cluster and owns its part of the source, and that every
registered dependency (Redis, when the sink is Redis) answers; it gates
rollouts and the PodDisruptionBudget, not traffic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

Check = Callable[[], None]
"""A readiness check: returns when the dependency answers, raises when it does not."""


class Health:
    """What this process knows about its own readiness; safe to use from any thread."""

    def __init__(self, check_ttl_s: float = 1.0) -> None:
        self._source = threading.Event()
        self._source_detail = "waiting for the cluster to assign the source"
        self._checks: dict[str, Check] = {}
        self._cached: tuple[float, bool, dict[str, str]] | None = None
        self._ttl = check_ttl_s
        self._lock = threading.Lock()

    def source_assigned(self, detail: str) -> None:
        """The source (or a partition of it) is open on this process."""
        self._source_detail = detail
        self._source.set()

    def add_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks[name] = check
            self._cached = None

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._source.clear()
            self._checks.clear()
            self._cached = None

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether this process is ready, and a word on each thing that decided it.

        Dependency checks run at most once per ``check_ttl_s`` however often
        probes and people ask.
        """
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1], dict(self._cached[2])
            ready = self._source.is_set()
            detail = {"source": self._source_detail}
            for name, check in self._checks.items():
                try:
                    check()
                    detail[name] = "ok"
                except Exception as e:
                    ready = False
                    detail[name] = f"{type(e).__name__}: {e}"
            self._cached = (now, ready, detail)
            return ready, dict(detail)


HEALTH = Health()


class _Handler(BaseHTTPRequestHandler):
    health: Health = HEALTH

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(REGISTRY))
        elif path in ("/healthz", "/livez"):
            self._send(200, "application/json", b'{"status":"ok"}')
        elif path == "/readyz":
            ready, detail = self.health.readiness()
            body = json.dumps({"status": "ready" if ready else "not ready", **detail}).encode()
            self._send(200 if ready else 503, "application/json", body)
        else:
            self._send(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds are not news


def serve(port: int, host: str = "0.0.0.0", health: Health = HEALTH) -> ThreadingHTTPServer:
    """Serve the metrics port from a daemon thread; returns the server (``shutdown()`` stops it)."""
    handler = type("Handler", (_Handler,), {"health": health})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="tilepipe-metrics", daemon=True).start()
    log.info("serving /metrics, /healthz and /readyz on %s:%d", host, port)
    return server
