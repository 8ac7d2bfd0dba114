"""The metrics port answers Prometheus and the Kubernetes probes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import tilepipe.metrics  # noqa: F401  (registers the job's metrics)
from tests.support.services import free_port
from tilepipe.health import Health, serve


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.fixture
def server():
    health = Health(check_ttl_s=0)
    port = free_port()
    srv = serve(port, host="127.0.0.1", health=health)
    yield port, health
    srv.shutdown()
    srv.server_close()


def test_metrics_are_served_in_the_prometheus_format(server):
    port, _ = server
    code, ctype, body = get(port, "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "# TYPE tilepipe_events_total counter" in body
    assert 'tilepipe_events_total{outcome="broadcast"}' in body
    assert "tilepipe_end_to_end_latency_seconds_bucket" in body


def test_liveness_answers_while_the_process_does(server):
    port, _ = server
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/nothing")[0] == 404


def test_ready_once_the_source_is_assigned_and_every_check_answers(server):
    port, health = server
    code, _, body = get(port, "/readyz")
    assert code == 503 and json.loads(body)["status"] == "not ready"

    redis_up = {"up": False}

    def redis_check() -> None:
        if not redis_up["up"]:
            raise ConnectionError("Connection refused")

    health.add_check("redis", redis_check)
    health.source_assigned("kafka t[0] assigned")
    code, _, body = get(port, "/readyz")
    assert code == 503
    assert json.loads(body) == {"status": "not ready", "source": "kafka t[0] assigned",
                                "redis": "ConnectionError: Connection refused"}  # fmt: skip

    redis_up["up"] = True
    code, _, body = get(port, "/readyz")
    assert code == 200 and json.loads(body)["redis"] == "ok"


def test_checks_are_cached_between_probes():
    health = Health(check_ttl_s=60)
    calls = []
    health.add_check("dep", lambda: calls.append(1))
    health.source_assigned("x")
    assert health.readiness()[0] and health.readiness()[0]
    assert len(calls) == 1


def test_dead_letters_are_logged_one_json_line_each_at_debug(capsys):
    import logging

    from sinks.file import record_dead_letters
    from tilepipe.logs import setup_logging
    from tilepipe.records import DeadLetter

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("DEBUG")
    try:
        origin = {"topic": "t", "partition": 1, "offset": 7}
        record_dead_letters([DeadLetter("invalid_json", "not JSON", b"{", origin, 0.0)])
    finally:
        root.handlers[:], root.level = handlers, level
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "dead letter" in ln]
    doc = json.loads(line)
    assert doc["level"] == "debug" and doc["reason"] == "invalid_json"
    assert doc["origin"] == origin and doc["msg"] == "dead letter: not JSON"
