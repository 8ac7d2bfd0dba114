"""Secrets stay secret, and security settings reach the clients.

No HMAC key, Redis password or Kafka password may appear in logs, error
messages, metrics or DLQ records; ``rediss://`` and librdkafka's SASL/SSL
settings must pass through to the clients unchanged.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from sinks.kafka import KafkaProducerWriter
from sources.kafka import KafkaTopicSource
from tests.support.job import tilepipe
from tests.support.services import free_port
from tilepipe.connect import redis_client as connect
from tilepipe.signing import sign

pytestmark = pytest.mark.e2e

HMAC = "hm4c-s3cret-value-0123456789abcdef0123456789"
REDIS_PW = "r3dis-p4ssword"
KAFKA_PW = "k4fka-p4ssword"
SASL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "tilepipe",
    "sasl.password": KAFKA_PW,
    "ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt",
}


def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in (HMAC, REDIS_PW, KAFKA_PW):
            assert secret not in text, f"{secret!r} leaked into: ...{text[-500:]}"


def test_hmac_secret_is_not_in_logs_metrics_or_dead_letters(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    good = json.dumps({"event_id": "ok", "kind": "tile", "version": 1, "source": "t",
                       "ts": now, "z": 3, "x": 1, "y": 1}).encode()  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_bytes(good + b"\n" + good.replace(b'"ok"', b'"unsigned"') + b"\n")
    dlq = tmp_path / "dlq.jsonl"
    port = free_port()
    # A file source carries no headers, so every record fails the signature check:
    # exactly the records whose DLQ entries could echo a secret.
    done = tilepipe("run", "--source", f"file:{src}", "--sink", f"file:{tmp_path / 'out'}",
                    "--dlq", f"file:{dlq}", "--log-level", "DEBUG",
                    "--metrics-port", str(port),
                    env={"TILEPIPE_HMAC_SECRETS": f"k1:{HMAC},k2:other-{HMAC}"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dead = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [d["reason"] for d in dead] == ["bad_signature", "bad_signature"]
    no_secret_in(done.stdout.decode(), done.stderr.decode(), dlq.read_text())
    # The signature scheme is the documented one (so the secret is really in use).
    assert sign(HMAC.encode(), "1", b"x").startswith("sha256=")


def test_passwords_are_not_in_error_messages() -> None:
    closed = free_port()
    done = tilepipe("run", "--sink", f"redis://:{REDIS_PW}@127.0.0.1:{closed}/0", timeout=60)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "did not answer" in err
    no_secret_in(err)
    done = tilepipe("run", "--source", f"kafka://127.0.0.1:{closed}/t", timeout=60,
                    env={"TILEPIPE_KAFKA_CONFIG": json.dumps(SASL)})  # fmt: skip
    assert done.returncode == 2
    no_secret_in(done.stderr.decode())


def test_rediss_url_gives_a_tls_connection() -> None:
    client = connect(f"rediss://:{REDIS_PW}@cache.example:6380/0?ssl_cert_reqs=required")
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["password"] == REDIS_PW
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"


def test_kafka_security_settings_reach_source_and_dlq_clients() -> None:
    src = KafkaTopicSource(["b:9093"], "t", extra_config=SASL)
    config = src._config()
    for k, v in SASL.items():
        assert config[k] == v
    writer = KafkaProducerWriter(["b:9093"], "dlq", extra_config=SASL)
    for k, v in SASL.items():
        assert writer._config[k] == v
    # The producer accepted them (librdkafka validates names and values on creation).
    assert writer.producer is not None


def test_settings_never_print_the_hmac_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataflows.settings import Settings

    monkeypatch.setenv("TILEPIPE_HMAC_SECRETS", f"k1:{HMAC}")
    s = Settings()
    assert s.secrets_by_key() == {"k1": HMAC.encode()}
    no_secret_in(repr(s), str(s), json.dumps(s.model_dump(mode="json")))


def test_metrics_endpoint_has_no_secret_while_running(tmp_path: Path) -> None:
    port = free_port()
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "tilepipe", "run", "--source", "generator:?rate=50&events=100000",
         "--sink", "file:/dev/null", "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**__import__("os").environ, "TILEPIPE_HMAC_SECRETS": f"k1:{HMAC}"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                page = body.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        no_secret_in(page)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    no_secret_in(err.decode())
