"""Render workers: tiles rendered and committed per second with the builtin renderer.

    python -m bench.render                          # 1, 2, 4 threads; 2 processes; dir store
    python -m bench.render --jobs 2000 --store mbtiles --threads 1,4 --processes 2

Each run gets a throwaway PostgreSQL database (the machine's, trust auth, or
``$TILEPIPE_TEST_POSTGRES``), a private Redis key prefix and a fresh store; the
queue is pre-loaded, then ``tilepipe render-worker`` processes (``--workers``
threads each) drain it. A job counts when the ledger says COMPLETED, i.e.
after the tile was staged, validated, moved into place and recorded.
The clock starts when the queue is loaded, after the workers have started
(imports and connections are not counted).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from render.jobs import RenderJob
from render.ledger import Ledger
from render.queue import RenderQueue
from tests.support.services import start_redis, throwaway_database


def run_once(
    redis_url: str, dsn: str, store: str, jobs: int, processes: int, threads: int
) -> float:
    """Tiles per second for one configuration."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    queue = RenderQueue(client, prefix)
    queue.ensure_group()
    ledger = Ledger(dsn)
    ledger.create_schema()
    ledger.conn.execute("TRUNCATE render_jobs, render_job_history, render_tiles")
    batch = [
        RenderJob("WebMercatorQuad", 14, 8000 + i % 100, 5000 + i // 100, 1) for i in range(jobs)
    ]
    env = {
        **os.environ,
        "TILEPIPE_RENDER_REDIS": redis_url,
        "TILEPIPE_RENDER_PREFIX": prefix,
        "TILEPIPE_RENDER_LEDGER": dsn,
        "TILEPIPE_RENDER_STORE": store,
        "TILEPIPE_RENDER_WORKERS": str(threads),
        "TILEPIPE_RENDER_POLL": "100ms",
        "TILEPIPE_LOG_LEVEL": "WARNING",
        "TILEPIPE_RENDER_LOG_LEVEL": "WARNING",
    }
    # Workers start (imports, connections) on an empty queue; the clock starts at the enqueue.
    procs = [
        subprocess.Popen([sys.executable, "-m", "tilepipe", "render-worker"], env=env)
        for _ in range(processes)
    ]
    try:
        time.sleep(3.0)
        started = time.perf_counter()
        queue.enqueue(batch)
        while ledger.counts()["COMPLETED"] < jobs:
            time.sleep(0.02)
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a render-worker exited with {p.returncode}")
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        client.delete(queue.stream, queue.retry_key, queue.dead_key)
        ledger.close()
    return jobs / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--store", choices=("dir", "mbtiles"), default="dir")
    ap.add_argument("--threads", default="1,2,4", help="threads per process to try")
    ap.add_argument("--processes", default="1,2", help="processes to try")
    args = ap.parse_args(argv)
    print(f"# {os.cpu_count()} CPUs, {args.jobs} jobs per run, builtin PNG renderer")
    print("processes threads  tiles/s")
    with start_redis() as redis_url, throwaway_database() as dsn:
        for processes in (int(p) for p in args.processes.split(",")):
            for threads in (int(t) for t in args.threads.split(",")):
                with tempfile.TemporaryDirectory(prefix="tilepipe-bench-") as tmp:
                    store = (f"dir:{tmp}/tiles" if args.store == "dir"
                             else f"mbtiles:{Path(tmp) / 'tiles.mbtiles'}")  # fmt: skip
                    rate = run_once(redis_url, dsn, store, args.jobs, processes, threads)
                print(f"{processes:9d} {threads:7d} {rate:8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
