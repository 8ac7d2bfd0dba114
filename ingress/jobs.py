"""The job API: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs?state=...``.

Enabled when the ingress knows the render ledger (``TILEPIPE_RENDER_LEDGER``).
Requests are signed like events (:mod:`ingress.auth`): over the method, the
request target as sent, the timestamp and the body, which is empty for a GET,
so a signature cannot be replayed for another job or query (``/v1/jobs/ID``,
``/v1/jobs?state=DEAD``). :func:`handle` authenticates and dispatches.

``POST /v1/jobs`` with ``{"operation": "rerender_region", "bbox": [minlon,
minlat, maxlon, maxlat]`` *or* ``"geometry": {GeoJSON}``, ``"minzoom"``,
``"maxzoom"``, optional ``"idempotency_key"`` and ``"deadline_ms"`` (how
long from now the tiles are worth rendering, at most :data:`MAX_DEADLINE_MS`;
later they are only invalidated)} answers 202 with ``Location: /v1/jobs/{id}``
and the job's status; the same idempotency key answers the same job
(``"created": false``). A request without one is keyed by its signature, so a
captured request replayed within the signature window is the same job, never
a new region.

The geometry gets the events' checks (:func:`tilepipe.geometry.check_geometry`:
nesting, coordinate range, vertex cap, a repair within its budget), and the
repair and the cover share one deadline (``cover_deadline_s``), so a request
costs at most that much geometry work whatever it holds. Bodies are limited
to :data:`MAX_BODY`. The ledger and queue calls are blocking and run in a
thread, like the geometry work.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Any, Literal

import psycopg
import redis
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from shapely.geometry import box
from starlette.requests import Request
from starlette.responses import Response

from ingress.auth import Auth
from ingress.intake import body_kind
from ingress.responses import Rejected, error_response, json_response
from render import regions
from render.queue import RenderQueue
from tilepipe.cover import cover_range
from tilepipe.geometry import REPAIR_BUDGET_S, GeometryError, check_geometry, from_geojson
from tilepipe.signing import SIGNATURE_HEADER
from tilepipe.wire import GeometryRules

MAX_BODY = 1 << 20
# A week: far beyond any useful render deadline, far inside PostgreSQL's bigint
# (an unbounded value failed there with a DataError: a 500 and a traceback).
MAX_DEADLINE_MS = 7 * 24 * 3600 * 1000
# The cover's share of the deadline is never below this, so a repair that used
# most of it still leaves the cover time to fall back to the bounding box.
_MIN_COVER_S = 0.05


class RegionJobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operation: Literal["rerender_region"]
    bbox: Annotated[list[float], Field(min_length=4, max_length=4)] | None = None
    geometry: dict[str, Any] | None = None
    minzoom: Annotated[int, Field(ge=0, le=30)]
    maxzoom: Annotated[int, Field(ge=0, le=30)]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    deadline_ms: Annotated[int, Field(gt=0, le=MAX_DEADLINE_MS)] | None = None
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
        rules: GeometryRules | None = None,
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
        self.rules = rules or GeometryRules()

    def prepare(self) -> None:
        """Create the tables and the queue's group; raises on an unreachable service."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            regions.create_schema(conn)
        self.queue.ensure_group()
        self._pool.open()

    # -- blocking work, run in a thread ---------------------------------------------

    def submit(
        self, body: RegionJobBody, signature: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Create (or find) the region job; ``signature`` keys a request without an
        idempotency key."""
        if body.maxzoom > self.max_zoom:
            raise ValueError(f"maxzoom {body.maxzoom} is above the limit of {self.max_zoom}")
        started = time.perf_counter()
        if body.bbox is not None:
            geom = box(*body.bbox)
        else:
            rules = self.rules
            geom = check_geometry(
                from_geojson(body.geometry),
                rules.max_vertices,
                rules.repair,
                min(REPAIR_BUDGET_S, self.cover_deadline_s),
            )
        left = self.cover_deadline_s - (time.perf_counter() - started)
        cover = cover_range(
            geom, body.minzoom, body.maxzoom, body.buffer, self.max_tiles, max(left, _MIN_COVER_S)
        )
        deadline = None if body.deadline_ms is None else int(time.time() * 1000) + body.deadline_ms
        req = regions.RegionRequest(
            operation=body.operation,
            tiles=list(cover.tiles),
            cover_method=cover.method,
            cover_zoom=cover.zoom,
            request=body.model_dump(exclude_none=True),
            idempotency_key=body.idempotency_key or _signature_key(signature),
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


def _signature_key(signature: str | None) -> str | None:
    """The idempotency key of a request that brought none: a digest of its signature
    (the signature itself is never stored or shown), the same for a replay."""
    if signature is None:
        return None
    return "signature-sha256:" + hashlib.sha256(signature.encode("latin-1")).hexdigest()[:32]


REGION_STATES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "DEGRADED", "FAILED")
"""A region job's state: FAILED when done with some tile jobs DEAD, DEGRADED when some were
only invalidated, COMPLETED when every tile was rendered and committed."""


async def post_job(api: JobsAPI, request: Request, body: bytes) -> Response:
    if len(body) > MAX_BODY:
        return error_response(
            413, "too_large", f"the body is over the {MAX_BODY}-byte limit of a job"
        )
    try:
        parsed = RegionJobBody.model_validate_json(body)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return error_response(
            422, "invalid_job", f"{where}: {first['msg'].removeprefix('Value error, ')}"
        )
    try:
        signature = request.headers.get(SIGNATURE_HEADER)
        doc, created = await asyncio.to_thread(api.submit, parsed, signature)
    except (ValueError, GeometryError) as e:
        return error_response(422, "invalid_job", str(e))
    except (psycopg.OperationalError, redis.RedisError):
        return error_response(
            503, "unavailable", "the job ledger or queue is unavailable; retry later"
        )
    doc["created"] = created
    return json_response(202, doc, {"Location": f"/v1/jobs/{doc['id']}"})


async def get_job(api: JobsAPI, region_id: str) -> Response:
    try:
        doc = await asyncio.to_thread(api.status, region_id)
    except psycopg.OperationalError:
        return error_response(503, "unavailable", "the job ledger is unavailable; retry later")
    if doc is None:
        return error_response(404, "not_found", f"no job {region_id!r}")
    return json_response(200, doc)


async def list_jobs(api: JobsAPI, state: str | None) -> Response:
    if state is not None and state not in REGION_STATES:
        return error_response(400, "invalid_state", f"state must be one of {sorted(REGION_STATES)}")
    try:
        docs = await asyncio.to_thread(api.list, state)
    except psycopg.OperationalError:
        return error_response(503, "unavailable", "the job ledger is unavailable; retry later")
    return json_response(200, {"jobs": docs})


async def handle(api: JobsAPI, auth: Auth, request: Request) -> Response:
    """Every job route: authenticated as events are (a GET signs an empty body), then
    dispatched. A refusal raises :class:`~ingress.responses.Rejected`."""
    if request.method == "POST":
        auth.check_timestamp(request)
        if body_kind(request.headers.get("content-type")) != "json":
            raise Rejected(415, "unsupported_media_type", "Content-Type: application/json")
        body = await auth.read_body(request, MAX_BODY)
        auth.authenticate(request, body)
        return await post_job(api, request, body)
    auth.authenticate(request, b"")
    if "id" in request.path_params:
        return await get_job(api, request.path_params["id"])
    return await list_jobs(api, request.query_params.get("state"))
