"""The parts every benchmark scenario shares: events, the job as a process, a subscriber.

Events are wire-format v1 tile events at z14, encoded once up front so the
benchmark measures the job, not the generator. The job runs as a user runs
it (``python -m tilepipe run ...``) in its own process; its run time and peak
RSS come from its own summary line. The subscriber is a real Redis pub/sub client in a thread,
timing each ``tile_updated`` it receives.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from tilepipe.timeutil import parse_event_time

ZOOM = 14
SIDE = 1 << ZOOM


def tile_event(i: int, tile: int, version: int, ts_ms: int) -> bytes:
    return orjson.dumps(
        {"event_id": f"b{i}", "kind": "tile", "version": version, "source": "bench",
         "ts": ts_ms, "z": ZOOM, "x": tile % SIDE, "y": tile // SIDE}
    )  # fmt: skip


def distinct_events(n: int, start_ms: int, offset: int = 0) -> list[bytes]:
    """``n`` events on ``n`` different tiles: nothing to coalesce, every event broadcasts."""
    return [tile_event(offset + i, offset + i, 1, start_ms + i // 50) for i in range(n)]


def zipf_events(n: int, tiles: int, start_ms: int, s: float = 1.1, seed: int = 1) -> list[bytes]:
    """``n`` events on ``tiles`` tiles chosen with Zipf(s) weights: a few tiles get most."""
    rng = random.Random(seed)
    weights = [1.0 / (rank**s) for rank in range(1, tiles + 1)]
    cum = list(itertools.accumulate(weights))
    total = cum[-1]
    versions = [0] * tiles
    out = []
    for i in range(n):
        t = min(bisect.bisect_left(cum, rng.random() * total), tiles - 1)
        versions[t] += 1
        out.append(tile_event(i, t, versions[t], start_ms + i // 50))
    return out


def tile_key(value: bytes) -> bytes:
    """The Kafka key an upstream producer would use: one tile's events in one partition."""
    doc = orjson.loads(value)
    return f"{doc['z']}/{doc['x']}/{doc['y']}".encode()


# -- the job as a process -------------------------------------------------------------


@dataclass
class JobRun:
    seconds: float  # wall time of the process
    stderr: str

    @property
    def run_s(self) -> float:
        """The dataflow's own run time from the summary line: no imports, no pre-flight."""
        found = re.search(r"; ran ([0-9.]+) s", self.stderr)
        if found is None:
            raise SystemExit(f"no summary line in the job's output:\n{self.stderr[-2000:]}")
        return float(found.group(1))

    @property
    def peak_rss(self) -> int:
        """Peak RSS in bytes as the job measured it (summed over a cluster's processes)."""
        found = re.search(r"peak RSS ([0-9]+) MiB", self.stderr)
        if found is None:
            raise SystemExit(f"no peak RSS in the job's output:\n{self.stderr[-2000:]}")
        return int(found.group(1)) * 2**20


def _env() -> dict[str, str]:
    return {**os.environ, "TILEPIPE_PROGRESS_INTERVAL": "3600", "TILEPIPE_LOG_LEVEL": "WARNING"}


def run_job(args: Sequence[str], timeout: float = 1800) -> JobRun:
    """Run ``tilepipe run ARGS`` to completion; wall time and peak RSS of the process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilepipe", "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"job {' '.join(args)} still running after {timeout:.0f} s") from None
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"job {' '.join(args)} failed ({proc.returncode}):\n{err.decode()[-3000:]}"
        )
    return JobRun(seconds, err.decode())


class RunningJob:
    """A job started in the background, stopped with SIGTERM (as Kubernetes does)."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tilepipe", "run", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_env(),
        )

    def stop(self, timeout: float = 30) -> JobRun:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit(f"job did not stop within {timeout:.0f} s of SIGTERM") from None
        return JobRun(0.0, err.decode())


# -- a map client ---------------------------------------------------------------------


@dataclass
class Subscriber:
    """Counts ``tile_updated`` messages and, with ``timing``, their end-to-end latency.

    Latency is receive time minus the message's ``ts`` (the newest event time in it):
    for one event per tile, exactly "event produced → update received".
    """

    url: str
    channel: str
    timing: bool = False
    count: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    last_at: float = 0.0

    def __post_init__(self) -> None:
        self._client = redis.Redis.from_url(self.url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-subscriber")

    def __enter__(self) -> Subscriber:
        self._pubsub.subscribe(self.channel)
        deadline = time.monotonic() + 5
        while self._pubsub.get_message(timeout=0.1) is None and time.monotonic() < deadline:
            if self._pubsub.subscribed:
                break
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.05)
            if msg is None:
                continue
            now = time.time() * 1000
            if self.timing:
                sent = parse_event_time(orjson.loads(msg["data"])["ts"])
                self.latencies_ms.append(now - sent)
            self.count += 1
            self.last_at = time.monotonic()

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count >= count


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def write_jsonl(path: Path, events: Sequence[bytes]) -> Path:
    path.write_bytes(b"\n".join(events) + b"\n")
    return path
