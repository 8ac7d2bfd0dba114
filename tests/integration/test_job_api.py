"""The job API on a running ingress, with real Redis, PostgreSQL and a pool of render
workers: a region job answers 202 with its location, the same idempotency key is the
same job, requests are signed, progress is reported while the workers render, the job
finishes with every tile in the store, and an oversized region records its fallback."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box

from render.pool import RenderPool
from render.settings import RenderSettings
from render.stores import DirectoryStore
from tests.support.ingress import IngressProcess
from tests.support.services import RedisSubscriber
from tilepipe.client import signed_headers
from tilepipe.cover import cover_range
from tilepipe.signing import SIGNATURE_HEADER

pytestmark = pytest.mark.integration

SECRET = b"jobs-s3cret-0123456789abcdef0123456789"
BBOX = [13.38, 52.50, 13.42, 52.53]


def call(
    base: str, method: str, target: str, doc: Any = None, sign: bool = True
) -> tuple[int, dict[str, str], Any]:
    body = b"" if doc is None else json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"} if doc is not None else {}
    if sign:
        headers |= signed_headers(SECRET, body, method=method, target=target)
    req = urllib.request.Request(base + target, body or None, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_a_region_job_reports_progress_and_finishes(
    kafka, redis_url: str, ledger_dsn: str, tmp_path: Path
) -> None:
    prefix = f"tp-{uuid.uuid4().hex[:8]}"
    channel = f"{prefix}:tile_updated"
    env = {"TILEPIPE_RENDER_LEDGER": ledger_dsn, "TILEPIPE_RENDER_REDIS": redis_url,
           "TILEPIPE_RENDER_PREFIX": prefix, "TILEPIPE_INGRESS_JOBS_MAX_TILES": "200"}  # fmt: skip
    expected = cover_range(box(*BBOX), 12, 15)
    assert expected.method == "exact" and 10 < len(expected.tiles) < 200
    request = {"operation": "rerender_region", "bbox": BBOX, "minzoom": 12, "maxzoom": 15,
               "idempotency_key": "style-v2-mitte"}  # fmt: skip
    with IngressProcess(kafka.url(kafka.new_topic("jobs")), secrets=f"k1:{SECRET.decode()}",
                        env=env) as ingress:  # fmt: skip
        base = ingress.url
        status, headers, doc = call(base, "POST", "/v1/jobs", request)
        assert status == 202, doc
        job_id = doc["id"]
        assert headers["location"] == f"/v1/jobs/{job_id}" and doc["created"] is True
        assert doc["state"] == "QUEUED"
        assert doc["progress"] == {"done": 0, "total": len(expected.tiles),
                                   "by_state": {"QUEUED": len(expected.tiles)}}  # fmt: skip
        assert doc["cover"] == {"method": "exact", "zoom": 15}

        again = call(base, "POST", "/v1/jobs", request)
        assert again[0] == 202 and again[2]["id"] == job_id and again[2]["created"] is False

        assert call(base, "GET", f"/v1/jobs/{job_id}", sign=False)[0] == 401
        status, _, bad = call(base, "POST", "/v1/jobs", {**request, "bbox": None})
        assert status == 422 and "bbox or geometry" in bad["message"]
        assert call(base, "GET", "/v1/jobs/rj_nope")[0] == 404

        settings = RenderSettings(
            redis=redis_url, prefix=prefix, ledger=ledger_dsn, store=f"dir:{tmp_path / 'tiles'}",
            workers=2, poll="100ms", delay="30ms", broadcast=f"{redis_url}?channel={channel}",
        )  # fmt: skip
        pool = RenderPool(settings)
        stop = threading.Event()
        worker = threading.Thread(target=pool.run, args=(stop,))
        seen: list[tuple[str, int]] = []
        with RedisSubscriber(redis_url, channel) as sub:
            worker.start()
            try:
                deadline = time.monotonic() + 30
                while True:
                    status, _, doc = call(base, "GET", f"/v1/jobs/{job_id}")
                    assert status == 200, doc
                    seen.append((doc["state"], doc["progress"]["done"]))
                    if doc["state"] not in ("QUEUED", "IN_PROGRESS"):
                        break
                    assert time.monotonic() < deadline, seen[-3:]
                    time.sleep(0.1)
                announced = sub.wait_for(len(expected.tiles))
            finally:
                stop.set()
                worker.join(20)
        assert doc["state"] == "COMPLETED" and doc["errors"] == [], doc
        assert doc["progress"]["done"] == doc["progress"]["total"] == len(expected.tiles)
        assert doc["result"] is not None
        assert any(s == "IN_PROGRESS" and 0 < d < len(expected.tiles) for s, d in seen), seen
        assert [d for _, d in seen] == sorted(d for _, d in seen)  # progress never goes back
        store = DirectoryStore(tmp_path / "tiles")
        assert all(store.read(z, x, y) is not None for z, x, y in expected.tiles)
        assert {m["rerender"] for m in announced} == {job_id}
        assert sorted((m["z"], m["x"], m["y"]) for m in announced) == expected.tiles

        status, _, listing = call(base, "GET", "/v1/jobs?state=COMPLETED")
        assert status == 200 and [j["id"] for j in listing["jobs"]] == [job_id]
        assert call(base, "GET", "/v1/jobs?state=QUEUED")[2] == {"jobs": []}
        assert call(base, "GET", "/v1/jobs?state=BOGUS")[0] == 400

        # Over the tile budget: a coarser zoom, recorded (the stream's fan-out fallback).
        big = {**request, "maxzoom": 18, "idempotency_key": "style-v2-deep"}
        status, _, doc = call(base, "POST", "/v1/jobs", big)
        assert status == 202 and doc["cover"]["method"] == "zoom_capped"
        assert doc["cover"]["zoom"] < 18 and doc["progress"]["total"] <= 200


def star(n: int) -> dict[str, Any]:
    """The review's repair bomb: a star polygon whose edges cross most others."""
    k = n // 2
    pts = [[13 + 0.01 * math.cos(a), 52 + 0.01 * math.sin(a)]
           for a in ((i * k % n) * 2 * math.pi / n for i in range(n))]  # fmt: skip
    return {"type": "Polygon", "coordinates": [[*pts, pts[0]]]}


def declare_only(base: str, target: str, length: int) -> tuple[int, Any]:
    """Send a POST's headers declaring ``length`` body bytes, none of them, and read the answer."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("POST", target)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        for k, v in signed_headers(SECRET, b"", method="POST", target=target).items():
            conn.putheader(k, v)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post_raw(base: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(base + "/v1/jobs", body, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_job_api_checks_geometry_within_its_deadline_and_bounds_what_it_takes(
    kafka, redis_url: str, ledger_dsn: str
) -> None:
    prefix = f"tp-{uuid.uuid4().hex[:8]}"
    env = {"TILEPIPE_RENDER_LEDGER": ledger_dsn, "TILEPIPE_RENDER_REDIS": redis_url,
           "TILEPIPE_RENDER_PREFIX": prefix, "TILEPIPE_INGRESS_JOBS_MAX_TILES": "500"}  # fmt: skip
    job = {"operation": "rerender_region", "minzoom": 10, "maxzoom": 12}
    with IngressProcess(kafka.url(kafka.new_topic("jobs")), secrets=f"k1:{SECRET.decode()}",
                        env=env) as ingress:  # fmt: skip
        base = ingress.url
        # Repair within the deadline: refused in about a second (was 24 s, then accepted).
        started = time.monotonic()
        status, _, doc = call(base, "POST", "/v1/jobs", {**job, "geometry": star(151)})
        took = time.monotonic() - started
        assert status == 422 and "within budget" in doc["message"], doc
        assert took < 10  # a generous ceiling: the budget is 1 s
        # The events' checks: coordinate range and vertex cap.
        far = {"type": "Point", "coordinates": [13, 152]}
        status, _, doc = call(base, "POST", "/v1/jobs", {**job, "geometry": far})
        assert status == 422 and "out of range" in doc["message"], doc
        # A bowtie is still repaired, as events are.
        bowtie = {"type": "Polygon", "coordinates": [[[13, 52], [13.1, 52.1], [13.1, 52],
                                                      [13, 52.1], [13, 52]]]}  # fmt: skip
        status, _, doc = call(base, "POST", "/v1/jobs", {**job, "geometry": bowtie,
                                                         "idempotency_key": "bowtie"})  # fmt: skip
        assert status == 202, doc
        # The 1 MiB body limit (8 MiB was taken), refused on the declared length before a
        # byte of the body is read (so a client still sending sees the answer, not a pipe).
        status, doc = declare_only(base, "/v1/jobs", (1 << 20) + 1)
        assert status == 413 and doc["error"] == "too_large", doc
        # deadline_ms is bounded: 422, not a PostgreSQL DataError and a 500.
        status, _, doc = call(base, "POST", "/v1/jobs",
                              {**job, "bbox": BBOX, "deadline_ms": 10**17})  # fmt: skip
        assert status == 422 and "deadline_ms" in doc["message"], doc
        # A captured request without an idempotency key, replayed: the same job.
        body = json.dumps({**job, "bbox": BBOX}).encode()
        signed = signed_headers(SECRET, body, target="/v1/jobs")
        headers = {"Content-Type": "application/json"} | signed
        first = post_raw(base, body, headers)
        replay = post_raw(base, body, headers)
        assert first[0] == replay[0] == 202, (first, replay)
        assert replay[1]["id"] == first[1]["id"] and replay[1]["created"] is False
        assert SECRET.decode() not in json.dumps(replay[1])
        assert headers[SIGNATURE_HEADER] not in json.dumps(replay[1])
