"""The job API: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs?state=...``.

Enabled when the ingress knows the render ledger (``TILEPIPE_RENDER_LEDGER``).
Requests are signed like events: ``X-Tilepipe-Timestamp`` and
``X-Tilepipe-Signature: sha256=HMAC(secret, timestamp + "." + body)``. A GET
has no body, so it signs its request target instead (``/v1/jobs/ID`` or
``/v1/jobs?state=DEAD``): a signature then cannot be replayed for another
job or query.

``POST /v1/jobs`` with ``{"operation": "rerender_region", "bbox": [minlon,
minlat, maxlon, maxlat]`` *or* ``"geometry": {GeoJSON}``, ``"minzoom"``,
``"maxzoom"``, optional ``"idempotency_key"`` and ``"deadline_ms"`` (how
long from now the tiles are worth rendering; later they are only
invalidated)} answers 202 with ``Location: /v1/jobs/{id}`` and the job's
status; the same idempotency key answers the same job (``"created": false``).
The ledger and queue calls are blocking and run in a thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import orjson
import psycopg
import redis
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from shapely.geometry import box
from starlette.requests import Request
from starlette.responses import Response

from operators.cover import cover_range
from render import regions
from render.queue import RenderQueue
from tilepipe.geometry import GeometryError, from_geojson

MAX_BODY = 1 << 20


class RegionJobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: Literal["rerender_region"]
    bbox: Annotated[list[float], Field(min_length=4, max_length=4)] | None = None
    geometry: dict[str, Any] | None = None
    minzoom: Annotated[int, Field(ge=0, le=30)]
    maxzoom: Annotated[int, Field(ge=0, le=30)]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    deadline_ms: Annotated[int, Field(gt=0)] | None = None
    buffer: Annotated[float, Field(ge=0, le=256)] = 0.0

    @model_validator(mode="after")
    def _check(self) -> RegionJobBody:
        if (self.bbox is None) == (self.geometry is None):
            raise ValueError("give either bbox or geometry")
        if self.minzoom > self.maxzoom:
            raise ValueError("minzoom is above maxzoom")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise ValueError("bbox must be [minlon, minlat, maxlon, maxlat] in EPSG:4326")
        return self


class JobsAPI:
    def __init__(
        self,
        ledger_dsn: str,
        redis_url: str,
        prefix: str,
        max_tiles: int,
        max_zoom: int,
        cover_deadline_s: float = 2.0,
    ) -> None:
        self.dsn = ledger_dsn
        # A few pooled connections, checked on checkout, instead of one connection (and a
        # PostgreSQL backend start) per request; opened by prepare().
        self._pool = ConnectionPool(
            ledger_dsn,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True, "connect_timeout": 5},
            timeout=5,
            check=ConnectionPool.check_connection,
            open=False,
        )
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.queue = RenderQueue(self.client, prefix)
        self.max_tiles = max_tiles
        self.max_zoom = max_zoom
        self.cover_deadline_s = cover_deadline_s

    def prepare(self) -> None:
        """Create the tables and the queue's group; raises on an unreachable service."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            regions.create_schema(conn)
        self.queue.ensure_group()
        self._pool.open()

    # -- blocking work, run in a thread ---------------------------------------------

    def submit(self, body: RegionJobBody) -> tuple[dict[str, Any], bool]:
        if body.maxzoom > self.max_zoom:
            raise ValueError(f"maxzoom {body.maxzoom} is above the limit of {self.max_zoom}")
        geom = box(*body.bbox) if body.bbox is not None else from_geojson(body.geometry)
        cover = cover_range(
            geom, body.minzoom, body.maxzoom, body.buffer, self.max_tiles, self.cover_deadline_s
        )
        deadline = None if body.deadline_ms is None else int(time.time() * 1000) + body.deadline_ms
        req = regions.RegionRequest(
            operation=body.operation,
            tiles=list(cover.tiles),
            cover_method=cover.method,
            cover_zoom=cover.zoom,
            request=body.model_dump(exclude_none=True),
            idempotency_key=body.idempotency_key,
            deadline_ms=deadline,
        )
        with self._pool.connection() as conn:
            region_id, created = regions.submit(conn, self.queue, req)
            doc = regions.status(conn, region_id)
        assert doc is not None
        return doc, created

    def status(self, region_id: str) -> dict[str, Any] | None:
        with self._pool.connection() as conn:
            return regions.status(conn, region_id)

    def list(self, state: str | None) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            return regions.list_jobs(conn, state)

    def close(self) -> None:
        self._pool.close()
        self.client.close()


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status, headers, media_type="application/json")


def _error(status: int, reason: str, message: str) -> Response:
    return _json(status, {"error": reason, "message": message})


REGION_STATES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "DEGRADED", "FAILED")
"""A region job's state: FAILED when done with some tile jobs DEAD, DEGRADED when some were
only invalidated, COMPLETED when every tile was rendered and committed."""


async def post_job(api: JobsAPI, request: Request, body: bytes) -> Response:
    try:
        parsed = RegionJobBody.model_validate_json(body)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(422, "invalid_job", f"{where}: {first['msg'].removeprefix('Value error, ')}")
    try:
        doc, created = await asyncio.to_thread(api.submit, parsed)
    except (ValueError, GeometryError) as e:
        return _error(422, "invalid_job", str(e))
    except (psycopg.OperationalError, redis.RedisError):
        return _error(503, "unavailable", "the job ledger or queue is unavailable; retry later")
    doc["created"] = created
    return _json(202, doc, {"Location": f"/v1/jobs/{doc['id']}"})


async def get_job(api: JobsAPI, region_id: str) -> Response:
    try:
        doc = await asyncio.to_thread(api.status, region_id)
    except psycopg.OperationalError:
        return _error(503, "unavailable", "the job ledger is unavailable; retry later")
    if doc is None:
        return _error(404, "not_found", f"no job {region_id!r}")
    return _json(200, doc)


async def list_jobs(api: JobsAPI, state: str | None) -> Response:
    if state is not None and state not in REGION_STATES:
        return _error(400, "invalid_state", f"state must be one of {sorted(REGION_STATES)}")
    try:
        docs = await asyncio.to_thread(api.list, state)
    except psycopg.OperationalError:
        return _error(503, "unavailable", "the job ledger is unavailable; retry later")
    return _json(200, {"jobs": docs})
