"""The benchmark suite at its tiny size, so it never rots; no figure is asserted on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_suite_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "tiny", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    # Every event of the pre-loaded runs came out: one broadcast per distinct tile,
    # and at most one per hot tile per release.
    assert r["distinct"]["broadcasts_received"] == r["distinct"]["events"]
    assert 0 < r["hot"]["broadcasts_received"] < r["hot"]["events"]
    for run in r["latency"]:
        assert run["all_received"] and run["received"] == run["produced"] > 0
    for name in ("distinct", "hot", "baseline"):
        assert r[name]["events_per_s"] > 0
    assert r["ceilings"]["kafka_consume_per_s"] > 0
    assert r["state"]["tiles"] == 5000
    assert r["fanout"]["tiles"] > 0
    assert r["workers"]["one_events_per_s"] > 0 and r["workers"]["two_events_per_s"] > 0
    assert "targets:" in done.stdout and "distinct_vs_baseline" in r["ratios"]


def test_gateway_bench_runs_and_its_reconnect_storm_loses_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--connections", "40", "--tiles", "5",
         "--pool", "100", "--rate", "200", "--storm-rate", "20", "--storm-updates", "100",
         "--seconds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    storm = [line for line in done.stdout.splitlines() if line.startswith("| reconnect storm")]
    assert storm and " 0 lost, 0 backwards" in storm[0], done.stdout
    assert "| figure | measured | target | anchor |" in done.stdout
