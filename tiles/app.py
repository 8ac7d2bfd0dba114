"""The tile server as an ASGI app: ``GET /{z}/{x}/{y}.{format}[?v=VERSION&h=HASH]``.

The cache contract (README, "Map clients"), decided by :func:`cache_policy`:

- **A versioned URL whose release the store has** (``v`` and ``h`` name the committed
  release, per the ledger): ``Cache-Control: public, max-age=31536000, immutable``. The
  URL names those bytes forever, so browsers and CDNs never ask again, and a map that
  refreshes its whole source pays nothing for the tiles that did not change.
- **A bare URL**: ``no-cache`` with ``ETag: "<hash of the bytes>"``, and 304 on a matching
  ``If-None-Match``: every use revalidates, which is cheap and never stale.
- **A version newer than the stored one** (a client heard of a release the store does
  not have: a degraded job that only invalidated, or a ledger that is behind) and a hash
  the ledger does not know for the stored version: the current bytes (or 404) with
  ``no-store``, so nothing caches them under a URL that names another release.
- An older release, or a version without its hash (one version number can name several
  releases of a tile: two features that each reach version 1 on it, a region re-render),
  is answered with the current bytes as for a bare URL: ``no-cache`` + ETag.

The ledger is read *before* the bytes. A commit moves the tile into place and then
commits the ledger's transaction, so reading in this order can at worst serve newer bytes
under an older release's URL (harmless: the newer release is announced next), never older
bytes under a newer release's immutable URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, TextIO

import orjson
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tilepipe.versions import VersionKey, version_key
from tiles.settings import CONTENT_TYPES, TilesSettings
from tiles.store import Committed, LedgerVersions, TileReader

IMMUTABLE = "public, max-age=31536000, immutable"


class Cache(str, Enum):
    IMMUTABLE = "immutable"
    REVALIDATE = "no-cache"
    NEVER = "no-store"


def cache_policy(
    tms: str,
    z: int,
    x: int,
    y: int,
    v: VersionKey | None,
    h: str | None,
    committed: Committed | None,
    ledger: bool,
) -> Cache:
    """How a response for this request may be cached (see the module's contract)."""
    if v is None or not ledger:
        return Cache.REVALIDATE
    if committed is None or v > committed.vkey:
        return Cache.NEVER
    if v < committed.vkey or not h:
        return Cache.REVALIDATE
    if committed.is_release(tms, z, x, y, v, h):
        return Cache.IMMUTABLE
    return Cache.NEVER  # the stored version, another hash: an older release, or one not in yet


@dataclass
class TileServer:
    settings: TilesSettings
    reader: TileReader
    versions: LedgerVersions | None
    log_file: TextIO | None = None

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tilepipe_tiles_requests", "Tile requests by status and cache policy",
            ["status", "cache"], registry=self.registry,
        )  # fmt: skip
        self.content_type = CONTENT_TYPES[self.settings.format]

    def lookup(
        self, z: int, x: int, y: int, versioned: bool
    ) -> tuple[Committed | None, bytes | None]:
        """Blocking: the ledger first, then the bytes (the order the module explains)."""
        committed = None
        if versioned and self.versions is not None:
            committed = self.versions.committed(self.settings.tms, z, x, y)
        return committed, self.reader.read(z, x, y)

    def log(self, request: Request, z: int, x: int, y: int, status: int, cache: Cache) -> None:
        self.requests.labels(str(status), cache.value).inc()
        if self.log_file is None:
            return
        q = request.query_params
        line = {"ts": round(time.time() * 1000, 1), "z": z, "x": x, "y": y, "v": q.get("v"),
                "h": q.get("h"), "status": status, "cache": cache.value}  # fmt: skip
        self.log_file.write(orjson.dumps(line).decode() + "\n")
        self.log_file.flush()

    def headers(self, extra: dict[str, str]) -> dict[str, str]:
        origins = self.settings.cors_origins
        if origins:
            extra["Access-Control-Allow-Origin"] = origins
            extra["Access-Control-Expose-Headers"] = "ETag"
            if origins != "*":
                extra["Vary"] = "Origin"
        return extra


async def tile(request: Request) -> Response:
    srv: TileServer = request.app.state.tiles
    p = request.path_params
    z, x, y, ext = p["z"], p["x"], p["y"], p["ext"]
    if ext != srv.settings.format:
        return Response(f"this server serves .{srv.settings.format} tiles\n", 404)
    if not (0 <= z <= 30 and 0 <= x < 1 << z and 0 <= y < 1 << z):
        return Response(f"tile {z}/{x}/{y} does not exist: 0 <= x, y < 2^z\n", 404)
    raw_v, h = request.query_params.get("v"), request.query_params.get("h")
    v = None
    if raw_v is not None:
        try:
            v = version_key(int(raw_v) if raw_v.isdigit() else raw_v)
        except ValueError as e:
            return Response(f"v={raw_v!r}: {e}\n", 400, headers={"Cache-Control": "no-store"})
    committed, data = await run_in_threadpool(srv.lookup, z, x, y, v is not None)
    cache = cache_policy(srv.settings.tms, z, x, y, v, h, committed, srv.versions is not None)
    cc = IMMUTABLE if cache is Cache.IMMUTABLE else cache.value
    if data is None:
        srv.log(request, z, x, y, 404, cache)
        return Response(b"", 404, headers=srv.headers({"Cache-Control": cc}))
    etag = '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'
    headers = srv.headers({"Cache-Control": cc, "ETag": etag})
    if cache is not Cache.NEVER and etag in _etags(request.headers.get("if-none-match", "")):
        srv.log(request, z, x, y, 304, cache)
        return Response(status_code=304, headers=headers)
    if srv.settings.format in ("mvt", "pbf") and data[:2] == b"\x1f\x8b":
        headers["Content-Encoding"] = "gzip"
    srv.log(request, z, x, y, 200, cache)
    return Response(data, 200, headers=headers, media_type=srv.content_type)


def _etags(value: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in value.split(",") if t.strip()}


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    srv: TileServer = request.app.state.tiles
    try:
        await run_in_threadpool(srv.reader.check)
        if srv.versions is not None:
            await run_in_threadpool(srv.versions.check)
    except Exception as e:
        body = {"status": "not ready", "reason": str(e).splitlines()[0] if str(e) else repr(e)}
        return Response(orjson.dumps(body), 503, media_type="application/json")
    return Response(b'{"status":"ready"}', media_type="application/json")


async def metrics(request: Request) -> Response:
    srv: TileServer = request.app.state.tiles
    return Response(generate_latest(srv.registry), media_type=CONTENT_TYPE_LATEST)


class _ModuleFiles(StaticFiles):
    """Static files with ``.mjs`` as JavaScript: MapLibre 6 loads its worker as a module
    from the same folder, and a worker served as anything else never starts (the map's
    ``load`` event then never fires)."""

    def file_response(self, full_path: Any, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        if str(full_path).endswith(".mjs"):
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


def create_app(server: TileServer) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            server.reader.close()
            if server.versions is not None:
                server.versions.close()

    routes: list[Any] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    for spec in server.settings.static:
        prefix, _, directory = spec.partition("=")
        routes.append(Mount("/" + prefix.strip("/"), _ModuleFiles(directory=directory, html=True)))
    routes.append(Route("/{z:int}/{x:int}/{y:int}.{ext}", tile))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.tiles = server
    return app
