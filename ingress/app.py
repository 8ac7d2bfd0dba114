"""The ingress as an ASGI app (Starlette): its routes, its health, its lifespan.

``POST /v1/events`` is :mod:`ingress.events`; ``/v1/jobs`` (with a render
ledger) is :mod:`ingress.jobs`; both authenticate through :mod:`ingress.auth`.
Handlers raise :class:`~ingress.responses.Rejected` and Starlette's
``exception_handlers`` (:func:`ingress.responses.exception_handlers`) answer
every error with the one JSON envelope. The ingress is not a stage of the
dataflow: it runs the checks of stages 1-2 (``docs/ARCHITECTURE.md``) before it
produces, and it does not load Bytewax.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress import jobs as jobs_api
from ingress import metrics
from ingress.auth import Auth
from ingress.events import EVENT_ID_HEADER, INGEST_HEADER, KEY_ID_HEADER, Events, Producer
from ingress.jobs import JobsAPI
from ingress.responses import RequestMetrics, exception_handlers, json_response
from ingress.settings import IngressSettings
from tilepipe.serving import host_port

__all__ = ["EVENT_ID_HEADER", "INGEST_HEADER", "KEY_ID_HEADER", "Ingress", "create_app"]

log = logging.getLogger("tilepipe.ingress")


class Ingress:
    """The state behind the app: secrets, producer, the events endpoint, the job API."""

    def __init__(
        self,
        settings: IngressSettings,
        secrets: dict[str, bytes],
        producer: Producer,
        jobs: JobsAPI | None = None,
    ) -> None:
        if not secrets:
            raise ValueError("the ingress needs at least one HMAC secret")
        self.settings = settings
        self.secrets = secrets
        self.producer = producer
        self.jobs = jobs
        self.auth = Auth(
            secrets,
            settings.signature_tolerance.total_seconds(),
            settings.body_timeout.total_seconds(),
            settings.max_unauthenticated_bytes,
        )
        self.events = Events(settings, self.auth, secrets, producer)
        self.ready = False

    async def jobs_call(self, request: Request) -> Response:
        assert self.jobs is not None
        return await jobs_api.handle(self.jobs, self.auth, request)

    # -- health ---------------------------------------------------------------------

    async def healthz(self, _request: Request) -> Response:
        if not self.producer.alive:
            return json_response(503, {"status": "kafka delivery reports are not served"})
        return json_response(200, {"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        if not self.ready:
            return json_response(503, {"status": "starting or stopping"})
        return json_response(200, {"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        if not self._on_metrics_port(request):
            return Response(status_code=404)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    def _on_metrics_port(self, request: Request) -> bool:
        """With ``metrics_listen`` set, /metrics is served on that port only."""
        if self.settings.metrics_listen is None:
            return True
        server = request.scope.get("server")
        return server is not None and server[1] == host_port(self.settings.metrics_listen)[1]


def create_app(ingress: Ingress) -> Starlette:
    """The ASGI app; its lifespan starts the producer and drains it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        ingress.producer.start(asyncio.get_running_loop())
        await asyncio.to_thread(ingress.producer.warm_up, 10.0)
        ingress.ready = True
        try:
            yield
        finally:
            ingress.ready = False
            grace = ingress.settings.shutdown_grace.total_seconds()
            left = await asyncio.to_thread(ingress.producer.close, grace)
            if left:
                log.error("%d records were still unacknowledged at shutdown", left)

    job_routes = []
    if ingress.jobs is not None:
        job_routes = [
            Route("/v1/jobs", ingress.jobs_call, methods=["POST", "GET"]),
            Route("/v1/jobs/{id}", ingress.jobs_call, methods=["GET"]),
        ]
    return Starlette(
        routes=[
            *job_routes,
            Route("/v1/events", ingress.events.post, methods=["POST"]),
            Route("/healthz", ingress.healthz, methods=["GET"]),
            Route("/readyz", ingress.readyz, methods=["GET"]),
            Route("/metrics", ingress.metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(RequestMetrics, jobs=ingress.jobs is not None)],
        exception_handlers=exception_handlers(ingress.settings.retry_after),
        lifespan=lifespan,
    )
