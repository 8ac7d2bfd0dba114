"""kill -9 mid-stream with recovery, restart, and nothing goes wrong.

A producer streams versions for many tiles while the job is killed (SIGKILL:
no drain, no final snapshot) several times and restarted on the same
recovery directory. At the end every tile holds its newest version, no
tile's broadcast version ever went backwards, every invalid record is in the
DLQ, and anything broadcast twice carries the same hash.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import defaultdict

import pytest

from tests.support.events import tile_record
from tests.support.job import Job, counts, key_of
from tests.support.services import RedisSubscriber

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TILES = 300
Z, Y = 15, 10_000  # one row of tiles: x alone names the tile
VERSIONS = 80
KILLS = 4


def stored_messages(client, keys: list[str]) -> list[bytes | None]:
    pipe = client.pipeline()
    for k in keys:
        pipe.hget(k, "msg")
    return pipe.execute()


def test_kill_9_and_restart_keeps_every_tile_forward_and_complete(
    kafka, redis_url, redis_client, channel, tmp_path
):
    topic = kafka.new_topic("crash", partitions=2)
    dlq = kafka.new_topic("crash-dlq")
    rng = random.Random(42)
    now = int(time.time() * 1000)
    stream: list[bytes] = []
    for v in range(1, VERSIONS + 1):
        batch = [
            tile_record(event_id=f"t{x}-v{v}", version=v, x=x, ts=now + v * 20, z=Z, y=Y)
            for x in range(TILES)
        ]
        rng.shuffle(batch)
        stream += batch
        if v % 10 == 0:
            stream.append(b'{"broken": ' + str(v).encode())  # one invalid record per 10 versions
            stream.append(batch[0])  # and a duplicate
    invalid = sum(1 for r in stream if r.startswith(b'{"broken"'))

    def produce() -> None:
        for i in range(0, len(stream), 400):  # ~6 s, so the kills land mid-stream
            kafka.produce(topic, stream[i : i + 400], key=key_of)
            time.sleep(0.1)

    args = ("--source", kafka.url(topic), "--sink", f"{redis_url}?channel={channel}",
            "--dlq", kafka.url(dlq), "--recovery-dir", str(tmp_path / "recovery"),
            "--snapshot-interval", "500ms")  # fmt: skip
    producer = threading.Thread(target=produce)
    with RedisSubscriber(redis_url, channel) as sub:
        producer.start()
        for _ in range(KILLS):
            job = Job(*args)
            time.sleep(rng.uniform(1.0, 2.5))
            job.kill()  # SIGKILL: no drain, the last epoch is lost
        producer.join()
        job = Job(*args)
        try:
            keys = [f"tilepipe:tile:WebMercatorQuad:{Z}:{x}:{Y}" for x in range(TILES)]
            deadline = time.monotonic() + 90
            while True:
                stored = [json.loads(m) if m else None for m in stored_messages(redis_client, keys)]
                if all(s and s["version"] == VERSIONS for s in stored):
                    break
                assert time.monotonic() < deadline, "not every tile reached its newest version"
                time.sleep(0.3)
            # The store may be complete before this last job has even started (its
            # predecessors published it all): stop it only once it serves metrics, when
            # its SIGTERM handler is in place, as a pod is stopped once it is up.
            job.metric("tilepipe_events_in_total")
            code, _, err = job.stop()
        finally:
            if job.proc.poll() is None:
                job.kill()
        messages = sub.settle(quiet=1.0)
    assert code == 0, err[-3000:]

    per_tile: dict[int, list[dict]] = defaultdict(list)
    for m in messages:
        per_tile[m["x"]].append(m)
    assert set(per_tile) == set(range(TILES))
    rebroadcasts = 0
    for x, seq in per_tile.items():
        versions = [m["version"] for m in seq]
        assert versions == sorted(versions), f"tile {x} went backwards: {versions}"
        assert versions[-1] == VERSIONS
        for a, b in itertools.pairwise(seq):
            if a["version"] == b["version"]:
                rebroadcasts += 1
                assert a["hash"] == b["hash"]
    # The store compares and sets atomically with the publish, so replays after
    # a restart are suppressed instead of re-broadcast; it counts them durably.
    assert rebroadcasts == 0
    suppressed = int(redis_client.hget("tilepipe:stats", "suppressed") or 0)
    print(f"\ncrash test: {len(messages)} broadcasts for {len(stream)} records,"
          f" {KILLS} kills, {rebroadcasts} re-broadcasts,"
          f" {suppressed} replayed updates suppressed by the store")  # fmt: skip

    dead = kafka.consume_all(dlq, expected=invalid, timeout=30)
    origins = {(json.loads(d.value())["origin"]["partition"],
                json.loads(d.value())["origin"]["offset"]) for d in dead}  # fmt: skip
    assert len(origins) == invalid  # each invalid record dead-lettered (at least once)


def test_sigterm_drains_and_snapshots_so_a_restart_reads_on_exactly(
    kafka, redis_url, redis_client, channel, tmp_path
):
    """Kubernetes' SIGTERM mid-stream: held events go out, the last snapshot is written,
    and the next run starts exactly where this one stopped."""
    topic = kafka.new_topic("sigterm", partitions=2)
    tiles, versions = 100, 60
    now = int(time.time() * 1000)
    stream = [tile_record(event_id=f"t{x}-v{v}", version=v, x=x, ts=now + v * 20, z=Z, y=Y)
              for v in range(1, versions + 1) for x in range(tiles)]  # fmt: skip

    reading = threading.Event()

    def produce() -> None:
        # The first chunk, then the rest (~3 s) only once the job reads: on a loaded
        # machine the job may start after a fast producer has finished, and the SIGTERM
        # would then land after the whole stream instead of in the middle of it.
        kafka.produce(topic, stream[:200], key=key_of)
        reading.wait(120)
        for i in range(200, len(stream), 200):
            kafka.produce(topic, stream[i : i + 200], key=key_of)
            time.sleep(0.1)

    args = ("--source", kafka.url(topic), "--sink", f"{redis_url}?channel={channel}",
            "--dlq", "file:/dev/null", "--recovery-dir", str(tmp_path / "recovery"),
            "--snapshot-interval", "10s")  # fmt: skip
    producer = threading.Thread(target=produce)
    producer.start()
    first = Job(*args)
    try:
        first.wait_metric("tilepipe_events_in_total", lambda v: v > 0)
        reading.set()
        time.sleep(1.0)
        code1, _, err1 = first.stop()  # SIGTERM
    finally:
        reading.set()
        if first.proc.poll() is None:
            first.kill()
    producer.join()
    assert code1 == 0, err1[-3000:]
    c1 = counts(err1)
    assert 0 < c1["in"] < len(stream), "the SIGTERM should land mid-stream"
    assert "unaccounted" not in err1  # everything read was released before exit

    second = Job(*args, "--kafka-exit-at-end")
    code2, _, err2 = second.stop_when_done()
    assert code2 == 0, err2[-3000:]
    c2 = counts(err2)
    # The final snapshot held the exact offsets: nothing read twice, nothing skipped.
    assert c1["in"] + c2["in"] == len(stream)
    assert c1["duplicate"] == c2["duplicate"] == 0
    keys = [f"tilepipe:tile:WebMercatorQuad:{Z}:{x}:{Y}" for x in range(tiles)]
    stored = [json.loads(m) for m in stored_messages(redis_client, keys)]
    assert {m["version"] for m in stored} == {versions}
    print(f"\nSIGTERM test: {c1['in']} records before the SIGTERM, {c2['in']} after the restart")
