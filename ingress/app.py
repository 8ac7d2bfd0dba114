"""The ingress as an ASGI app (Starlette): ``POST /v1/events`` and the health endpoints.

A request is checked from the cheapest test to the dearest, and nothing
reaches the broker until it passed all that apply to the whole request:

1. signature headers present, timestamp (at most 12 digits) within the tolerance
   window → else 401
2. ``Content-Type`` JSON or NDJSON → else 415
3. body within ``max_request_bytes`` (read with the limit) → else 413, and whole
   within ``body_timeout`` → else 408; while all unverified bodies together hold
   ``max_unauthenticated_bytes`` → 503 + Retry-After
4. HMAC of ``POST\n/v1/events\ntimestamp\nbody`` (:mod:`tilepipe.signing`)
   matches an active secret → else 401
5. each record valid by the dataflow's own rules → else its 400/413/422
6. records whose ``(key_id, source, event_id)`` the window remembers → 202, not
   produced again; the same identity with other bytes → 409
7. the rest produced with ``acks=all``; 202 once acknowledged, else 503 + Retry-After

Every record on the topic carries its event id, the request's timestamp, a
record signature (``RECORD`` domain) made with the ingress's newest key, the id
of that key, and the ingest time, which never goes backwards in this process:
header ``x-tilepipe-ingest-ms`` and the Kafka message timestamp. Re-signing with
the newest key, whatever key the client used, means a key can be retired at the
ingress without touching what is on the topic: the dataflow only needs the keys
records were signed with, which after a rotation is one (README, "Rotating keys").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ingress import jobs as jobs_api
from ingress import metrics
from ingress.dedup import DedupWindow, EventIdentity, IngestClock, digest
from ingress.intake import (
    ACCEPTED_MEDIA_TYPES,
    Checked,
    body_kind,
    check_records,
    rejection_result,
    split_records,
)
from ingress.jobs import JobsAPI
from ingress.producer import OutRecord
from ingress.settings import IngressSettings
from operators.validate import ValidationConfig
from tilepipe.serving import host_port
from tilepipe.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    matching_key,
    parse_timestamp,
    sign,
)

log = logging.getLogger("tilepipe.ingress")

EVENT_ID_HEADER = "x-tilepipe-event-id"
KEY_ID_HEADER = "x-tilepipe-key-id"
INGEST_HEADER = "x-tilepipe-ingest-ms"


class Producer(Protocol):
    """What the app needs of a producer (:class:`ingress.producer.AsyncProducer`)."""

    @property
    def alive(self) -> bool: ...
    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def warm_up(self, timeout_s: float) -> None: ...
    def close(self, timeout_s: float) -> int: ...
    async def send(self, records: Sequence[OutRecord]) -> list[str | None]: ...


class Rejected(Exception):
    """The whole request is refused; nothing is produced."""

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


class Ingress:
    """The state behind the app: secrets, producer, dedup window, ingest clock."""

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
        self.tolerance_s = settings.signature_tolerance.total_seconds()
        self.body_timeout_s = settings.body_timeout.total_seconds()
        # Records are signed with the newest key: the last one listed.
        self.signing_key_id = list(secrets)[-1]
        # Bytes buffered by bodies whose signature is not checked yet, all requests together.
        self.unverified_bytes = 0
        self.window = DedupWindow(settings.dedup_window.total_seconds(), settings.dedup_max_entries)
        self.clock = IngestClock()
        self.rules = settings.geometry_rules()
        self.config = ValidationConfig(
            max_record_bytes=settings.max_record_bytes,
            max_future_ms=int(settings.max_future.total_seconds() * 1000),
            hmac_secrets=None,  # the request's signature is checked once, over the body
            geometry=self.rules,
        )
        # identity -> (digest, whether its produce succeeded), for requests racing on one id.
        self._in_flight: dict[EventIdentity, tuple[bytes, asyncio.Future[bool]]] = {}
        self.ready = False

    # -- the endpoint ---------------------------------------------------------------

    async def post_events(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await self._handle(request)
        except Rejected as r:
            response = self._refuse(request, r)
        except ClientDisconnect:
            metrics.REJECTIONS.labels("client_disconnected").inc()
            response = Response(status_code=400)
        except Exception:
            log.exception("ingress: unexpected error handling a request")
            metrics.REJECTIONS.labels("internal_error").inc()
            response = json_response(
                500, {"error": "internal_error", "message": "unexpected error; see the logs"}
            )
        metrics.REQUESTS.labels(str(response.status_code)).inc()
        metrics.REQUEST_LATENCY.observe(time.perf_counter() - started)
        return response

    def _refuse(self, request: Request, r: Rejected) -> Response:
        metrics.REJECTIONS.labels(r.reason).inc()
        client = request.client.host if request.client else None
        log.info("request rejected: %s", r.reason, extra={"status": r.status, "client": client})
        headers = {"Retry-After": str(self.settings.retry_after)} if r.status == 503 else None
        return json_response(
            r.status, {"error": r.reason, "message": r.message, **r.extra}, headers
        )

    async def _handle(self, request: Request) -> Response:
        headers = request.headers
        signature = headers.get(SIGNATURE_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        self._check_timestamp(signature, timestamp)
        kind = body_kind(headers.get("content-type"))
        if kind is None:
            raise Rejected(
                415,
                "unsupported_media_type",
                f"Content-Type must be {' or '.join(ACCEPTED_MEDIA_TYPES)} (UTF-8)",
            )
        body = await self._read_body(request)
        key_id = self._authenticate(request, body)

        values = split_records(body, kind)
        if not values:
            raise Rejected(400, "empty_body", "the request has no records")
        if len(values) > self.settings.max_batch_records:
            raise Rejected(
                413,
                "too_many_records",
                f"{len(values)} records, over the limit of {self.settings.max_batch_records}"
                " a request; split the batch",
            )
        now = time.time() * 1000
        # Off the event loop, so /healthz and other requests are answered meanwhile.
        checked = await asyncio.to_thread(check_records, values, self.config, now)
        results: list[dict[str, Any] | None] = [None] * len(checked)
        good: list[Checked] = []
        for c in checked:
            if c.rejection is None:
                good.append(c)
            else:
                results[c.index] = rejection_result(c, self.rules)
                metrics.REJECTIONS.labels(c.rejection.reason).inc()
        assert timestamp is not None
        await self._produce(good, results, timestamp, key_id)
        return self._answer(results, kind)

    def _check_timestamp(self, signature: str | None, timestamp: str | None) -> None:
        if not signature or not timestamp:
            metrics.SIGNATURE_FAILURES.labels("missing").inc()
            raise Rejected(
                401,
                "missing_signature",
                f"sign the request: {TIMESTAMP_HEADER} (unix seconds) and {SIGNATURE_HEADER}:"
                " sha256=HMAC-SHA256(secret, METHOD + '\\n' + path?query + '\\n' + timestamp"
                " + '\\n' + body)",
            )
        ts = parse_timestamp(timestamp)
        if ts is None:  # never int() or float arithmetic on an unbounded header
            metrics.SIGNATURE_FAILURES.labels("malformed").inc()
            raise Rejected(401, "bad_timestamp", f"{TIMESTAMP_HEADER} must be unix seconds")
        skew = time.time() - ts
        if abs(skew) > self.tolerance_s:
            metrics.SIGNATURE_FAILURES.labels("expired").inc()
            raise Rejected(
                401,
                "expired_signature",
                f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s {'old' if skew > 0 else 'ahead'},"
                f" outside the {self.tolerance_s:.0f} s window; sign with the current time"
                " (and check the client's clock)",
            )

    async def _read_body(self, request: Request, limit: int | None = None) -> bytes:
        """The body, refused (413) as soon as it passes ``limit`` (the events' by default)."""
        limit = self.settings.max_request_bytes if limit is None else limit
        too_large = Rejected(
            413, "too_large", f"the body is over the {limit}-byte limit; send smaller batches"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        budget = self.settings.max_unauthenticated_bytes
        chunks: list[bytes] = []
        size = 0
        # Bytes of this body counted in unverified_bytes. They are released when the
        # read ends; the caller checks the signature before its next await, so the
        # count covers every unverified byte the event loop can see.
        held = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    if self.unverified_bytes + len(chunk) > budget:
                        raise Rejected(
                            503,
                            "busy",
                            "too many request bodies are arriving at once; retry after Retry-After",
                        )
                    self.unverified_bytes += len(chunk)
                    held += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            raise Rejected(
                408,
                "body_timeout",
                f"the body did not arrive within {self.body_timeout_s:g} s; send it at once"
                " (or smaller batches)",
            ) from None
        finally:
            self.unverified_bytes -= held
        return b"".join(chunks)

    async def _produce(
        self,
        good: list[Checked],
        results: list[dict[str, Any] | None],
        timestamp: str,
        key_id: str,
    ) -> None:
        """Produce the records not seen before; fill in every record's result."""
        loop = asyncio.get_running_loop()
        to_send: list[tuple[Checked, EventIdentity, asyncio.Future[bool]]] = []
        waiting: list[tuple[Checked, asyncio.Future[bool]]] = []
        for c in good:
            assert c.event_id is not None and c.source is not None
            identity = (key_id, c.source, c.event_id)
            seen = self.window.get(identity)
            racing = self._in_flight.get(identity)  # an earlier record, or a concurrent request
            known = seen if seen is not None else racing[0] if racing is not None else None
            if known is not None and known != digest(c.value):
                results[c.index] = _conflict(c)
                metrics.REJECTIONS.labels("event_id_conflict").inc()
            elif seen is not None:
                results[c.index] = _ok(c, "duplicate")
            elif racing is not None:
                waiting.append((c, racing[1]))
            else:
                fut: asyncio.Future[bool] = loop.create_future()
                self._in_flight[identity] = (digest(c.value), fut)
                to_send.append((c, identity, fut))
        try:
            if to_send:
                ingest_ms = self.clock.now_ms()
                ingest = str(ingest_ms).encode()
                ts = timestamp.encode()
                signer = self.signing_key_id
                secret = self.secrets[signer]
                records = [
                    OutRecord(
                        key=c.key.encode(),  # type: ignore[union-attr]
                        value=c.value,
                        headers=[
                            (EVENT_ID_HEADER, c.event_id.encode()),  # type: ignore[union-attr]
                            (TIMESTAMP_HEADER, ts),
                            (SIGNATURE_HEADER, sign(secret, timestamp, c.value).encode()),
                            (KEY_ID_HEADER, signer.encode()),
                            (INGEST_HEADER, ingest),
                        ],
                        timestamp_ms=ingest_ms,
                    )
                    for c, _, _ in to_send
                ]
                started = time.perf_counter()
                errors = await self.producer.send(records)
                metrics.PRODUCE_LATENCY.observe(time.perf_counter() - started)
                failures = [e for e in errors if e is not None]
                if failures:
                    log.warning(
                        "broker did not acknowledge %d of %d records: %s",
                        len(failures),
                        len(records),
                        failures[0],
                    )
                for (c, identity, fut), err in zip(to_send, errors, strict=True):
                    if err is None:
                        self.window.add(identity, self._in_flight[identity][0])
                        results[c.index] = _ok(c, "accepted")
                    else:
                        results[c.index] = self._unavailable(c)
                    fut.set_result(err is None)
        finally:
            for _, identity, fut in to_send:
                if not fut.done():  # cancelled or failed before the broker answered
                    fut.set_result(False)
                self._in_flight.pop(identity, None)
        for c, fut in waiting:
            acked = await asyncio.shield(fut)
            results[c.index] = _ok(c, "duplicate") if acked else self._unavailable(c)
        metrics.DEDUP_ENTRIES.set(len(self.window))

    def _unavailable(self, c: Checked) -> dict[str, Any]:
        return {"index": c.index, "event_id": c.event_id, "status": 503, "result": "unavailable"}

    def _answer(self, results: list[dict[str, Any] | None], kind: str) -> Response:
        done = [r for r in results if r is not None]
        assert len(done) == len(results)
        tally = {"accepted": 0, "duplicate": 0, "rejected": 0, "unavailable": 0}
        for r in done:
            tally[r["result"]] += 1
        for result, n in tally.items():
            if n:
                metrics.RECORDS.labels(result).inc(n)
        doc: dict[str, Any] = {**tally, "results": done}
        headers = None
        if tally["unavailable"]:
            status = 503
            metrics.REJECTIONS.labels("broker_unavailable").inc()
            headers = {"Retry-After": str(self.settings.retry_after)}
            doc["error"] = "broker_unavailable"
            doc["message"] = (
                "the broker did not acknowledge some records; repeat the request after"
                " Retry-After (records already accepted are not written twice)"
            )
        elif tally["accepted"] or tally["duplicate"]:
            status = 202
        else:  # every record rejected: their common status, or 422 for a mixed batch
            statuses = {r["status"] for r in done}
            status = statuses.pop() if len(statuses) == 1 else 422
            doc["error"] = "invalid_records" if kind == "ndjson" else done[0]["reason"]
        if tally["rejected"] and status != 503:
            log.info(
                "records rejected",
                extra={"rejected": tally["rejected"], "of": len(done), "status": status},
            )
        return json_response(status, doc, headers)

    # -- the job API (ingress/jobs.py) -------------------------------------------------

    def _authenticate(self, request: Request, body: bytes) -> str:
        """The id of the key the request is signed with; raises :class:`Rejected` if none.

        The signature covers the method, the request target as sent (``path?query``),
        the timestamp and the body (empty for a GET): :mod:`tilepipe.signing`.
        """
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        self._check_timestamp(signature, timestamp)
        assert signature is not None and timestamp is not None
        key_id = matching_key(
            self.secrets,
            timestamp.encode("latin-1"),
            body,
            signature.encode("latin-1"),
            method=request.method,
            target=request_target(request),
        )
        if key_id is None:
            metrics.SIGNATURE_FAILURES.labels("mismatch").inc()
            raise Rejected(
                401,
                "bad_signature",
                f"{SIGNATURE_HEADER} does not match the request under any active key (it"
                " signs METHOD, path?query, timestamp and body: see the README, Signing)",
            )
        metrics.SIGNATURES_VERIFIED.labels(key_id).inc()
        return key_id

    async def _jobs_call(self, request: Request) -> Response:
        assert self.jobs is not None
        try:
            if request.method == "POST":
                self._check_timestamp(
                    request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
                )
                if body_kind(request.headers.get("content-type")) != "json":
                    raise Rejected(415, "unsupported_media_type", "Content-Type: application/json")
                body = await self._read_body(request, jobs_api.MAX_BODY)
                self._authenticate(request, body)
                response = await jobs_api.post_job(self.jobs, request, body)
            else:
                self._authenticate(request, b"")
                if "id" in request.path_params:
                    response = await jobs_api.get_job(self.jobs, request.path_params["id"])
                else:
                    response = await jobs_api.list_jobs(
                        self.jobs, request.query_params.get("state")
                    )
        except Rejected as r:
            response = self._refuse(request, r)
        except ClientDisconnect:
            response = Response(status_code=400)
        except Exception:
            log.exception("ingress: unexpected error handling a job request")
            response = json_response(
                500, {"error": "internal_error", "message": "unexpected error; see the logs"}
            )
        metrics.JOB_REQUESTS.labels(request.method, str(response.status_code)).inc()
        return response

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


def _ok(c: Checked, result: str) -> dict[str, Any]:
    return {"index": c.index, "event_id": c.event_id, "status": 202, "result": result}


def _conflict(c: Checked) -> dict[str, Any]:
    return {
        "index": c.index,
        "event_id": c.event_id,
        "status": 409,
        "result": "rejected",
        "reason": "event_id_conflict",
        "message": "this event_id was accepted from this key and source with other content"
        " within the dedup window; give a new event a new event_id",
    }


def request_target(request: Request) -> str:
    """``path?query`` exactly as the client sent it (what the client signed)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.url.path
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


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
            Route("/v1/jobs", ingress._jobs_call, methods=["POST", "GET"]),
            Route("/v1/jobs/{id}", ingress._jobs_call, methods=["GET"]),
        ]
    return Starlette(
        routes=[
            *job_routes,
            Route("/v1/events", ingress.post_events, methods=["POST"]),
            Route("/healthz", ingress.healthz, methods=["GET"]),
            Route("/readyz", ingress.readyz, methods=["GET"]),
            Route("/metrics", ingress.metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
