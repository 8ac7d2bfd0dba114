"""Region jobs: "re-render everything here at these zooms", expanded to tile jobs.

A region job (``POST /v1/jobs``, operation ``rerender_region``) is a row in
``render_regions`` plus one tile job per covered tile, linked in
``render_region_tiles``; the tile jobs are ordinary render jobs (ledger rows
and queue entries) whose key includes the region's id, so re-rendering a
tile already rendered at its version is new work, not a duplicate. Progress
is read from the tile jobs' states; nothing is counted twice.

The cover comes from :func:`tilepipe.cover.cover_range`, which falls back to
the bounding box (exact cover too slow) or a coarser zoom (too many tiles)
and says which: the method and the deepest zoom covered are recorded with
the job and returned by ``GET /v1/jobs/{id}``.

Each tile job renders the tile at the version last committed for it (0 when
none was), so a stream update committed meanwhile wins over the re-render
(the ledger refuses an older version).

Crash safety: the region, its tile rows and its links are written in one
transaction before anything is enqueued. If the process dies before
enqueueing, repeating the request with the same idempotency key enqueues
the tile jobs still QUEUED (the queue's dedup makes that harmless).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from render.jobs import RenderJob
from render.ledger import SCHEMA as JOBS_SCHEMA
from render.queue import RenderQueue
from tilepipe.tiles import ZXY

REGIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS render_regions (
    id              text PRIMARY KEY,
    idempotency_key text UNIQUE,
    operation       text NOT NULL,
    request         jsonb NOT NULL,
    tms             text NOT NULL,
    cover_method    text NOT NULL,
    cover_zoom      integer NOT NULL,
    tiles_total     integer NOT NULL,
    deadline_ms     bigint,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS render_region_tiles (
    region_id text NOT NULL,
    job_key   text NOT NULL,
    PRIMARY KEY (region_id, job_key)
);
"""

TMS = "WebMercatorQuad"
DONE_STATES = ("COMPLETED", "DEGRADED", "DEAD")


@dataclass(frozen=True)
class RegionRequest:
    operation: str
    tiles: list[ZXY]
    cover_method: str
    cover_zoom: int
    request: dict[str, Any]
    idempotency_key: str | None = None
    deadline_ms: int | None = None  # epoch milliseconds


def create_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tilepipe.render.schema'))")
        conn.execute(JOBS_SCHEMA)
        conn.execute(REGIONS_SCHEMA)


def submit(
    conn: psycopg.Connection[Any], queue: RenderQueue, req: RegionRequest
) -> tuple[str, bool]:
    """Record and enqueue a region job; ``(id, created)``. The same idempotency key → the
    same job (``created`` False), whose tile jobs still QUEUED are enqueued again."""
    region_id = "rj_" + uuid.uuid4().hex[:20]
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO render_regions (id, idempotency_key, operation, request, tms,"
            " cover_method, cover_zoom, tiles_total, deadline_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (region_id, req.idempotency_key, req.operation, orjson.dumps(req.request).decode(),
             TMS, req.cover_method, req.cover_zoom, len(req.tiles), req.deadline_ms),
        ).fetchone()  # fmt: skip
        if row is None:
            (existing,) = conn.execute(
                "SELECT id FROM render_regions WHERE idempotency_key = %s",
                (req.idempotency_key,),
            ).fetchone() or (None,)
            assert existing is not None
            region_id, created = str(existing), False
        else:
            created = True
            jobs = _tile_jobs(conn, region_id, req)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO render_jobs (job_key, tms, z, x, y, version, state)"
                    " VALUES (%s, %s, %s, %s, %s, %s, 'QUEUED') ON CONFLICT DO NOTHING",
                    [(j.key, j.tms, j.z, j.x, j.y, str(j.version)) for j in jobs],
                )
                cur.executemany(
                    "INSERT INTO render_region_tiles (region_id, job_key) VALUES (%s, %s)",
                    [(region_id, j.key) for j in jobs],
                )
    if not created:
        jobs = _queued_jobs(conn, region_id)
    queue.enqueue(jobs)
    return region_id, created


def _tile_jobs(
    conn: psycopg.Connection[Any], region_id: str, req: RegionRequest
) -> list[RenderJob]:
    zs = [t[0] for t in req.tiles]
    xs = [t[1] for t in req.tiles]
    ys = [t[2] for t in req.tiles]
    current = {
        (z, x, y): v
        for z, x, y, v in conn.execute(
            "SELECT t.z, t.x, t.y, t.version FROM unnest(%s::int[], %s::bigint[], %s::bigint[])"
            " AS r(z, x, y) JOIN render_tiles t ON t.tms = %s AND t.z = r.z AND t.x = r.x"
            " AND t.y = r.y",
            (zs, xs, ys, TMS),
        ).fetchall()
    }
    return [
        RenderJob(
            TMS,
            z,
            x,
            y,
            _version(current.get((z, x, y), 0)),
            origin=region_id,
            deadline_ms=req.deadline_ms,
        )
        for z, x, y in req.tiles
    ]


def _version(v: object) -> int | str:
    text = str(v)
    return int(text) if text.isdigit() else text


def _queued_jobs(conn: psycopg.Connection[Any], region_id: str) -> list[RenderJob]:
    (deadline,) = conn.execute(
        "SELECT deadline_ms FROM render_regions WHERE id = %s", (region_id,)
    ).fetchone() or (None,)
    rows = conn.execute(
        "SELECT j.tms, j.z, j.x, j.y, j.version FROM render_region_tiles r"
        " JOIN render_jobs j ON j.job_key = r.job_key"
        " WHERE r.region_id = %s AND j.state = 'QUEUED'",
        (region_id,),
    ).fetchall()
    return [
        RenderJob(tms, z, x, y, _version(v), origin=region_id, deadline_ms=deadline)
        for tms, z, x, y, v in rows
    ]


def status(conn: psycopg.Connection[Any], region_id: str, max_errors: int = 10) -> dict | None:
    """The region job's state, progress and errors, or None if there is no such job."""
    with conn.cursor(row_factory=dict_row) as cur:
        region = cur.execute(
            "SELECT id, idempotency_key, operation, request, cover_method, cover_zoom,"
            " tiles_total, deadline_ms, created_at FROM render_regions WHERE id = %s",
            (region_id,),
        ).fetchone()
    if region is None:
        return None
    by_state: dict[str, int] = dict(
        conn.execute(  # type: ignore[arg-type]
            "SELECT j.state, count(*) FROM render_region_tiles r JOIN render_jobs j"
            " ON j.job_key = r.job_key WHERE r.region_id = %s GROUP BY j.state",
            (region_id,),
        ).fetchall()
    )
    errors = [
        {"tile": f"{z}/{x}/{y}", "state": s, "error": e}
        for z, x, y, s, e in conn.execute(
            "SELECT j.z, j.x, j.y, j.state, j.error FROM render_region_tiles r"
            " JOIN render_jobs j ON j.job_key = r.job_key"
            " WHERE r.region_id = %s AND j.error IS NOT NULL ORDER BY j.updated_at DESC LIMIT %s",
            (region_id, max_errors),
        ).fetchall()
    ]
    return _document(region, by_state, errors)


def _document(
    region: dict[str, Any], by_state: dict[str, int], errors: list[dict[str, Any]]
) -> dict[str, Any]:
    total = int(region["tiles_total"])
    done = sum(by_state.get(s, 0) for s in DONE_STATES)
    if done >= total:
        if by_state.get("DEAD"):
            state = "FAILED"
        elif by_state.get("DEGRADED"):
            state = "DEGRADED"
        else:
            state = "COMPLETED"
    elif by_state.get("QUEUED", 0) == total:
        state = "QUEUED"
    else:
        state = "IN_PROGRESS"
    return {
        "id": region["id"],
        "operation": region["operation"],
        "state": state,
        "progress": {"done": done, "total": total,
                     "by_state": {k: v for k, v in sorted(by_state.items()) if v}},
        "cover": {"method": region["cover_method"], "zoom": region["cover_zoom"]},
        "request": region["request"],
        "idempotency_key": region["idempotency_key"],
        "created_at": region["created_at"].isoformat(),
        "errors": errors,
        "result": None if state in ("QUEUED", "IN_PROGRESS") else "the tile store",
    }  # fmt: skip


def list_jobs(
    conn: psycopg.Connection[Any], state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest region jobs (at most ``limit``), optionally only those in ``state``."""
    with conn.cursor(row_factory=dict_row) as cur:
        regions = cur.execute(
            "SELECT id, idempotency_key, operation, request, cover_method, cover_zoom,"
            " tiles_total, deadline_ms, created_at FROM render_regions"
            " ORDER BY created_at DESC LIMIT 1000"
        ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for rid, s, n in conn.execute(
        "SELECT r.region_id, j.state, count(*) FROM render_region_tiles r JOIN render_jobs j"
        " ON j.job_key = r.job_key WHERE r.region_id = ANY(%s) GROUP BY r.region_id, j.state",
        ([r["id"] for r in regions],),
    ).fetchall():
        counts.setdefault(rid, {})[s] = int(n)
    out = []
    for r in regions:
        doc = _document(r, counts.get(r["id"], {}), [])
        del doc["errors"], doc["request"]
        if state is None or doc["state"] == state:
            out.append(doc)
        if len(out) >= limit:
            break
    return out
