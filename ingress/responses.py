"""The ingress's JSON answers, and the one mapping of its errors to them.

Every error answer is ``{"error": <code>, "message": <what to do>, ...}``, built
by :func:`error_response`. Handlers do not catch: they raise :class:`Rejected`,
and :func:`exception_handlers` (Starlette's ``exception_handlers``) turns it,
a client that went away, or a bug of ours into that answer, for every route.
:class:`RequestMetrics` counts what was answered, whichever way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress import metrics

log = logging.getLogger("tilepipe.ingress")


class Rejected(Exception):
    """The whole request is refused; nothing is produced. ``reason`` is the ``error`` code."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.extra = extra


def json_response(
    status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(doc), status, headers, media_type="application/json")


def error_response(
    status: int,
    reason: str,
    message: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The error envelope, the only place it is built."""
    return json_response(status, {"error": reason, "message": message, **extra}, headers)


Handler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers(retry_after_s: int) -> dict[Any, Handler]:
    """What each error answers; a 503 says when to come back (``Retry-After``)."""

    async def rejected(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Rejected)
        metrics.REJECTIONS.labels(exc.reason).inc()
        client = request.client.host if request.client else None
        log.info("request rejected: %s", exc.reason, extra={"status": exc.status, "client": client})
        headers = {"Retry-After": str(retry_after_s)} if exc.status == 503 else None
        return error_response(exc.status, exc.reason, exc.message, headers, **exc.extra)

    async def disconnected(_request: Request, _exc: Exception) -> Response:
        metrics.REJECTIONS.labels("client_disconnected").inc()
        return Response(status_code=400)  # nobody is listening for a body

    async def internal(request: Request, _exc: Exception) -> Response:
        # Starlette raises the exception again once this is sent, and uvicorn logs its
        # traceback; this line says which request it was.
        log.error("ingress: unexpected error handling %s %s", request.method, request.url.path)
        metrics.REJECTIONS.labels("internal_error").inc()
        return error_response(500, "internal_error", "unexpected error; see the logs")

    return {Rejected: rejected, ClientDisconnect: disconnected, Exception: internal}


class RequestMetrics:
    """Counts every answer to ``/v1/events`` and ``/v1/jobs`` by status, and times the
    events': an ASGI middleware, so the answers the exception handlers make count too
    (an exception that escapes them is counted as the 500 it becomes)."""

    def __init__(self, app: ASGIApp, jobs: bool) -> None:
        self.app = app
        self.jobs = jobs  # whether /v1/jobs is served at all

    def _counted(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        path, method = scope["path"], scope["method"]
        if path == "/v1/events":
            return method == "POST"
        return self.jobs and path.startswith("/v1/jobs") and method in ("GET", "POST")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._counted(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if path == "/v1/events":
                metrics.REQUESTS.labels(str(status)).inc()
                metrics.REQUEST_LATENCY.observe(time.perf_counter() - started)
            else:
                metrics.JOB_REQUESTS.labels(scope["method"], str(status)).inc()
