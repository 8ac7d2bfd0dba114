"""Budgets through the whole path, as a user runs it: file -> ``tilepipe run`` -> file.

A geometry that would take minutes to repair is dead-lettered within the repair
budget and the rest of the file goes on (review H2); a polar reading, a feature
with ``minzoom == maxzoom`` at z14 and a bulk import stay within the per-event
and per-batch tile budgets, recording their fallback (review H6).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from operators.enrich import MIN_TILES_PER_EVENT, EnrichConfig
from tests.support.events import NOW_MS, tile_event
from tests.support.job import summary, tilepipe, write_jsonl

pytestmark = pytest.mark.e2e


def feature(fid: str, geometry: dict, **extra) -> dict:
    return {"event_id": fid, "kind": "feature", "version": 1, "source": "e2e", "ts": NOW_MS,
            "feature_id": fid, "op": "upsert", "geometry": geometry, **extra}  # fmt: skip


def box(w: float, s: float, e: float, n: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def star(n: int) -> dict:
    k = n // 2
    pts = [[13 + 0.01 * math.cos(a), 52 + 0.01 * math.sin(a)]
           for a in ((i * k % n) * 2 * math.pi / n for i in range(n))]  # fmt: skip
    return {"type": "Polygon", "coordinates": [[*pts, pts[0]]]}


def run(tmp_path: Path, records: list) -> tuple[tuple[int, ...], list[dict], list[dict], float]:
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out, dlq = tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    started = time.monotonic()
    done = tilepipe("run", "--source", f"file:{src}", "--sink", f"file:{out}",
                    "--dlq", f"file:{dlq}", timeout=300)  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    dead = [json.loads(line) for line in dlq.read_text().splitlines()] if dlq.exists() else []
    return summary(done.stderr), lines, dead, took


def test_a_star_polygon_is_dead_lettered_within_the_budget_and_the_file_goes_on(tmp_path):
    records = [
        tile_event(event_id="t1", version=1, x=100, y=1343),
        feature("star", star(151)),
        tile_event(event_id="t2", version=1, x=101, y=1343),
    ]
    (total, broadcast, _, _, dead_n), lines, dead, took = run(tmp_path, records)
    assert (total, broadcast, dead_n) == (3, 2, 1)
    assert [d["reason"] for d in dead] == ["invalid_geometry"]
    assert "within budget" in dead[0]["error"]
    assert {(u["x"], u["y"]) for u in lines} == {(100, 1343), (101, 1343)}
    assert took < 120  # a generous ceiling: the star alone took ~24 s to repair before


def test_polar_readings_and_high_minzoom_stay_within_the_tile_budget(tmp_path):
    limit = EnrichConfig().max_tiles_per_event
    reading = {"event_id": "r1", "kind": "telemetry", "version": 1, "source": "e2e",
               "ts": NOW_MS, "sensor_id": "pole", "lat": 90.0, "lon": 13.0, "t": -30}  # fmt: skip
    deep = feature("alps", box(10, 45, 13.5, 48.5), minzoom=14, maxzoom=14)
    (total, broadcast, _, _, dead_n), lines, _, _ = run(tmp_path, [reading, deep])
    assert (total, broadcast, dead_n) == (2, 2, 0)
    by_coverage = Counter(u["coverage"] for u in lines)
    assert 0 < by_coverage["h3"] <= 12  # was 21,504: the whole top row at z10, z12, z14
    assert 0 < by_coverage["zoom_capped"] <= limit  # was 37,280 tiles at z14
    assert {u["z"] for u in lines if u["coverage"] == "zoom_capped"} == {13}


def test_a_bulk_import_is_held_to_the_batch_budget_and_every_record_is_broadcast(tmp_path):
    cfg = EnrichConfig()
    # 40 boxes of ~3,100 tiles each at z0-z14: 125k tile events in one source batch before.
    records = [feature(f"f{i}", box(-170 + i * 3.3, -60, -169.1 + i * 3.3, -59.4))
               for i in range(40)]  # fmt: skip
    (total, broadcast, _, _, dead_n), lines, _, _ = run(tmp_path, records)
    assert (total, broadcast, dead_n) == (40, 40, 0)
    assert len(lines) <= cfg.max_tiles_per_batch + len(records) * MIN_TILES_PER_EVENT
    coverage = Counter(u["coverage"] for u in lines)
    assert coverage["exact"] and coverage["zoom_capped"]  # the fallback, recorded
