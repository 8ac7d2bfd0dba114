"""The job API on a running ingress, with real Redis, PostgreSQL and a pool of render
workers: a region job answers 202 with its location, the same idempotency key is the
same job, requests are signed, progress is reported while the workers render, the job
finishes with every tile in the store, and an oversized region records its fallback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box

from operators.cover import cover_range
from render.pool import RenderPool
from render.settings import RenderSettings
from render.stores import DirectoryStore
from tests.support.ingress import IngressProcess
from tests.support.services import RedisSubscriber
from tilepipe.client import signed_headers

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
