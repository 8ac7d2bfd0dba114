"""The dashboard and the alert rules, evaluated by a real Prometheus scraping a real job.

Prometheus (Debian's ``prometheus`` package: ``apt-get install prometheus``)
scrapes ``tilepipe run`` while it reads a two-partition topic carrying valid,
duplicate, stale, late and invalid records into Redis. Every PromQL
expression of the dashboard must then parse and return at least one series,
and every alert rule must load and evaluate without error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_dataflow import Job, key_of, tile_event
from tests.support import observability as obs
from tests.support.services import RedisSubscriber, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="needs Debian's prometheus binary (apt-get install prometheus)",
    ),
]

SCRAPE = "1s"


class Prometheus:
    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "tilepipe-metrics", "static_configs": [{"targets": [target]}]}
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
            assert time.monotonic() < deadline, f"Prometheus never saw {expr}"
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


def test_every_dashboard_query_and_alert_rule_works_on_a_running_job(
    kafka, redis_url, redis_client, channel, tmp_path
):  # redis_client: a flushed database, so no version stored by an earlier run suppresses ours
    topic = kafka.new_topic("obs", partitions=2)
    dlq = kafka.new_topic("obs-dlq")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": obs.rule_groups()}))
    now = int(time.time() * 1000)
    with RedisSubscriber(redis_url, channel) as sub:
        job = Job("--source", kafka.url(topic), "--sink", f"{redis_url}?channel={channel}",
                  "--dlq", kafka.url(dlq), env={"TILEPIPE_KAFKA_LAG_INTERVAL": "1s"})  # fmt: skip
        prom = Prometheus(tmp_path, f"127.0.0.1:{job.metrics_port}", rules)
        try:
            kafka.produce(topic, feed(now), key=key_of)
            sub.wait_for(12, timeout=60)
            time.sleep(1.5)  # behind every watermark now: one stale, one late and applied
            kafka.produce(topic, [tile_event("old", 1, 0, now),
                                  tile_event("o1-v9", 9, 1, now)], key=key_of)  # fmt: skip
            sub.wait_for(13, timeout=30)
            with urllib.request.urlopen(
                f"http://127.0.0.1:{job.metrics_port}/metrics", timeout=5
            ) as r:
                exported = obs.exported_names(r.read().decode())
            # Enough samples after the last event for every rate window to hold two.
            prom.wait_until(
                'tilepipe_events_total{outcome="stale"}', lambda r: r and r[0]["value"][1] == "1"
            )
            prom.wait_until("count_over_time(tilepipe_events_in_total[10s])",
                            lambda r: r and float(r[0]["value"][1]) >= 4)  # fmt: skip
            ready = urllib.request.urlopen(f"http://127.0.0.1:{job.metrics_port}/readyz").status

            problems = []
            doc = obs.dashboard()
            for where, expr in obs.dashboard_queries(doc):
                missing = obs.metric_names(expr) - exported
                if missing:
                    problems.append(f"{where}: the job exports no {sorted(missing)}")
                res = prom.query(obs.grafana_to_promql(expr))
                if res.get("status") != "success":
                    problems.append(f"{where}: {res.get('error')}\n    {expr}")
                elif not res["data"]["result"]:
                    problems.append(f"{where}: no series\n    {expr}")
            for alert, expr in obs.rule_exprs():
                missing = obs.metric_names(expr) - exported
                if missing:
                    problems.append(f"alert {alert}: the job exports no {sorted(missing)}")
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
            code, _, err = job.stop()
    assert not problems, "\n".join(problems)
    assert ready == 200
    assert code == 0, err[-3000:]
