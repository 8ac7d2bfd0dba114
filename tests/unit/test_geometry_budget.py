"""Geometry repair has a time and size budget wherever it runs.

The review's star polygon (each edge crosses most others) made ``make_valid``
run for minutes (6.2 s at 101 vertices, 225 s at 301) in the validate stage,
the ingress event loop and the job API. Now a repair is refused once it takes
over the budget or its result is over the vertex cap, and the ingress checks
records in a thread, so ``/healthz`` answers while a heavy request is checked.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from starlette.testclient import TestClient

from ingress.app import create_app
from ingress.intake import check_records, rejection_result
from operators.validate import ValidationConfig, validate_record
from tests.support.events import NOW_MS
from tests.support.fakes import FakeProducer, make_ingress
from tilepipe.client import signed_headers
from tilepipe.geometry import REPAIR_BUDGET_S, GeometryError, check_geometry
from tilepipe.records import DeadLetter, FanOutEvent, RawRecord

# A generous ceiling, not a benchmark: the budget, a worker start and slack for a
# loaded 2-core machine. Before the fix the 151-vertex star alone took ~24 s.
CEILING_S = REPAIR_BUDGET_S + 8.0


def star(n: int) -> Polygon:
    """The review's reproduction: vertex i at angle 2π·(i·k mod n)/n, k = n // 2."""
    k = n // 2
    pts = [(i * k % n) * 2 * math.pi / n for i in range(n)]
    return Polygon([(13 + 0.01 * math.cos(a), 52 + 0.01 * math.sin(a)) for a in pts])


def feature(geom: Any, event_id: str = "f1") -> dict[str, Any]:
    return {"event_id": event_id, "kind": "feature", "version": 1, "source": "unit",
            "ts": NOW_MS, "feature_id": event_id, "op": "upsert",
            "geometry": shapely.geometry.mapping(geom) if not isinstance(geom, dict) else geom,
            "maxzoom": 10}  # fmt: skip


def test_a_star_polygon_is_refused_within_the_repair_budget() -> None:
    started = time.monotonic()
    with pytest.raises(GeometryError) as e:
        check_geometry(star(151), 100_000, repair=True)
    assert time.monotonic() - started < CEILING_S
    assert e.value.reason == "invalid_geometry"
    assert "within budget" in e.value.message and "Self-intersection" in e.value.message


def test_a_repair_whose_result_is_over_the_vertex_cap_is_refused() -> None:
    shape = star(21)  # repairs in ~0.1 s into ~400 vertices
    assert shapely.get_num_coordinates(shapely.make_valid(shape)) > 100
    with pytest.raises(GeometryError) as e:
        check_geometry(shape, 100, repair=True)
    assert e.value.reason == "invalid_geometry" and "over the 100 allowed" in e.value.message


def test_ordinary_repairs_still_happen_and_the_worker_is_reused() -> None:
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    fixed = check_geometry(bowtie, 100, repair=True)
    assert fixed.is_valid and fixed.equals(shapely.make_valid(bowtie))
    nested = MultiPolygon([box(-i, -i, i + 0.5, i + 0.5) for i in range(1, 20)])
    assert check_geometry(nested, 1000, repair=True).equals(shapely.make_valid(nested))
    with pytest.raises(GeometryError, match="Self-intersection"):
        check_geometry(bowtie, 100, repair=False)


def test_the_validate_stage_dead_letters_the_star_within_the_budget() -> None:
    raw = RawRecord(json.dumps(feature(star(151))).encode(), {"offset": 1}, NOW_MS)
    started = time.monotonic()
    out = validate_record(raw, ValidationConfig())
    assert time.monotonic() - started < CEILING_S
    assert isinstance(out, DeadLetter) and out.reason == "invalid_geometry", out
    good = validate_record(RawRecord(json.dumps(feature(box(13, 52, 13.1, 52.1))).encode(),
                                     {"offset": 2}, NOW_MS), ValidationConfig())  # fmt: skip
    assert isinstance(good, FanOutEvent)


def test_the_ingress_answers_healthz_while_a_heavy_request_is_checked() -> None:
    producer = FakeProducer()
    body = json.dumps(feature(star(151))).encode()
    answer: dict[str, Any] = {}
    with TestClient(create_app(make_ingress(producer))) as client:

        def post() -> None:
            started = time.monotonic()
            headers = {"Content-Type": "application/json"} | signed_headers(b"new-secret", body)
            r = client.post("/v1/events", content=body, headers=headers)
            answer.update(status=r.status_code, doc=r.json(), took=time.monotonic() - started)

        heavy = threading.Thread(target=post)
        heavy.start()
        time.sleep(0.3)  # the request is being checked by now
        health = client.get("/healthz")
        answered_meanwhile = heavy.is_alive()
        heavy.join(60)
    assert health.status_code == 200
    assert answered_meanwhile, "/healthz waited for the heavy request"
    assert answer["status"] == 422 and answer["took"] < CEILING_S, answer
    assert answer["doc"]["results"][0]["reason"] == "invalid_geometry"
    assert producer.sent == []


def test_the_answer_for_a_refused_repair_does_not_repair_again_on_the_event_loop(
    monkeypatch,
) -> None:
    import tilepipe.geometry

    config = ValidationConfig()
    [checked] = check_records([json.dumps(feature(star(151))).encode()], config, NOW_MS)
    assert checked.rejection is not None and checked.rejection.reason == "invalid_geometry"
    calls = []
    real = tilepipe.geometry.make_valid_within
    monkeypatch.setattr(
        tilepipe.geometry, "make_valid_within", lambda *a: calls.append(a) or real(*a)
    )
    result = rejection_result(checked, config.geometry)  # what the event loop runs
    assert result["status"] == 422 and result["reason"] == "invalid_geometry"
    assert calls == []
