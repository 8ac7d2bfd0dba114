"""``POST /v1/events``: from a signed request to records acknowledged by the broker.

A request is checked from the cheapest test to the dearest, and nothing
reaches the broker until it passed all that apply to the whole request:

1. signature headers present, timestamp (at most 12 digits) within the tolerance
   window → else 401 (:mod:`ingress.auth`)
2. ``Content-Type`` JSON or NDJSON → else 415
3. body within ``max_request_bytes`` (read with the limit) → else 413, and whole
   within ``body_timeout`` → else 408; while all unverified bodies together hold
   ``max_unauthenticated_bytes`` → 503 + Retry-After
4. HMAC of ``POST\n/v1/events\ntimestamp\nbody`` (:mod:`tilepipe.signing`)
   matches an active secret → else 401
5. each record valid by the dataflow's own rules (stages 1-2 of
   ``docs/ARCHITECTURE.md``, :mod:`ingress.intake`) → else its 400/413/422
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
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from ingress import metrics
from ingress.auth import Auth
from ingress.dedup import DedupWindow, EventIdentity, IngestClock, digest
from ingress.intake import (
    ACCEPTED_MEDIA_TYPES,
    Checked,
    body_kind,
    check_records,
    rejection_result,
    split_records,
)
from ingress.producer import OutRecord
from ingress.responses import Rejected, json_response
from ingress.settings import IngressSettings
from operators.validate import ValidationConfig
from tilepipe.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger("tilepipe.ingress")

EVENT_ID_HEADER = "x-tilepipe-event-id"
KEY_ID_HEADER = "x-tilepipe-key-id"
INGEST_HEADER = "x-tilepipe-ingest-ms"


class Producer(Protocol):
    """What the ingress needs of a producer (:class:`ingress.producer.AsyncProducer`)."""

    @property
    def alive(self) -> bool: ...
    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def warm_up(self, timeout_s: float) -> None: ...
    def close(self, timeout_s: float) -> int: ...
    async def send(self, records: Sequence[OutRecord]) -> list[str | None]: ...


class Events:
    """The events endpoint's state: the dedup window, the ingest clock, records in flight."""

    def __init__(
        self,
        settings: IngressSettings,
        auth: Auth,
        secrets: dict[str, bytes],
        producer: Producer,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.secrets = secrets
        self.producer = producer
        # Records are signed with the newest key: the last one listed.
        self.signing_key_id = list(secrets)[-1]
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

    async def post(self, request: Request) -> Response:
        timestamp = self.auth.check_timestamp(request)
        kind = body_kind(request.headers.get("content-type"))
        if kind is None:
            raise Rejected(
                415,
                "unsupported_media_type",
                f"Content-Type must be {' or '.join(ACCEPTED_MEDIA_TYPES)} (UTF-8)",
            )
        body = await self.auth.read_body(request, self.settings.max_request_bytes)
        key_id = self.auth.authenticate(request, body)

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
        await self._produce(good, results, timestamp, key_id)
        return self._answer(results, kind)

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
