"""The gateway as an ASGI app (Starlette): WebSocket ``/v1/live``, SSE ``/v1/sse``, health, metrics.

Both transports run one protocol over one :class:`~gateway.hub.Hub`: a
session tracks tiles and/or an area, the hub routes updates into its
conflation map, and one writer task per session drains it (``hub.drain``).
Every frame is documented in the README, "Map clients".
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway import metrics
from gateway.auth import EVERYTHING, Verifier, origin_allowed
from gateway.auth import Scope as TokenScope
from gateway.core import FrameError, Message, batch_frame, error_frame, resync_frame
from gateway.hub import Client, Full, Hub, drain, parse_tiles
from gateway.settings import GatewaySettings
from gateway.transport import EXTENSION

log = logging.getLogger("tilepipe.gateway")

MAX_FRAME_BYTES = 256 * 1024  # a track of max_tiles tiles with hashes is ~40 KB


def json_response(body: dict[str, Any], status: int = 200, **headers: str) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


class Gateway:
    """What the routes share: the settings, the hub and the token verifier."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.hub = Hub(settings)
        self.verifier = Verifier(settings) if settings.auth_enabled else None

    def hello(self, c: Client) -> bytes:
        s = self.settings
        return orjson.dumps({
            "type": "hello", "v": 1, "session": c.session.id, "epoch": self.hub.epoch,
            "auth": "required" if self.verifier is not None else "off",
            "limits": {"max_tiles": s.max_tiles, "max_area_cells": s.max_area_cells,
                       "area_level": s.area_level},
        })  # fmt: skip

    def busy(self) -> Response:
        return json_response(
            {"error": "too_many_connections",
             "message": "this gateway process is full: retry after Retry-After seconds, with"
                        " jitter"},
            503, **{"Retry-After": str(self.settings.retry_after)},
        )  # fmt: skip

    def http_token(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        token = request.cookies.get("tilepipe_token")
        if token:
            return token
        if self.settings.sse_query_token:
            return request.query_params.get("access_token")
        return None

    def http_scope(self, request: Request) -> TokenScope:
        if self.verifier is None:
            return EVERYTHING
        return self.verifier.verify(self.http_token(request))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if type(exc).__name__ not in {"ClientDisconnected", "WebSocketDisconnect"}:
            log.error("session writer failed", exc_info=exc)


# -- WebSocket ---------------------------------------------------------------------------------


async def live(ws: WebSocket) -> None:
    gw: Gateway = ws.app.state.gateway
    hub, settings = gw.hub, gw.settings
    if not origin_allowed(ws.headers.get("origin"), settings.allowed_origins):
        metrics.CONNECTS.labels("rejected_origin").inc()
        await ws.send_denial_response(json_response(
            {"error": "origin_not_allowed",
             "message": "this page's Origin is not in TILEPIPE_GATEWAY_ALLOWED_ORIGINS"}, 403,
        ))  # fmt: skip
        return
    try:
        c = hub.open("websocket")
    except Full:
        await ws.send_denial_response(gw.busy())
        return
    ctl = ws.scope.get("extensions", {}).get(EXTENSION)
    writer: asyncio.Task[None] | None = None

    async def send(frame: bytes) -> None:
        await ws.send({"type": "websocket.send", "text": frame.decode()})

    closed_by_us = False

    def closing(code: int, reason: str) -> None:
        nonlocal closed_by_us
        if writer is not None:
            writer.cancel()
        bye = orjson.dumps({"type": "bye", "code": code, "reason": reason})
        if ctl is not None:
            ctl.force_close(code, reason, bye, settings.close_grace.total_seconds())
            closed_by_us = True

    try:
        await ws.accept()
        c.closing = closing
        c.session.note(gw.hello(c))
        writer = asyncio.create_task(drain(hub, c, send, batch_frame))
        writer.add_done_callback(_log_failure)
        authed = gw.verifier is None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.auth_timeout.total_seconds()
        while True:
            if authed:
                msg = await ws.receive()
            else:
                try:
                    msg = await asyncio.wait_for(ws.receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    hub.end(c, 4001, "auth_timeout")
                    metrics.CONNECTS.labels("rejected_auth").inc()
                    break
            if msg["type"] == "websocket.disconnect":
                break
            data = msg.get("text") or msg.get("bytes") or b""
            if len(data) > MAX_FRAME_BYTES:
                c.session.note(
                    error_frame("bad_frame", f"frames are at most {MAX_FRAME_BYTES} bytes")
                )
                continue
            try:
                frame = orjson.loads(data)
                if isinstance(frame, dict) and frame.get("type") == "auth":
                    assert gw.verifier is not None or authed
                    if gw.verifier is None:
                        raise FrameError("bad_frame", "auth is off on this gateway")
                    scope = gw.verifier.verify(frame.get("token"))
                    if authed and scope.sub != c.scope.sub:
                        raise FrameError("forbidden", "a refreshed token must be for the same sub")
                    c.scope, authed = scope, True
                    if c.session.layers is None or scope.layers is not None:
                        c.session.layers = scope.layers
                    c.session.note(orjson.dumps({"type": "authed", "sub": scope.sub,
                                                 "exp": scope.expires}))  # fmt: skip
                    continue
                if not authed:
                    raise FrameError("unauthorized", 'send {"type": "auth", "token": ...} first')
                hub.apply(c, frame)
            except orjson.JSONDecodeError:
                metrics.REFUSED.labels("bad_frame").inc()
                c.session.note(error_frame("bad_frame", "frames are JSON objects"))
            except FrameError as e:
                metrics.REFUSED.labels(e.code).inc()
                if not authed:
                    metrics.CONNECTS.labels("rejected_auth").inc()
                    hub.end(c, 4001, e.code)
                    break
                c.session.note(error_frame(e.code, e.message, **e.extra))
    finally:
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        hub.close(c)
        if closed_by_us and ctl is not None:
            await ctl.flushed(settings.close_grace.total_seconds())


# -- SSE ---------------------------------------------------------------------------------------


def sse_control(frame: bytes) -> bytes:
    """A control frame as an SSE event named after its ``type``; comments pass through."""
    if frame.startswith(b":"):
        return frame
    kind = orjson.loads(frame).get("type", "message")
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), frame)


class SSEStream:
    """The body of one ``/v1/sse`` response: events until the client or the server ends it."""

    def __init__(self, gw: Gateway, c: Client) -> None:
        self.gw, self.c = gw, c
        self.seq = 0

    def encode(self, msgs: list[Message]) -> bytes:
        sid = self.c.session.id.encode()
        out = []
        for m in msgs:
            self.seq += 1
            out.append(b"id: %s.%d\nevent: tile_updated\ndata: %s\n\n" % (sid, self.seq, m.raw))
        return b"".join(out)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw, c, hub = self.gw, self.c, self.gw.hub
        settings = gw.settings
        ctl = scope.get("extensions", {}).get(EXTENSION)
        ended: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

        def closing(code: int, reason: str) -> None:
            if not ended.done():
                ended.set_result((code, reason))

        c.closing = closing
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no"),
                   (b"x-tilepipe-session", c.session.id.encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def body(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        retry = random.randint(
            1000, 3000
        )  # jittered: a restart does not bring every stream back at once
        await body(b"retry: %d\n" % retry + sse_control(gw.hello(c)))
        writer = asyncio.create_task(drain(hub, c, body, self.encode, sse_control))
        writer.add_done_callback(_log_failure)

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(settings.keepalive.total_seconds())
                c.session.note(b": ping\n\n")

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pinger = asyncio.create_task(keepalive())
        gone = asyncio.create_task(disconnected())
        stop = asyncio.create_task(hub.stopping.wait())
        linger = True
        try:
            waits: set[asyncio.Future[Any]] = {writer, gone, stop, ended}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if ended.done() or stop.done():
                code, reason = ended.result() if ended.done() else (1012, "restart")
                writer.cancel()
                linger = code == 4008  # a slow stream resumes from its session when it is back
                if code == 4008 and ctl is not None:
                    ctl.force_close(code, reason, None, 0)  # its buffer is full: cut it
                else:
                    bye = orjson.dumps({"type": "bye", "code": code, "reason": reason})
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(body(sse_control(bye)), 1.0)
            elif writer.done() and not writer.cancelled() and writer.exception() is not None:
                log.warning("SSE writer failed: %r", writer.exception())
        finally:
            for t in (writer, pinger, gone, stop):
                t.cancel()
            for t in (writer, pinger, gone, stop):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            hub.close(c, linger=linger)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _sse_frames(request: Request) -> list[dict[str, Any]]:
    q = request.query_params
    frames: list[dict[str, Any]] = []
    layers = q.get("layers")
    tiles = [t for t in q.get("tiles", "").split(",") if t.strip()]
    if tiles or layers:
        frame: dict[str, Any] = {"type": "track", "tiles": tiles}
        if layers:
            frame["layers"] = [v for v in layers.split(",") if v]
        frames.append(frame)
    if q.get("bbox"):
        try:
            bbox = [float(v) for v in q["bbox"].split(",")]
        except ValueError:
            raise FrameError("bad_area", "bbox=west,south,east,north in degrees") from None
        frames.append({"type": "area", "bbox": bbox, "minzoom": q.get("minzoom", 0),
                       "maxzoom": q.get("maxzoom", q.get("minzoom", 0))})  # fmt: skip
    return frames


async def sse(request: Request) -> Response | SSEStream:
    gw: Gateway = request.app.state.gateway
    hub = gw.hub
    try:
        scope = gw.http_scope(request)
    except FrameError as e:
        metrics.CONNECTS.labels("rejected_auth").inc()
        return json_response({"error": e.code, "message": e.message}, 401,
                             **{"WWW-Authenticate": "Bearer"})  # fmt: skip
    try:
        frames = _sse_frames(request)
        for f in frames:  # refuse bad parameters before opening anything
            if f["type"] == "track":
                parse_tiles(f["tiles"])
    except FrameError as e:
        return json_response({"error": e.code, "message": e.message}, 400)
    last = request.headers.get("last-event-id", "")
    c = None
    try:
        if last:
            c = hub.reattach(last.split(".", 1)[0], scope)
        if c is not None:
            return SSEStream(gw, c)  # its tiles, area and pending updates were kept
        c = hub.open("sse", scope)
    except Full:
        return gw.busy()
    if last:
        # Another process or a restart: the session (and any POSTed changes) is gone. The
        # URL's tiles are resumed from state; the client should POST its current set again.
        metrics.RESYNCS.labels("session_lost").inc()
        c.session.note(resync_frame("session_lost"))
    for f in frames:
        try:
            hub.apply(c, f)
        except FrameError as e:
            metrics.REFUSED.labels(e.code).inc()
            c.session.note(error_frame(e.code, e.message, **e.extra))
    return SSEStream(gw, c)


async def session_track(request: Request) -> Response:
    """``POST /v1/sessions/{id}/track``: change an open SSE stream's tiles or area."""
    gw: Gateway = request.app.state.gateway
    c = gw.hub.find(request.path_params["sid"])
    if c is None:
        return json_response(
            {"error": "unknown_session", "message": "no such session here: open a new /v1/sse"}, 404
        )
    try:
        scope = gw.http_scope(request)
    except FrameError as e:
        return json_response({"error": e.code, "message": e.message}, 401)
    if scope.sub != c.scope.sub:
        return json_response({"error": "forbidden", "message": "not your session"}, 403)
    raw = await request.body()
    if len(raw) > MAX_FRAME_BYTES:
        return json_response(
            {"error": "too_large", "message": f"at most {MAX_FRAME_BYTES} bytes"}, 413
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json_response(
            {"error": "bad_frame", "message": "the body is JSON: a frame or a list"}, 400
        )
    frames = doc if isinstance(doc, list) else [doc]
    errors = []
    for f in frames:
        if isinstance(f, dict):
            f.setdefault("type", "track")
        try:
            gw.hub.apply(c, f)
        except FrameError as e:
            metrics.REFUSED.labels(e.code).inc()
            errors.append({"code": e.code, "message": e.message, **e.extra})
    s = c.session
    status = 200 if not errors else (403 if all(e["code"] == "forbidden" for e in errors) else 400)
    return json_response(
        {"session": s.id, "tiles": len(s.tiles), "area_cells": len(s.cells), "errors": errors},
        status if len(errors) == len(frames) else 200,
    )


# -- operations --------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    reason = request.app.state.gateway.hub.not_ready_reason
    if reason is not None:
        return json_response({"status": "not ready", "reason": reason}, 503)
    return json_response({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: GatewaySettings) -> Starlette:
    gw = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.hub.start()
        # A full collection scans every live object (0.43 s at 2,000 sessions on the 2-core
        # machine, 80 ms of it the 69k objects of the imports): keep those out of every scan.
        gc.collect()
        gc.freeze()
        metrics.watch_gc()
        try:
            yield
        finally:
            await gw.hub.stop()

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/live", live),
            Route("/v1/sse", sse),
            Route("/v1/sessions/{sid}/track", session_track, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
