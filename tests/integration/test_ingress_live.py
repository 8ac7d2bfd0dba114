"""The ingress through the real parts: ``tilepipe ingress`` on Tansu, the dataflow, Redis.

Every ingress here is the command as users run it (a subprocess), every request
a real HTTP request, every check of what was produced a read of the topic.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
import trustme

from tests.support.events import feature_event, tile_event
from tests.support.ingress import IngressProcess
from tests.support.job import Job, counts, tilepipe
from tests.support.services import KafkaBroker, RedisSubscriber
from tilepipe.client import post, send_events, signed_headers
from tilepipe.signing import sign
from tilepipe.tiles import tile_key

pytestmark = pytest.mark.integration

OLD = b"old-secret-0123456789abcdef0123456789"  # services refuse keys under 32 bytes
NEW = b"new-secret-0123456789abcdef0123456789"
ROTATION = f"k2026:{OLD.decode()},k2027:{NEW.decode()}"
Y = 1343  # the row of every tile here


def ids_on(kafka: KafkaBroker, topic: str, expected: int) -> list[str]:
    return [json.loads(m.value())["event_id"] for m in kafka.consume_all(topic, expected)]


def test_signed_events_reach_redis_and_direct_writes_are_held_to_the_same_rule(
    kafka, redis_url, redis_client, channel
) -> None:
    topic = kafka.new_topic("ingress-raw", partitions=2)
    dlq = kafka.new_topic("ingress-dlq")
    feature = feature_event(event_id="f1", version=3, source="osm", feature_id="node/1",
                            geometry={"type": "Point", "coordinates": [13.4, 52.5]},
                            minzoom=10, maxzoom=10)  # fmt: skip
    sink = f"{redis_url}?channel={channel}"
    with (
        IngressProcess(kafka.url(topic), secrets=ROTATION) as ingress,
        RedisSubscriber(redis_url, channel) as sub,
    ):
        job = Job("--source", kafka.url(topic), "--sink", sink, "--dlq", kafka.url(dlq),
                  env={"TILEPIPE_HMAC_SECRETS": ROTATION})  # fmt: skip
        try:
            one = send_events(ingress.url, [tile_event(event_id="t0", x=0, y=Y)], secret=NEW)
            batch = send_events(
                ingress.url,
                [tile_event(event_id=f"t{x}", x=x, y=Y) for x in range(1, 6)] + [feature],
                secret=OLD,  # the key being retired still works in the overlap
            )  # fmt: skip
            assert (one.status, one.count("accepted")) == (202, 1), one.body
            assert (batch.status, batch.count("accepted")) == (202, 6), batch.body
            # A producer writing to Kafka directly must sign the same way.
            unsigned = json.dumps(tile_event(event_id="direct-unsigned", x=9, y=Y)).encode()
            forged = json.dumps(tile_event(event_id="direct-forged", x=10, y=Y)).encode()
            ts = str(int(time.time()))
            kafka.produce(topic, [unsigned])
            kafka.produce(topic, [forged], headers={"x-tilepipe-timestamp": ts,
                          "x-tilepipe-signature": sign(b"guessed", ts, forged)})  # fmt: skip
            got = sub.wait_for(7, timeout=60)
            job.wait_metric("tilepipe_events_total", lambda v: True)
            time.sleep(1)
            code, _, err = job.stop()
        finally:
            if job.proc.poll() is None:
                job.kill()
        assert sub.settle(quiet=0.5) == got

    assert code == 0, err[-3000:]
    tiles = sorted((m["z"], m["x"]) for m in got if m["z"] == 12)
    assert tiles == [(12, x) for x in range(6)]
    assert [m["coverage"] for m in got if m["z"] == 10] == ["exact"]
    assert counts(err) == {"in": 9, "broadcast": 7, "duplicate": 0, "stale": 0,
                           "dead_letter": 2}  # fmt: skip
    dead = [json.loads(m.value()) for m in kafka.consume_all(dlq, expected=2)]
    assert sorted(d["reason"] for d in dead) == ["bad_signature", "bad_signature"]
    # What the ingress put on the topic: tile keys, ids, key ids, ingest times.
    records = [m for m in kafka.consume_all(topic, 9) if m.key() and b":" in m.key()]
    by_id = {json.loads(m.value())["event_id"]: m for m in records}
    assert by_id["t3"].key() == tile_key(12, 3, 1343).encode()
    assert by_id["f1"].key() == b"feature:osm:node/1"
    headers = dict(by_id["t0"].headers())
    assert headers["x-tilepipe-event-id"] == b"t0" and headers["x-tilepipe-key-id"] == b"k2027"
    assert dict(by_id["t1"].headers())["x-tilepipe-key-id"] == b"k2027"  # re-signed (M6)
    assert int(headers["x-tilepipe-ingest-ms"]) == by_id["t0"].timestamp()[1]


def test_every_kind_of_bad_request_gets_its_status_and_produces_nothing(kafka) -> None:
    topic = kafka.new_topic("ingress-bad")
    good = json.dumps(tile_event(event_id="good", x=1, y=Y)).encode()
    with IngressProcess(kafka.url(topic), secrets=ROTATION,
                        env={"TILEPIPE_INGRESS_MAX_REQUEST_BYTES": "4096"}) as ingress:  # fmt: skip
        url = ingress.url

        def raw(body: bytes, ctype: str = "application/json", **headers: str) -> Any:
            return post(url, body, ctype, secret=None, extra_headers=headers)

        def signed(body: bytes, ctype: str = "application/json") -> Any:
            return post(url, body, ctype, secret=NEW)

        old = signed_headers(NEW, good, int(time.time()) - 3600)
        fresh = signed_headers(NEW, good)
        cases = {
            "unsigned": (raw(good), 401),
            "unknown key": (post(url, good, "application/json", secret=b"guess"), 401),
            "tampered": (
                raw(json.dumps(tile_event(event_id="good", x=2, y=Y)).encode(), **fresh),
                401,
            ),
            "replayed an hour later": (raw(good, **old), 401),
            "text/plain": (signed(good, "text/plain"), 415),
            "too large": (signed(b"\n".join([good] * 100), "application/x-ndjson"), 413),
            "not JSON": (signed(b"{nope"), 400),
            "not an object": (signed(b"[1, 2]"), 400),
            "invalid tile": (
                signed(json.dumps(tile_event(event_id="bad", x=5000, y=Y)).encode()),
                422,
            ),
            "missing fields": (signed(b'{"kind": "tile"}'), 422),
            "all bad batch": (signed(b"{nope\n[]\n", "application/x-ndjson"), 400),
        }
        got = {name: r.status for name, (r, _) in cases.items()}
        assert got == {name: status for name, (_, status) in cases.items()}
        for name, (r, _) in cases.items():
            assert r.body.get("error"), name  # a JSON error for each
        assert ingress.metric("tilepipe_ingress_requests_total", status="401") == 4
        assert ingress.metric("tilepipe_ingress_signature_failures_total", reason="expired") == 1
        assert ingress.metric("tilepipe_ingress_rejections_total", reason="too_large") == 1
        # Then one good request: it is the only record on the topic.
        assert signed(good).status == 202
        assert ids_on(kafka, topic, 1) == ["good"]
        assert ingress.stop() == 0
    assert NEW.decode() not in ingress.log() and OLD.decode() not in ingress.log()


def test_a_replayed_request_is_accepted_once_and_a_resent_id_is_not_duplicated(kafka) -> None:
    topic = kafka.new_topic("ingress-replay")
    body = json.dumps(tile_event(event_id="once", x=1, y=Y)).encode()
    headers = signed_headers(OLD, body)
    with IngressProcess(kafka.url(topic), secrets=ROTATION) as ingress:
        first = post(ingress.url, body, "application/json", secret=None, extra_headers=headers)
        replay = post(ingress.url, body, "application/json", secret=None, extra_headers=headers)
        # The same producer (key) resending the same record: known per key and source, with
        # its bytes' digest (M4; the same id with other bytes would be 409).
        resent = send_events(
            ingress.url, [body, tile_event(event_id="twice", x=2, y=Y)], secret=OLD
        )
        assert [first.status, replay.status, resent.status] == [202, 202, 202]
        assert replay.body["results"][0]["result"] == "duplicate"
        assert [r["result"] for r in resent.body["results"]] == ["duplicate", "accepted"]
        time.sleep(0.5)  # a second copy, if any, would be there by now
        assert sorted(ids_on(kafka, topic, 2)) == ["once", "twice"]


def test_a_secret_rotates_without_a_gap(kafka) -> None:
    topic = kafka.new_topic("ingress-rotate")
    n = iter(range(100))

    def status(ingress: IngressProcess, secret: bytes) -> int:
        return send_events(
            ingress.url, [tile_event(event_id=f"r{next(n)}", x=1, y=Y)], secret=secret
        ).status

    with IngressProcess(kafka.url(topic), secrets=f"k2026:{OLD.decode()}") as before:
        assert [status(before, OLD), status(before, NEW)] == [202, 401]
    with IngressProcess(kafka.url(topic), secrets=ROTATION) as overlap:  # both keys active
        assert [status(overlap, OLD), status(overlap, NEW)] == [202, 202]
        assert overlap.metric("tilepipe_ingress_signatures_verified_total", key_id="k2026") == 1
    with IngressProcess(kafka.url(topic), secrets=f"k2027:{NEW.decode()}") as after:
        assert [status(after, OLD), status(after, NEW)] == [401, 202]
    assert len(ids_on(kafka, topic, 4)) == 4


def test_broker_down_is_503_with_retry_after_and_the_retries_land_once_it_is_back(
    private_kafka,
) -> None:
    topic = private_kafka.new_topic("ingress-outage", partitions=2)
    env = {"TILEPIPE_INGRESS_PRODUCE_TIMEOUT": "2s", "TILEPIPE_INGRESS_RETRY_AFTER": "3"}
    with IngressProcess(private_kafka.url(topic), secrets=ROTATION, env=env) as ingress:
        assert (
            send_events(ingress.url, [tile_event(event_id="before", x=1, y=Y)], secret=NEW).status
            == 202
        )
        private_kafka.stop()
        down = [tile_event(event_id=f"down{i}", x=i, y=Y) for i in range(5)]
        r = send_events(ingress.url, down, secret=NEW, retries=0)
        assert (r.status, r.retry_after, r.count("unavailable")) == (503, 3, 5), r.body
        assert ingress.metric("tilepipe_ingress_requests_total", status="503") == 1
        # Memory storage: the broker comes back empty, so the topic is made again; what
        # it had acknowledged before ("before") went with it, which no client can prevent.
        private_kafka.start()
        private_kafka.create_topic(topic, 2)
        r = send_events(ingress.url, down, secret=NEW, retries=10)
        assert (r.status, r.count("accepted")) == (202, 5), r.body
        assert "replaced the Kafka producer" in ingress.log()
        time.sleep(0.5)
        assert sorted(ids_on(private_kafka, topic, 5)) == [f"down{i}" for i in range(5)]


def test_a_hung_broker_loses_nothing_that_was_acknowledged(private_kafka) -> None:
    topic = private_kafka.new_topic("ingress-hung", partitions=2)
    env = {"TILEPIPE_INGRESS_PRODUCE_TIMEOUT": "2s"}
    acked: set[str] = set()
    with IngressProcess(private_kafka.url(topic), secrets=ROTATION, env=env) as ingress:

        def send(prefix: str, retries: int) -> int:
            batch = [tile_event(event_id=f"{prefix}{i}", x=i, y=Y) for i in range(10)]
            r = send_events(ingress.url, batch, secret=NEW, retries=retries)
            acked.update(x["event_id"] for x in r.body["results"] if x["status"] == 202)
            return r.status

        assert send("a", 0) == 202
        pid = private_kafka.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the broker hangs: connections open, no answers
        try:
            assert send("b", 0) == 503
        finally:
            os.kill(pid, signal.SIGCONT)
        assert send("b", 10) == 202
        assert send("c", 10) == 202
    assert len(acked) == 30
    time.sleep(0.5)
    # At least once: a record written during the hang may be there twice, none is missing.
    assert set(ids_on(private_kafka, topic, 30)) == acked


def test_tls_when_running_bare(kafka, tmp_path) -> None:
    topic = kafka.new_topic("ingress-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = ("--tls-certfile", str(tmp_path / "server.pem"),
           "--tls-keyfile", str(tmp_path / "server.pem"))  # fmt: skip
    with IngressProcess(kafka.url(topic), secrets=ROTATION, args=tls, scheme="https") as ingress:
        r = send_events(ingress.url, [tile_event(event_id="tls", x=1, y=Y)], secret=NEW,
                        cafile=str(tmp_path / "ca.pem"), retries=5)  # fmt: skip
        assert r.status == 202
        with pytest.raises(OSError):  # an unknown CA is refused
            send_events(ingress.url, [tile_event(event_id="tls2", x=1, y=Y)], secret=NEW, retries=0)
    assert ids_on(kafka, topic, 1) == ["tls"]


def test_tilepipe_send_posts_a_file_in_signed_batches(kafka, tmp_path) -> None:
    topic = kafka.new_topic("ingress-send")
    lines = [json.dumps(tile_event(event_id=f"s{i}", x=i, y=Y)) for i in range(5)] + [
        '{"kind": "tile"}'
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    with IngressProcess(kafka.url(topic), secrets=ROTATION) as ingress:
        env = {"TILEPIPE_SEND_SECRET": f"k2027:{NEW.decode()}"}
        done = tilepipe("send", "--url", ingress.url, "--batch", "2",
                        str(tmp_path / "events.jsonl"), env=env)  # fmt: skip
        assert done.returncode == 1, done.stderr  # one event was rejected
        assert done.stderr.decode().splitlines()[-1] == (
            "tilepipe send: 6 events: 5 accepted, 0 duplicate, 1 rejected, 0 unavailable"
        )
        assert '"index": 5' in done.stderr.decode()  # the rejected one, numbered in the file
        again = tilepipe("send", "--url", ingress.url, stdin=lines[0].encode(), env=env)
        assert again.returncode == 0 and "1 duplicate" in again.stderr.decode()
        wrong = tilepipe("send", "--url", ingress.url, stdin=lines[0].encode(),
                         env={"TILEPIPE_SEND_SECRET": "nope"})  # fmt: skip
        assert wrong.returncode == 2 and "401" in wrong.stderr.decode()
    assert sorted(ids_on(kafka, topic, 5)) == [f"s{i}" for i in range(5)]


def test_ingress_configuration_mistakes_exit_2_with_one_line(kafka) -> None:
    topic = kafka.new_topic("ingress-config")
    cases = [
        (("--sink", kafka.url(topic)), {"TILEPIPE_HMAC_SECRETS": ""}, "no HMAC secret"),
        (("--sink", kafka.url("absent-topic")), {"TILEPIPE_HMAC_SECRETS": ROTATION},
         "does not exist"),
        (("--sink", kafka.url(topic), "--listen", "nowhere"), {"TILEPIPE_HMAC_SECRETS": ROTATION},
         "not HOST:PORT"),
        (("--sink", kafka.url(topic)), {"TILEPIPE_HMAC_SECRETS": "k:"}, "empty key id or secret"),
    ]  # fmt: skip
    for args, env, message in cases:
        done = tilepipe("ingress", *args, env=env)
        err = done.stderr.decode()
        assert done.returncode == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err
