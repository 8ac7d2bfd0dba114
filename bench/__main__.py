"""tilepipe's benchmark suite: every scenario in one run, side by side.

    python -m bench                       # the full run behind the README's table (~6 min)
    python -m bench --scale small         # the same scenarios, smaller (~1.5 min)
    python -m bench --scale tiny --only distinct,baseline --json out.json

It starts its own Tansu broker and a private redis-server, pre-loads the
topics, and runs the job as a user runs it (``python -m tilepipe run``, one
process per run). Scenarios:

  distinct   Kafka → job → Redis, every event on its own tile (no coalescing)
  hot        the same on Zipf-distributed tiles (heavy coalescing)
  latency    events produced at a steady rate into a running job; latency is
             "event produced" → "tile_updated received" by a Redis subscriber
  baseline   the naive asyncio loop (validate, await SET NX, await PUBLISH)
  ceilings   raw consume and pipelined PUBLISH rates, nothing in between
  state      peak RSS with many distinct tiles tracked → bytes per tile
  fanout     polygon cover, tiles per second
  workers    1 vs 2 worker processes on a 2-partition topic

Throughput is events over the dataflow's run time, as the job's summary
line reports it (connecting to Kafka and Redis included; Python's imports
and the pre-flight checks not). Targets are printed next to the figures; nothing here
asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import baseline
from bench.workload import (
    RunningJob,
    Subscriber,
    distinct_events,
    percentile,
    run_job,
    tile_event,
    tile_key,
    write_jsonl,
    zipf_events,
)


@dataclass(frozen=True)
class Scale:
    events: int  # pre-loaded events in the distinct and hot runs
    hot_tiles: int
    rates: tuple[int, ...]  # events/s in the latency runs
    paced_seconds: float
    baseline_events: int
    ceiling_events: int
    state_tiles: int
    fanout_zoom: int
    worker_events: int


SCALES = {
    "tiny": Scale(2_000, 100, (200,), 2.0, 200, 5_000, 5_000, 8, 2_000),
    "small": Scale(100_000, 1_000, (5_000,), 10.0, 3_000, 100_000, 100_000, 12, 100_000),
    "full": Scale(500_000, 10_000, (5_000, 20_000), 30.0, 20_000, 500_000, 1_000_000, 14, 500_000),
}
SCENARIOS = ("ceilings", "baseline", "distinct", "hot", "latency", "state", "fanout", "workers")
MAX_DELAY_MS = 250  # the default; the latency target is max_delay + 150 ms
TARGETS = {
    "distinct_events_per_s": 40_000,
    "hot_events_per_s": 100_000,
    "vs_baseline": 25.0,
    "p99_ms_at_5000": MAX_DELAY_MS + 150,
    "bytes_per_tile": 600,
}


class Bench:
    def __init__(self, scale: Scale, kafka: Any, redis_url: str, tmp: Path) -> None:
        self.scale = scale
        self.kafka = kafka
        self.redis_url = redis_url
        self.tmp = tmp
        self.results: dict[str, Any] = {}
        self.start_ms = int(time.time() * 1000) - 3_600_000  # a backlog: an hour old
        self._topics: dict[str, str] = {}

    # -- shared set-up ----------------------------------------------------------------

    def topic(self, name: str, make: Callable[[], list[bytes]], partitions: int = 1) -> str:
        """A topic pre-loaded with ``make()``, created once per run."""
        if name not in self._topics:
            events = make()
            t = self.kafka.new_topic(f"bench-{name}", partitions=partitions)
            key = tile_key if partitions > 1 else None
            self.kafka.produce(t, events, key=key, timeout=300)
            self._topics[name] = t
        return self._topics[name]

    def distinct_topic(self) -> str:
        return self.topic("distinct", lambda: distinct_events(self.scale.events, self.start_ms))

    def sink(self, channel: str) -> str:
        return f"{self.redis_url}?channel={channel}&prefix={channel}"

    def job_args(self, topic: str, channel: str, workers: int) -> list[str]:
        return [
            "--source", self.kafka.url(topic), "--sink", self.sink(channel),
            "--dlq", "file:/dev/null", "--kafka-exit-at-end", "--workers", str(workers),
        ]  # fmt: skip

    def drain(self, topic: str, events: int, channel: str, workers: int = 1) -> dict[str, Any]:
        """Run the job over a pre-loaded topic to its end; rate, broadcasts, peak RSS."""
        args = self.job_args(topic, channel, workers)
        with Subscriber(self.redis_url, channel) as sub:
            job = run_job(args)
            settled = time.monotonic() + 10
            last = -1
            while sub.count != last and time.monotonic() < settled:  # until no more arrive
                last = sub.count
                time.sleep(0.3)
        seconds = job.run_s
        return {
            "events": events,
            "seconds": seconds,
            "process_s": round(job.seconds, 3),
            "events_per_s": round(events / seconds),
            "broadcasts_received": sub.count,
            "peak_rss_mb": round(job.peak_rss / 2**20, 1),
        }

    # -- scenarios --------------------------------------------------------------------

    def ceilings(self) -> None:
        n = min(self.scale.ceiling_events, self.scale.events)
        topic = self.distinct_topic()
        sample = orjson.dumps(_sample_message())
        channel = "bench-ceiling"
        self.results["ceilings"] = {
            "kafka_consume_per_s": round(
                baseline.consume_rate(self.kafka.bootstrap, topic, [0], n)
            ),
            "redis_publish_pipelined_per_s": round(
                baseline.publish_rate(self.redis_url, channel, n, sample)
            ),
            "redis_publish_one_by_one_per_s": round(
                baseline.publish_one_by_one_rate(self.redis_url, channel, min(n, 5_000), sample)
            ),
            "message_bytes": len(sample),
        }

    def baseline(self) -> None:
        n = min(self.scale.baseline_events, self.scale.events)
        rate = baseline.naive_rate(
            self.kafka.bootstrap, self.distinct_topic(), n, self.redis_url, "bench-naive"
        )
        self.results["baseline"] = {"events": n, "events_per_s": round(rate)}

    def distinct(self) -> None:
        self.results["distinct"] = self.drain(self.distinct_topic(), self.scale.events, "bench-d")

    def hot(self) -> None:
        s = self.scale
        topic = self.topic("hot", lambda: zipf_events(s.events, s.hot_tiles, self.start_ms))
        out = self.drain(topic, s.events, "bench-h")
        out["tiles"] = s.hot_tiles
        out["events_per_broadcast"] = round(s.events / max(out["broadcasts_received"], 1), 1)
        self.results["hot"] = out

    def latency(self) -> None:
        from confluent_kafka import Producer

        runs = []
        for rate in self.scale.rates:
            topic = self.kafka.new_topic(f"bench-paced-{rate}")
            channel = f"bench-paced-{rate}"
            producer = Producer({"bootstrap.servers": self.kafka.bootstrap, "linger.ms": 1})
            job = RunningJob(["--source", self.kafka.url(topic), "--sink", self.sink(channel),
                              "--dlq", "file:/dev/null"])  # fmt: skip
            with Subscriber(self.redis_url, channel, timing=True) as sub:
                # Ready when a warm-up event comes back; its tiles are far from the run's.
                warm = 0
                while sub.count == 0:
                    if job.proc.poll() is not None:
                        raise SystemExit(f"job exited: {job.stop().stderr[-2000:]}")
                    producer.produce(topic, _paced(10_000_000 + warm))
                    producer.flush(5)
                    warm += 1
                    sub.wait_for(1, timeout=1.0)
                time.sleep(0.5)
                sub.count, sub.latencies_ms = 0, []
                sent, elapsed = _pace(producer, topic, rate, self.scale.paced_seconds)
                got_all = sub.wait_for(sent, timeout=30)
                stats = job.stop()
            lat = sub.latencies_ms
            runs.append({
                "target_events_per_s": rate,
                "produced": sent,
                "produced_per_s": round(sent / elapsed),
                "received": sub.count,
                "all_received": got_all,
                "p50_ms": round(percentile(lat, 50), 1),
                "p95_ms": round(percentile(lat, 95), 1),
                "p99_ms": round(percentile(lat, 99), 1),
                "max_ms": round(max(lat, default=float("nan")), 1),
                "peak_rss_mb": round(stats.peak_rss / 2**20, 1),
            })  # fmt: skip
        self.results["latency"] = runs

    def state(self) -> None:
        """RSS per tracked tile: N distinct tiles against the same N events on 1,000 tiles."""
        n = self.scale.state_tiles
        args = ["--sink", "file:/dev/null", "--dlq", "file:/dev/null", "--state-ttl", "1h"]
        many = write_jsonl(self.tmp / "state-many.jsonl", distinct_events(n, self.start_ms))
        few = write_jsonl(self.tmp / "state-few.jsonl", zipf_events(n, 1000, self.start_ms, s=0))
        rss_many = run_job(["--source", f"file:{many}", *args]).peak_rss
        rss_few = run_job(["--source", f"file:{few}", *args]).peak_rss
        many.unlink()
        few.unlink()
        self.results["state"] = {
            "tiles": n,
            "peak_rss_mb": round(rss_many / 2**20, 1),
            "peak_rss_1000_tiles_mb": round(rss_few / 2**20, 1),
            "bytes_per_tile": round((rss_many - rss_few) / (n - 1000)),
        }

    def fanout(self) -> None:
        from bench.cover import load
        from tilepipe.cover import cover_range

        geom = load()
        z = self.scale.fanout_zoom
        cover_range(geom, 0, min(z, 6), 0.0, 10**10, None)  # warm-up
        best = float("inf")
        tiles = 0
        for _ in range(3):
            t0 = time.perf_counter()
            cover = cover_range(geom, 0, z, 0.0, 10**10, None)
            best = min(best, time.perf_counter() - t0)
            tiles = len(cover.tiles)
        self.results["fanout"] = {
            "zooms": f"0-{z}",
            "tiles": tiles,
            "seconds": round(best, 4),
            "tiles_per_s": round(tiles / best),
        }

    def workers(self) -> None:
        n = self.scale.worker_events
        topic = self.topic("two", lambda: distinct_events(n, self.start_ms, offset=1 << 22), 2)
        one = self.drain(topic, n, "bench-w1", workers=1)
        two = self.drain(topic, n, "bench-w2", workers=2)
        self.results["workers"] = {
            "events": n,
            "partitions": 2,
            "one_events_per_s": one["events_per_s"],
            "two_events_per_s": two["events_per_s"],
            "ratio": round(two["events_per_s"] / one["events_per_s"], 2),
        }


def _sample_message() -> dict[str, Any]:
    """A typical ``tile_updated``, for the publish ceilings."""
    from tilepipe.messages import tile_updated
    from tilepipe.records import TileUpdate

    now = int(time.time() * 1000)
    update = TileUpdate(
        key="14:12020213031203", tms="WebMercatorQuad", z=14, x=8621, y=5630, version=42,
        objects=(), hash="9f86d081884c7d65", ts_ms=now, oldest_ts_ms=now,
        oldest_received_ms=now, events=1, records=1, layers=None,
    )  # fmt: skip
    return tile_updated(update)


def _paced(i: int) -> bytes:
    return tile_event(i, i % (1 << 28), 1, int(time.time() * 1000))


def _pace(producer: Any, topic: str, rate: int, seconds: float) -> tuple[int, float]:
    """Produce ``rate`` events/s for ``seconds``, each stamped with its produce time."""
    tick = 0.01
    sent = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            producer.produce(topic, _paced(sent))
            sent += 1
        producer.poll(0)
        time.sleep(max(0.0, tick - (time.perf_counter() - t0 - elapsed)))
    producer.flush(30)
    return sent, time.perf_counter() - t0


# -- report ---------------------------------------------------------------------------


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    base = r.get("baseline", {}).get("events_per_s")
    ceil = r.get("ceilings", {})
    floor = min(ceil.get("kafka_consume_per_s", 0), ceil.get("redis_publish_pipelined_per_s", 0))
    for name in ("distinct", "hot"):
        rate = r.get(name, {}).get("events_per_s")
        if rate and base:
            out[f"{name}_vs_baseline"] = round(rate / base, 1)
        if rate and floor:
            out[f"{name}_vs_ceiling"] = round(rate / floor, 2)
    if "workers" in r:
        out["two_vs_one_worker"] = r["workers"]["ratio"]
    return out


def _rows(r: dict[str, Any]) -> list[tuple[str, int, Any, Any, Any, Any]]:
    """(label, events/s, p50, p95, p99, peak RSS MB) for each measured rate."""
    rows: list[tuple[str, int, Any, Any, Any, Any]] = []
    if "distinct" in r:
        x = r["distinct"]
        rows.append(
            ("distinct tiles, Kafka → Redis", x["events_per_s"], "-", "-", "-", x["peak_rss_mb"])
        )
    if "hot" in r:
        x = r["hot"]
        label = f"hot tiles ({x['events_per_broadcast']} events/broadcast)"
        rows.append((label, x["events_per_s"], "-", "-", "-", x["peak_rss_mb"]))
    for x in r.get("latency", []):
        label = f"steady {x['target_events_per_s']:,}/s, produced → received"
        rows.append(
            (label, x["produced_per_s"], x["p50_ms"], x["p95_ms"], x["p99_ms"], x["peak_rss_mb"])
        )
    if "baseline" in r:
        rows.append(("naive asyncio baseline", r["baseline"]["events_per_s"], "-", "-", "-", "-"))
    if "ceilings" in r:
        c = r["ceilings"]
        rows.append(("ceiling: Kafka consume(1000)", c["kafka_consume_per_s"], "-", "-", "-", "-"))
        label = "ceiling: Redis PUBLISH, pipelined 1000"
        rows.append((label, c["redis_publish_pipelined_per_s"], "-", "-", "-", "-"))
        label = "Redis PUBLISH one by one"
        rows.append((label, c["redis_publish_one_by_one_per_s"], "-", "-", "-", "-"))
    if "workers" in r:
        w = r["workers"]
        rows.append(("1 worker, 2 partitions", w["one_events_per_s"], "-", "-", "-", "-"))
        rows.append(("2 workers, 2 partitions", w["two_events_per_s"], "-", "-", "-", "-"))
    return rows


def _targets(r: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    t, ratios = TARGETS, r["ratios"]
    out: list[tuple[str, Any, bool]] = []
    for name in ("distinct", "hot"):
        if name in r:
            goal, v = t[f"{name}_events_per_s"], r[name]["events_per_s"]
            out.append((f"{name} ≥ {goal:,} events/s", f"{v:,}", v >= goal))
    if "distinct_vs_baseline" in ratios:
        v = ratios["distinct_vs_baseline"]
        out.append((f"distinct ≥ {t['vs_baseline']:g} x baseline", f"{v} x", v >= t["vs_baseline"]))
    for x in r.get("latency", []):
        if x["target_events_per_s"] == 5000:
            goal, v = t["p99_ms_at_5000"], x["p99_ms"]
            out.append((f"p99 ≤ {goal} ms at 5,000 events/s", f"{v} ms", v <= goal))
    if "state" in r:
        goal, v = t["bytes_per_tile"], r["state"]["bytes_per_tile"]
        out.append((f"≤ {goal} bytes per tracked tile", v, v <= goal))
    return out


def report(r: dict[str, Any]) -> list[str]:
    lines = [f"tilepipe benchmark, scale {r['scale']}, {r['machine']['summary']}", ""]
    fmt = "{:<46} {:>10} {:>8} {:>8} {:>8} {:>7}"
    lines.append(fmt.format("scenario", "events/s", "p50 ms", "p95 ms", "p99 ms", "RSS MB"))
    for label, rate, *rest in _rows(r):
        lines.append(fmt.format(label, f"{rate:,}", *rest))
    lines.append("")
    if "state" in r:
        s = r["state"]
        lines.append(
            f"state: {s['tiles']:,} tiles tracked, peak RSS {s['peak_rss_mb']} MB,"
            f" {s['bytes_per_tile']} bytes per tile"
        )
    if "fanout" in r:
        f = r["fanout"]
        lines.append(
            f"fan-out: polygon cover z{f['zooms']}, {f['tiles']:,} tiles in"
            f" {f['seconds']} s = {f['tiles_per_s']:,} tiles/s"
        )
    if r["ratios"]:
        lines.append("ratios: " + ", ".join(f"{k} {v}" for k, v in r["ratios"].items()))
    lines += ["", "targets:"]
    for label, value, ok in _targets(r):
        lines.append(f"  {label:<40} {value!s:>10}  {'meets' if ok else 'MISSES'}")
    return lines


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "summary": f"{cores} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    p.add_argument(
        "--json",
        type=Path,
        default=Path("bench/results/latest.json"),
        help="where to write the results (default: %(default)s)",
    )
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {','.join(SCENARIOS)}")

    from tests.support.services import start_kafka, start_redis

    scale = SCALES[args.scale]
    results: dict[str, Any] = {"scale": args.scale, "config": asdict(scale), "machine": machine()}
    t_all = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="tilepipe-bench-") as tmp,
        start_kafka() as kafka,
        start_redis(use_existing=False) as redis_url,
    ):
        bench = Bench(scale, kafka, redis_url, Path(tmp))
        for name in (s for s in SCENARIOS if s in chosen):
            t0 = time.perf_counter()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            getattr(bench, name)()
            took = time.perf_counter() - t0
            print(
                f"[bench] {name}: {took:.1f} s {json.dumps(bench.results[name])}", file=sys.stderr
            )
        results.update(bench.results)
    results["ratios"] = _ratios(results)
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    print("\n".join(report(results)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
