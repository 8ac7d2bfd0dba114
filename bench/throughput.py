"""Throughput of the whole job, file mode and Kafka → Redis, in one run.

    python -m bench.throughput --events 200000

File mode reads a pre-written JSONL file and writes tile_updated to
/dev/null. Kafka → Redis pre-loads the same events into a topic on a
Tansu broker started for the run, and publishes to a real Redis; the job
runs until the end of the topic (``--kafka-exit-at-end``). Rates are events
per second over the job's wall time, startup excluded (a run on 1 event is
measured first and subtracted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_events(n: int, tiles: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    versions: dict[int, int] = {}
    out = []
    for i in range(n):
        t = rng.randrange(tiles) if tiles < n else i
        versions[t] = v = versions.get(t, 0) + 1
        x, y = t % 16384, t // 16384
        out.append(json.dumps(
            {"event_id": f"b{i}", "kind": "tile", "version": v, "source": "bench",
             "ts": now + i // 50, "z": 14, "x": x, "y": y}, separators=(",", ":"),
        ).encode())  # fmt: skip
    return out


def run_job(*args: str) -> float:
    env = {**os.environ, "TILEPIPE_PROGRESS_INTERVAL": "3600"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tilepipe", "run", *args],
                          capture_output=True, env=env)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"job failed: {done.stderr.decode()[-2000:]}")
    return elapsed


def bench_file(events: list[bytes], tmp: Path) -> float:
    path = tmp / "events.jsonl"
    path.write_bytes(b"\n".join(events) + b"\n")
    (tmp / "one.jsonl").write_bytes(events[0] + b"\n")
    common = ("--sink", "file:/dev/null", "--dlq", "file:/dev/null")
    startup = run_job("--source", f"file:{tmp / 'one.jsonl'}", *common)
    total = run_job("--source", f"file:{path}", *common)
    return len(events) / max(total - startup, 1e-9)


def bench_kafka_redis(events: list[bytes], redis_url: str) -> float:
    from tests.support.services import start_kafka

    with start_kafka() as kafka:
        topic = kafka.new_topic("bench")
        one = kafka.new_topic("bench-one")
        kafka.produce(topic, events, key=None)
        kafka.produce(one, events[:1], key=None)
        common = ("--sink", f"{redis_url}?channel=tilepipe-bench&prefix=bench",
                  "--dlq", "file:/dev/null", "--kafka-exit-at-end")  # fmt: skip
        startup = run_job("--source", kafka.url(one), *common)
        total = run_job("--source", kafka.url(topic), *common)
    return len(events) / max(total - startup, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--hot-tiles", type=int, default=1000, help="tiles in the hot-tile run")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    p.add_argument("--skip-kafka", action="store_true")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, tiles in (("distinct tiles", args.events), ("hot tiles", args.hot_tiles)):
            events = make_events(args.events, tiles)
            rows.append((f"file → file, {name}", bench_file(events, Path(tmp))))
            if not args.skip_kafka:
                import redis

                redis.Redis.from_url(args.redis).flushdb()
                rows.append((f"Kafka → Redis, {name}", bench_kafka_redis(events, args.redis)))
    print(f"{'scenario':40} {'events/s':>12}")
    for name, rate in rows:
        print(f"{name:40} {rate:12,.0f}")
    print(json.dumps({name: round(rate) for name, rate in rows}))


if __name__ == "__main__":
    main()
