"""The dataflow through the real parts: Tansu (Kafka API) in, Redis out.

The job runs as users run it (``tilepipe run`` in a subprocess); a Redis
subscriber sees what map clients would see.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.events import tile_record
from tests.support.job import Job, counts, key_of, run_to_end
from tests.support.services import RedisSubscriber

pytestmark = pytest.mark.integration

Z, Y = 15, 10_000  # one row of tiles: x alone names the tile


def test_kafka_to_redis_orders_dedups_and_dead_letters(kafka, redis_url, redis_client, channel):
    topic = kafka.new_topic("events", partitions=2)
    dlq = kafka.new_topic("dlq")
    now = int(time.time() * 1000)
    tiles = range(8)
    phase1 = []
    for x in tiles:
        versions = [1, 2, 3, 4, 5]
        order = [3, 1, 5, 2, 4] if x % 2 else [5, 4, 3, 2, 1]  # shuffled inside lateness
        phase1 += [
            tile_record(event_id=f"t{x}-v{v}", version=v, x=x, ts=now + v * 10, z=Z, y=Y)
            for v in order
        ]
        versions.clear()
    phase1.append(
        tile_record(event_id="t0-v3", version=3, x=0, ts=now + 30, z=Z, y=Y)
    )  # same event again
    invalid = [b"{nope", b"[1, 2]", tile_record(event_id="bad", version=1, x=1, ts=now, z=2, y=Y),
               b'{"kind": "tile", "event_id": "x", "version": 1, "source": "it",'
               b' "ts": "soon", "z": 1, "x": 0, "y": 0}']  # fmt: skip
    sink = f"{redis_url}?channel={channel}"
    with RedisSubscriber(redis_url, channel) as sub:
        job = Job("--source", kafka.url(topic), "--sink", sink, "--dlq", kafka.url(dlq))
        try:
            kafka.produce(topic, phase1 + invalid, key=key_of)
            first = sub.wait_for(len(tiles), timeout=60)
            # Late arrivals, well behind every tile's watermark:
            time.sleep(1.5)
            kafka.produce(
                topic,
                [
                    tile_record(
                        event_id="t0-v2-replay", version=2, x=0, ts=now + 20, z=Z, y=Y
                    ),  # old version: stale
                    tile_record(
                        event_id="t1-v5", version=5, x=1, ts=now + 50, z=Z, y=Y
                    ),  # duplicate id
                    tile_record(
                        event_id="t2-v6", version=6, x=2, ts=now, z=Z, y=Y
                    ),  # newer version, old time: applied
                ],
                key=key_of,
            )
            late = sub.wait_for(len(tiles) + 1, timeout=30)[len(first) :]
            # The three late records may sit on either partition: wait until all were read,
            # not just the one that broadcast, before stopping.
            total = len(phase1) + len(invalid) + 3
            job.wait_metric("tilepipe_events_in_total", lambda v: v >= total)
            code, _, err = job.stop()
        finally:
            if job.proc.poll() is None:
                job.kill()
        assert sub.settle(quiet=0.5) == first + late

    assert code == 0, err[-3000:]
    assert sorted((m["x"], m["version"], m["events"]) for m in first) == [(x, 5, 5) for x in tiles]
    assert [(m["x"], m["version"]) for m in late] == [(2, 6)]
    assert counts(err) == {"in": 48, "broadcast": 41, "duplicate": 2, "stale": 1,
                           "dead_letter": 4}  # fmt: skip
    # The latest message per tile is stored for clients that join late.
    stored = json.loads(redis_client.hget("tilepipe:tile:WebMercatorQuad:15:2:10000", "msg"))
    assert stored == late[0]

    dead = [json.loads(m.value()) for m in kafka.consume_all(dlq, expected=4)]
    assert sorted(d["reason"] for d in dead) == sorted(
        ["invalid_json", "not_an_object", "tile_out_of_range", "invalid_timestamp"]
    )
    for d in dead:
        assert d["origin"]["topic"] == topic
        assert isinstance(d["origin"]["partition"], int) and d["origin"]["offset"] >= 0
    assert {d["raw"] for d in dead} >= {"{nope", "[1, 2]"}


def test_idle_tile_state_is_evicted_and_forward_only_survives_it(
    kafka, redis_url, redis_client, channel
):
    topic = kafka.new_topic("ttl")
    now = int(time.time() * 1000)
    sink = f"{redis_url}?channel={channel}"
    with RedisSubscriber(redis_url, channel) as sub:
        job = Job("--source", kafka.url(topic), "--sink", sink, "--dlq", "file:/dev/null",
                  "--state-ttl", "1s")  # fmt: skip
        try:
            kafka.produce(
                topic,
                [
                    tile_record(event_id=f"e{x}", version=7, x=x, ts=now, z=Z, y=Y)
                    for x in range(50)
                ],
            )
            sub.wait_for(50, timeout=60)
            assert job.wait_metric("tilepipe_tiles_tracked", lambda v: v == 50, timeout=5) == 50
            job.wait_metric("tilepipe_tiles_tracked", lambda v: v == 0, timeout=30)
            # The state is gone; an old version replayed now must still not go out.
            kafka.produce(
                topic, [tile_record(event_id="old", version=3, x=0, ts=now - 1000, z=Z, y=Y)]
            )
            job.wait_metric("tilepipe_events_in_total", lambda v: v >= 51)
            time.sleep(1.5)
            code, _, err = job.stop()
        finally:
            if job.proc.poll() is None:
                job.kill()
        assert len(sub.settle(quiet=0.5)) == 50
    assert code == 0, err[-3000:]
    assert counts(err) == {"in": 51, "broadcast": 50, "duplicate": 0, "stale": 1,
                           "dead_letter": 0}  # fmt: skip


def test_two_worker_processes_give_the_single_process_result(kafka, redis_url, redis_client):
    topic = kafka.new_topic("workers", partitions=2)
    now = int(time.time() * 1000)
    events = [
        tile_record(event_id=f"w{x}-{v}", version=v, x=x, ts=now + v, z=Z, y=Y)
        for v in range(1, 21)
        for x in range(40)
    ]
    events += [b"not json", events[5]]
    kafka.produce(topic, events, key=key_of)
    finals = {}
    for workers, prefix in ((1, "one"), (2, "two")):
        sink = f"{redis_url}?prefix={prefix}"
        done = run_to_end("--workers", str(workers), "--source", kafka.url(topic),
                          "--sink", sink, "--dlq", "file:/dev/null")  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert counts(done.stderr.decode()) == {"in": 802, "broadcast": 800, "duplicate": 1,
                                                "stale": 0, "dead_letter": 1}  # fmt: skip
        keys = redis_client.keys(f"{prefix}:tile:*")
        finals[workers] = {
            k.decode().split(":", 2)[2]: json.loads(redis_client.hget(k, "msg"))["version"]
            for k in keys
        }
    assert len(finals[1]) == 40 and set(finals[1].values()) == {20}
    assert finals[2] == finals[1]
