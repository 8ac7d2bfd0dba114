"""Outages of the parts around the job: it waits them out and loses nothing.

Redis (the broadcast sink) and the DLQ's Kafka broker are taken away
mid-stream and brought back. While one is away the job keeps running,
says so in a log line and a metric, stops taking input rather than
buffering it (the sink's retry blocks the worker: back-pressure), and once
it is back every record is accounted for and every tile ends at its newest
version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from tests.support.events import tile_record
from tests.support.job import Job, counts, key_of
from tests.support.services import KafkaBroker, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TILES = 40


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def stored_versions(client: redis.Redis, prefix: str) -> dict[int, int]:
    """Tile x -> version of the latest message Redis keeps for late joiners."""
    out = {}
    for key in client.scan_iter(f"{prefix}:tile:*", count=1000):
        msg = client.hget(key, "msg")
        if msg:
            doc = json.loads(msg)
            out[doc["x"]] = doc["version"]
    return out


def at_version(client: redis.Redis, prefix: str, version: int):  # type: ignore[no-untyped-def]
    """A predicate: every tile's stored message is at ``version``."""
    return lambda: stored_versions(client, prefix) == dict.fromkeys(range(TILES), version)


def wait_until(predicate, timeout: float, what: str, job: Job) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if job.proc.poll() is not None:
            raise AssertionError(f"the job exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def versions(lo: int, hi: int, now: int) -> list[bytes]:
    return [
        tile_record(event_id=f"t{x}-v{v}", version=v, x=x, ts=now + v)
        for v in range(lo, hi + 1)
        for x in range(TILES)
    ]


def test_redis_outage_is_waited_out_with_back_pressure_and_nothing_lost(kafka: KafkaBroker) -> None:
    topic = kafka.new_topic("redis-outage")
    now = int(time.time() * 1000)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        job = Job("--source", kafka.url(topic), "--sink", f"{server.url}?channel=outage",
                  "--dlq", "file:/dev/null")  # fmt: skip
        try:
            kafka.produce(topic, versions(1, 3, now), key=key_of)
            wait_until(at_version(client, "tilepipe", 3), 60, "phase 1 in Redis", job)
            server.stop()
            # Away: a small batch first (the sink is now retrying it), then a flood.
            kafka.produce(topic, versions(4, 4, now), key=key_of)
            job.wait_metric("tilepipe_sink_up", lambda v: v == 0)
            rss_before = rss_kib(job.proc.pid)
            read_before = job.metric("tilepipe_events_in_total")
            flood = versions(5, 400, now)  # 15,840 records
            kafka.produce(topic, flood, key=key_of)
            time.sleep(4)
            read_during = job.metric("tilepipe_events_in_total")
            rss_during = rss_kib(job.proc.pid)
            assert job.proc.poll() is None, "the job must outlive the outage"
            # Back-pressure: the blocked sink stops the worker, so the flood stays on the
            # topic instead of in the job's memory.
            assert read_during - read_before <= 2_000, (read_before, read_during)
            assert rss_during - rss_before < 30 * 1024, (rss_before, rss_during)

            server.start()  # empty, as a Redis without persistence comes back
            client = redis.Redis.from_url(server.url)
            wait_until(at_version(client, "tilepipe", 400), 90, "every tile at v400", job)
            job.wait_metric("tilepipe_sink_up", lambda v: v == 1)
            assert job.metric("tilepipe_broadcast_retries_total") >= 1
            code, _, err = job.stop()
        finally:
            if job.proc.poll() is None:
                job.kill()
    assert code == 0, err[-3000:]
    assert "redis sink: write failed" in err and "redis sink: recovered after" in err
    c = counts(err)
    total = TILES * 400
    assert c["in"] == total and c["dead_letter"] == 0
    assert c["broadcast"] + c["duplicate"] + c["stale"] == total  # every record accounted for


def labelled(job: Job, name: str, labels: str, default: float | None = None) -> float:
    """One sample of a labelled metric, e.g. ``labelled(job, "tilepipe_sink_up", 'sink="dlq"')``."""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{job.metrics_port}/metrics", timeout=5)
    for line in body.read().decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"no {name}{{{labels}}}")


def invalid(tag: str, n: int) -> list[bytes]:
    return [f'{{"broken": "{tag}-{i}"'.encode() for i in range(n)]


def test_dlq_broker_outage_loses_no_dead_letter(kafka: KafkaBroker, tmp_path: Path) -> None:
    """The DLQ's broker stops answering (SIGSTOP: a hung broker, the hard case) and comes back."""
    topic = kafka.new_topic("dlq-outage-in")
    now = int(time.time() * 1000)
    with KafkaBroker() as dlq_broker:
        dlq = dlq_broker.new_topic("dead")
        job = Job("--source", kafka.url(topic), "--sink", f"file:{tmp_path / 'out.jsonl'}",
                  "--dlq", dlq_broker.url(dlq))  # fmt: skip
        try:
            kafka.produce(topic, invalid("before", 20) + versions(1, 1, now), key=key_of)
            assert len(dlq_broker.consume_all(dlq, 20, timeout=60)) >= 20
            dlq_broker.freeze()
            try:
                kafka.produce(topic, invalid("during", 30) + versions(2, 2, now), key=key_of)
                # Past the producer's 10 s message timeout: deliveries fail and are retried.
                time.sleep(13)
                assert job.proc.poll() is None, "the job must outlive the outage"
                assert labelled(job, "tilepipe_sink_up", 'sink="dlq"') == 0
            finally:
                dlq_broker.thaw()
            got = dlq_broker.consume_all(dlq, 50, timeout=90)
            wait_until(lambda: labelled(job, "tilepipe_sink_up", 'sink="dlq"') == 1,
                       90, "the DLQ sink back up", job)  # fmt: skip
            code, _, err = job.stop()
        finally:
            if job.proc.poll() is None:
                job.kill()
    assert code == 0, err[-3000:]
    raws = {json.loads(m.value())["raw"] for m in got}
    want = {r.decode() for r in invalid("before", 20) + invalid("during", 30)}
    assert raws == want  # every dead letter arrived (a retry may repeat one: at-least-once)
    assert "dlq sink: write failed" in err
    c = counts(err)
    assert c["dead_letter"] == 50 and c["in"] == 50 + 2 * TILES


def test_source_broker_hang_resumes_at_the_right_offsets(
    private_kafka: KafkaBroker, redis_url: str
) -> None:
    """The source's broker hangs mid-stream; the job waits and reads each record once."""
    kafka = private_kafka
    topic = kafka.new_topic("broker-hang", partitions=2)
    now = int(time.time() * 1000)
    client = redis.Redis.from_url(redis_url)
    prefix = f"hang{now}"
    sink = f"{redis_url}?channel={prefix}&prefix={prefix}"
    job = Job("--source", kafka.url(topic), "--sink", sink, "--dlq", "file:/dev/null")
    try:
        kafka.produce(topic, versions(1, 5, now), key=key_of)
        wait_until(at_version(client, prefix, 5), 60, "phase 1 in Redis", job)
        kafka.freeze()
        time.sleep(8)
        assert job.proc.poll() is None, "the job must outlive the outage"
        kafka.thaw()
        kafka.produce(topic, versions(6, 10, now), key=key_of)
        wait_until(at_version(client, prefix, 10), 60, "phase 2 in Redis", job)
        code, _, err = job.stop()
    finally:
        if job.proc.poll() is None:
            job.kill()
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    assert code == 0, err[-3000:]
    c = counts(err)
    # Exactly the records produced: nothing re-read after the hang, nothing skipped.
    assert c["in"] == 10 * TILES
    assert c["broadcast"] + c["duplicate"] + c["stale"] == 10 * TILES
    assert c["duplicate"] == c["stale"] == 0


def test_a_burst_on_hot_tiles_is_coalesced_and_the_lag_drains(kafka: KafkaBroker) -> None:
    """A burst far over the steady rate on 5 tiles: lag rises then falls, nothing dropped."""
    topic = kafka.new_topic("burst")
    now = int(time.time() * 1000)
    hot = 5
    steady = [tile_record(event_id=f"s{i}", version=1, x=100 + i, ts=now) for i in range(200)]
    burst = [
        tile_record(event_id=f"b{v}-{x}", version=v, x=x, ts=now + v)
        for v in range(1, 8001)
        for x in range(hot)
    ]
    out = Path(f"/tmp/tilepipe-burst-{now}.jsonl")
    lag_labels = f'partition="0",topic="{topic}"'
    job = Job("--source", kafka.url(topic), "--sink", f"file:{out}", "--dlq", "file:/dev/null",
              env={"TILEPIPE_KAFKA_LAG_INTERVAL": "200ms"})  # fmt: skip
    try:
        kafka.produce(topic, steady, key=key_of)
        job.wait_metric("tilepipe_events_in_total", lambda v: v >= len(steady))
        kafka.produce(topic, burst, key=key_of)  # 40,000 records at once
        lags = []
        deadline = time.monotonic() + 90
        while job.metric("tilepipe_events_in_total") < len(steady) + len(burst):
            lags.append(labelled(job, "tilepipe_kafka_consumer_lag", lag_labels, default=0))
            assert time.monotonic() < deadline, f"burst not drained; lag samples {lags[-5:]}"
            time.sleep(0.1)
        time.sleep(1.0)  # the lag gauge refreshes every 200 ms here
        final_lag = labelled(job, "tilepipe_kafka_consumer_lag", lag_labels)
        code, _, err = job.stop()
    finally:
        if job.proc.poll() is None:
            job.kill()
    assert code == 0, err[-3000:]
    assert max(lags) > 1000 and final_lag == 0, (max(lags), final_lag)
    updates = [json.loads(line) for line in out.read_text().splitlines()]
    out.unlink()
    hot_updates = [u for u in updates if u["x"] < hot]
    # Coalesced: each hot tile broadcasts at most once per max_delay, not once per event.
    assert len(hot_updates) < len(burst) / 20
    assert {u["x"]: u["version"] for u in hot_updates} == dict.fromkeys(range(hot), 8000)
    assert sum(u["events"] for u in hot_updates) == len(burst)  # every event in some update
    c = counts(err)
    assert c["in"] == len(steady) + len(burst)
    assert c["broadcast"] == c["in"] and c["duplicate"] == c["stale"] == c["dead_letter"] == 0
