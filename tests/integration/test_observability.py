"""The dashboard and the alert rules, evaluated by a real Prometheus scraping a real job.

Prometheus (Debian's ``prometheus`` package: ``apt-get install prometheus``)
scrapes ``tilepipe run`` while it reads a two-partition topic carrying valid,
duplicate, stale, late and invalid records into Redis, and, as a second scrape
job, a ``tilepipe render-worker`` (real Redis queue, PostgreSQL ledger, an http
renderer on a local tile server) working through jobs at several zooms, one
that fails until it is DEAD and one past its deadline (DEGRADED). Every PromQL
expression of the dashboard must then parse and return at least one series,
every metric it names must be exported by one of the two processes, and every
alert rule must load and evaluate without error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from websockets.sync.client import connect

from render.jobs import RenderJob
from render.ledger import Ledger
from render.queue import RenderQueue
from tests.integration.test_dataflow import Job, key_of, tile_event
from tests.support import observability as obs
from tests.support.gateway import GatewayProcess
from tests.support.services import RedisSubscriber, free_port
from tests.support.tileserver import TileServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="needs Debian's prometheus binary (apt-get install prometheus)",
    ),
]

SCRAPE = "1s"


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, str], rules: Path) -> None:
        """``targets``: scrape job name -> ``host:port``."""
        self.port = free_port()
        config = {
            "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [target]}]}
                for name, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query answers 400 with the reason
            return json.loads(e.read())

    def query(self, expr: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api("query", query=expr)
        return result

    def wait_until(self, expr: str, predicate, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                res = self.query(expr)
                if res.get("status") == "success" and predicate(res["data"]["result"]):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Prometheus never saw {expr}: {res}"
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def feed(now: int) -> list[bytes]:
    events = []
    for x in range(12):  # 12 tiles x 4 versions, a little out of order
        events += [tile_event(f"o{x}-v{v}", v, x, now + v * 10) for v in (2, 1, 4, 3)]
    events += [events[0], events[5]]  # duplicates
    events += [b"{nope", b"[1]", tile_event("range", 1, x=9, ts=now, z=1)]  # dead letters
    return events


#: Render jobs for the worker: (z, x, y) completed; z=3 fails upstream until DEAD; one
#: job is past its deadline (DEGRADED); tiles at z=14 are in the Redis tile cache and the
#: HTTP cache (hits); the tile server is also the HTTP cache that answers PURGE.
RENDERED = [(z, 100 * z + i, 50 * z + i) for z in (10, 12, 14) for i in range(3)]
FAILING_ZOOM = 3


def render_jobs(now: int) -> list[RenderJob]:
    jobs = [RenderJob("WebMercatorQuad", z, x, y, 1, enqueued_ms=now) for z, x, y in RENDERED]
    jobs.append(RenderJob("WebMercatorQuad", FAILING_ZOOM, 1, 2, 1, enqueued_ms=now))
    jobs.append(RenderJob("WebMercatorQuad", 16, 5, 5, 1, enqueued_ms=now, deadline_ms=now - 1))
    return jobs


class RenderWorker:
    """``tilepipe render-worker`` on a throwaway prefix, rendering from ``upstream``."""

    def __init__(self, redis_url: str, dsn: str, upstream: str, tiles: Path, channel: str):
        self.prefix = f"obs-{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()
        self.log = (tiles.parent / "render-worker.log").open("w+b")  # a pipe could fill up
        env = {
            **os.environ,
            "TILEPIPE_RENDER_LEDGER": dsn,
            "TILEPIPE_RENDER_PREFIX": self.prefix,
            "TILEPIPE_RENDER_POLL": "100ms",
            "TILEPIPE_RENDER_MAX_ATTEMPTS": "2",
            "TILEPIPE_RENDER_RETRY_INITIAL": "100ms",
            "TILEPIPE_RENDER_RETRY_MAX": "200ms",
            "TILEPIPE_RENDER_TIMEOUT": "5s",
            "TILEPIPE_RENDER_BREAKER_THRESHOLD": "100",
            "TILEPIPE_RENDER_CACHE_KEY": f"{self.prefix}:cache:{{z}}:{{x}}:{{y}}",
            "TILEPIPE_RENDER_PURGE_URL": f"{upstream}/{{z}}/{{x}}/{{y}}.png",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tilepipe", "render-worker", "--redis", redis_url,
             "--renderer", f"http:{upstream}/{{z}}/{{x}}/{{y}}.png",
             "--store", f"dir:{tiles}", "--workers", "2",
             "--metrics-port", str(self.metrics_port),
             "--broadcast", f"{redis_url}?channel={channel}&prefix={self.prefix}"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        self.client = redis.Redis.from_url(redis_url)
        self.queue = RenderQueue(self.client, self.prefix)
        self.queue.ensure_group()

    def stop(self) -> tuple[int, str]:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.log.seek(0)
        err = self.log.read().decode()
        self.log.close()
        return self.proc.returncode, err


def wait_for_ledger(dsn: str, want: dict[str, int], timeout: float = 60) -> None:
    ledger = Ledger(dsn)
    try:
        deadline = time.monotonic() + timeout
        while (counts := ledger.counts()) and any(counts[s] < n for s, n in want.items()):
            assert time.monotonic() < deadline, f"ledger {counts}, want {want}"
            time.sleep(0.1)
    finally:
        ledger.close()


def scrape_names(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return obs.exported_names(r.read().decode())


def test_every_dashboard_query_and_alert_rule_works_on_a_running_job(
    kafka, redis_url, redis_client, channel, postgres_dsn, tmp_path
):  # redis_client: a flushed database, so no version stored by an earlier run suppresses ours
    topic = kafka.new_topic("obs", partitions=2)
    dlq = kafka.new_topic("obs-dlq")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": obs.rule_groups()}))
    ledger = Ledger(postgres_dsn)
    ledger.create_schema()
    ledger.conn.execute("TRUNCATE render_jobs, render_job_history, render_tiles")
    ledger.close()
    now = int(time.time() * 1000)
    upstream = TileServer(failing_zooms={FAILING_ZOOM})
    with RedisSubscriber(redis_url, channel) as sub:
        job = Job("--source", kafka.url(topic), "--sink", f"{redis_url}?channel={channel}",
                  "--dlq", kafka.url(dlq), env={"TILEPIPE_KAFKA_LAG_INTERVAL": "1s"})  # fmt: skip
        worker = RenderWorker(redis_url, postgres_dsn, upstream.url, tmp_path / "tiles",
                              f"{channel}:render")  # fmt: skip
        gateway = GatewayProcess(f"{redis_url}?channel={channel}")
        gateway.wait_ready()
        # A map client showing the fed tiles, so the gateway row has deliveries to show.
        client = connect(gateway.ws_url, compression=None)
        client.send(json.dumps({"type": "track", "tiles": [f"15/{x}/10000" for x in range(12)]}))
        while json.loads(client.recv(timeout=10))["type"] != "live":
            pass
        prom = Prometheus(
            tmp_path,
            {"tilepipe-metrics": f"127.0.0.1:{job.metrics_port}",
             "tilepipe-render": f"127.0.0.1:{worker.metrics_port}",
             "tilepipe-gateway": f"127.0.0.1:{gateway.port}"},
            rules,
        )  # fmt: skip
        try:
            for z, x, y in RENDERED[-3:]:  # cached: these invalidations are hits
                redis_client.set(f"{worker.prefix}:cache:{z}:{x}:{y}", b"old tile")
                upstream.cached.add(f"/{z}/{x}/{y}.png")
            jobs = render_jobs(now)
            assert all(worker.queue.enqueue(jobs))
            kafka.produce(topic, feed(now), key=key_of)
            sub.wait_for(12, timeout=60)
            time.sleep(1.5)  # behind every watermark now: one stale, one late and applied
            kafka.produce(topic, [tile_event("old", 1, 0, now),
                                  tile_event("o1-v9", 9, 1, now)], key=key_of)  # fmt: skip
            sub.wait_for(13, timeout=30)
            wait_for_ledger(postgres_dsn,
                            {"COMPLETED": len(RENDERED), "DEAD": 1, "DEGRADED": 1})  # fmt: skip
            exported = {"job": scrape_names(job.metrics_port),
                        "render worker": scrape_names(worker.metrics_port),
                        "gateway": scrape_names(gateway.port)}  # fmt: skip
            prom.wait_until('tilepipe_gateway_delivered_total{job="tilepipe-gateway"}',
                            lambda r: r and float(r[0]["value"][1]) >= 12)  # fmt: skip
            # Enough samples after the last event for every rate window to hold two. (The
            # worker exports the dataflow's counters too, at zero: it shares the Redis sink.)
            prom.wait_until(
                'tilepipe_events_total{job="tilepipe-metrics", outcome="stale"}',
                lambda r: r and r[0]["value"][1] == "1",
            )
            prom.wait_until('tilepipe_render_jobs_total{job="tilepipe-render", state="DEAD"}',
                            lambda r: r and r[0]["value"][1] == "1")  # fmt: skip
            prom.wait_until('tilepipe_render_jobs_total{job="tilepipe-render", state="COMPLETED"}',
                            lambda r: r and r[0]["value"][1] == str(len(RENDERED)))  # fmt: skip
            prom.wait_until('count_over_time(tilepipe_events_in_total{job="tilepipe-metrics"}[10s])',
                            lambda r: r and float(r[0]["value"][1]) >= 4)  # fmt: skip
            prom.wait_until("count_over_time(tilepipe_render_queue_depth[10s])",
                            lambda r: r and float(r[0]["value"][1]) >= 4)  # fmt: skip
            ready = urllib.request.urlopen(f"http://127.0.0.1:{job.metrics_port}/readyz").status

            problems = []
            doc = obs.dashboard()
            for where, expr in obs.dashboard_queries(doc):
                names = obs.metric_names(expr)
                if not any(names <= e for e in exported.values()):
                    problems.append(f"{where}: neither the job, the render worker nor the"
                                    f" gateway exports all of {sorted(names)}")  # fmt: skip
                res = prom.query(obs.grafana_to_promql(expr))
                if res.get("status") != "success":
                    problems.append(f"{where}: {res.get('error')}\n    {expr}")
                elif not res["data"]["result"]:
                    problems.append(f"{where}: no series\n    {expr}")
            for alert, expr in obs.rule_exprs():
                names = obs.metric_names(expr)
                if not any(names <= e for e in exported.values()):
                    problems.append(f"alert {alert}: neither the job nor the render worker"
                                    f" exports all of {sorted(names)}")  # fmt: skip
            deadline = time.monotonic() + 15
            while True:  # every rule evaluated at least once
                groups = prom.api("rules")["data"]["groups"]
                evaluated = {r["name"]: r for g in groups for r in g["rules"]}
                if all(r.get("health") != "unknown" for r in evaluated.values()):
                    break
                assert time.monotonic() < deadline, f"rules never evaluated: {evaluated}"
                time.sleep(0.5)
            assert set(evaluated) == {a for a, _ in obs.rule_exprs()}
            for name, r in evaluated.items():
                if r.get("health") != "ok" or r.get("lastError"):
                    problems.append(f"alert {name}: {r.get('health')} {r.get('lastError')}")
        finally:
            prom.stop()
            client.close()
            gateway.stop()
            code, _, err = job.stop()
            worker_code, worker_err = worker.stop()
            upstream.close()
    assert not problems, "\n".join(problems)
    assert ready == 200
    assert code == 0, err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    purged = {(r.path, r.status) for r in upstream.sent("PURGE")}
    assert {(f"/{z}/{x}/{y}.png", 200) for z, x, y in RENDERED[-3:]} <= purged
