"""Kafka → dataflow → render queue → render worker → tile store → then ``tile_updated``.

With rendering configured the dataflow enqueues each tile update as a render job
instead of broadcasting it, and the render worker broadcasts after the commit: a
client that refetches on ``tile_updated`` always finds the new tile in the store.
Real Tansu broker, Redis and PostgreSQL; the worker is the ``tilepipe render-worker``
command, and its ``/metrics`` are checked too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from tests.support.events import dumps, feature_event, tile_event
from tests.support.job import counts, run_to_end
from tests.support.services import free_port
from tilepipe.cover import cover_range
from tilepipe.geometry import from_geojson

pytestmark = pytest.mark.integration

SQUARE = {"type": "Polygon", "coordinates": [[
    [13.40, 52.51], [13.41, 52.51], [13.41, 52.52], [13.40, 52.52], [13.40, 52.51],
]]}  # fmt: skip


class StoreCheckingSubscriber(threading.Thread):
    """Records each ``tile_updated`` with whether its tile file existed when it arrived."""

    def __init__(self, url: str, channel: str, tiles: Path) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        while (m := self.pubsub.get_message(timeout=1)) is None or m["type"] != "subscribe":
            pass
        self.tiles = tiles
        self.got: list[tuple[dict[str, object], bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            m = self.pubsub.get_message(timeout=0.05)
            if m is None or m["type"] != "message":
                continue
            msg = json.loads(m["data"])
            path = self.tiles / str(msg["z"]) / str(msg["x"]) / f"{msg['y']}.png"
            self.got.append((msg, path.is_file()))

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            assert time.monotonic() < deadline, f"{len(self.got)} of {n} broadcasts: {self.got}"
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.pubsub.close()
        self.client.close()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("tilepipe_render_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_a_tile_and_a_feature_event_are_rendered_then_broadcast(
    kafka, redis_url: str, ledger_dsn: str, tmp_path: Path
) -> None:
    prefix = f"tp-{uuid.uuid4().hex[:8]}"
    channel = f"{prefix}:tile_updated"
    tiles = tmp_path / "tiles"
    topic = kafka.new_topic("render")
    now = int(time.time() * 1000)
    tile = tile_event(event_id="t-1", version=3, source="editor", ts=now, z=12, x=2200, y=1343)
    feature = feature_event(event_id="f-1", version=1, source="editor", ts=now + 1,
                            feature_id="park-9", geometry=SQUARE, minzoom=14,
                            maxzoom=15)  # fmt: skip
    kafka.produce(topic, [dumps(e) for e in (tile, feature)])
    cover = cover_range(from_geojson(SQUARE), 14, 15, 0.0, 10_000, 5.0)
    expected = {(12, 2200, 1343), *cover.tiles}
    assert 2 < len(expected) < 40

    port = free_port()
    env = {**os.environ, "TILEPIPE_RENDER_LEDGER": ledger_dsn, "TILEPIPE_RENDER_POLL": "100ms"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tilepipe", "render-worker", "--redis", redis_url,
         "--store", f"dir:{tiles}", "--workers", "2", "--metrics-port", str(port),
         "--broadcast", f"{redis_url}?channel={channel}&prefix={prefix}"],
        env={**env, "TILEPIPE_RENDER_PREFIX": prefix},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    sub = StoreCheckingSubscriber(redis_url, channel, tiles)
    sub.start()
    try:
        done = run_to_end("--source", kafka.url(topic), "--dlq", "file:/dev/null",
                          "--render-queue", f"{redis_url}?prefix={prefix}")  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert counts(done.stderr.decode())["broadcast"] == 2
        sub.wait_for(len(expected))
        time.sleep(0.3)
        metrics = scrape(port)
    finally:
        sub.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        finally:
            if worker.poll() is None:
                worker.kill()
        err = worker.stderr.read().decode() if worker.stderr else ""
    assert worker.returncode == 0, err[-3000:]

    got = {(m["z"], m["x"], m["y"]): m for m, _ in sub.got}
    assert len(got) == len(sub.got) == len(expected)  # each tile once
    assert set(got) == expected
    assert all(existed for _, existed in sub.got), "a broadcast came before its tile's commit"
    assert got[(12, 2200, 1343)]["version"] == 3
    assert {m["version"] for k, m in got.items() if k[0] >= 14} == {1}
    assert {m["coverage"] for k, m in got.items() if k[0] >= 14} == {cover.method}
    client = redis.Redis.from_url(redis_url)
    stored = json.loads(client.hget(f"{prefix}:tile:WebMercatorQuad:12:2200:1343", "msg"))
    assert stored["version"] == 3  # the latest message kept for late joiners, as without render
    client.close()

    n = len(expected)
    assert metrics['tilepipe_render_jobs_total{state="COMPLETED"}'] == n
    assert metrics['tilepipe_render_broadcasts_total{result="published"}'] == n
    assert metrics['tilepipe_render_latency_seconds_count{z="12"}'] == 1
    assert metrics["tilepipe_render_queue_depth"] == 0
    assert metrics["tilepipe_render_dead_letters"] == 0
    assert metrics["tilepipe_render_circuit_open"] == 0
