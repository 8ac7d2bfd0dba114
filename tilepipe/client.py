"""Sign and post events to a tilepipe ingress (``tilepipe send`` is built on it).

Standard library only, so any Python can use it::

    from tilepipe.client import send_events
    result = send_events("http://127.0.0.1:8080", [event], secret=b"s3cret")
    assert result.ok, result.body

One event goes as ``application/json``, several as one NDJSON batch. A 503
or a connection failure is retried (honouring ``Retry-After``, re-signed with
a fresh timestamp): the ingress answers a repeated ``event_id`` with 202 and
does not write it twice, so a retry is always safe.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tilepipe.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

EVENTS_PATH = "/v1/events"
MAX_RETRY_WAIT_S = 30.0


@dataclass
class SendResult:
    """The ingress's answer to one request (after any retries)."""

    status: int
    body: dict[str, Any]
    retry_after: float | None = None
    attempts: int = 1
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every record is on the topic (accepted now or before)."""
        return self.status == 202 and not self.body.get("rejected")

    def count(self, result: str) -> int:
        return int(self.body.get(result, 0))


def encode(event: Mapping[str, Any] | bytes | str) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode()
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(
    secret: bytes,
    body: bytes,
    timestamp: int | None = None,
    *,
    method: str = "POST",
    target: str = EVENTS_PATH,
) -> dict[str, str]:
    """``X-Tilepipe-Timestamp`` and ``X-Tilepipe-Signature`` for a request, signed now.

    The signature binds ``method`` and ``target`` (the request's ``path?query``) as
    well as the body (empty for a GET): see :mod:`tilepipe.signing`.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(secret, ts, body, method=method, target=target),
    }


def send_events(
    url: str,
    events: Iterable[Mapping[str, Any] | bytes | str],
    *,
    secret: bytes,
    timeout: float = 30.0,
    retries: int = 3,
    cafile: str | None = None,
    batch: bool | None = None,
) -> SendResult:
    """Post ``events`` in one request, signed with ``secret``; retry 503s and lost connections.

    :arg url: the ingress (``http://host:8080``) or its full events URL.
    :arg batch: force NDJSON (``True``) or a single JSON event (``False``); by default one
        event is sent as JSON and more as NDJSON.
    :raises OSError: the ingress could not be reached, after the retries.
    """
    records = [encode(e) for e in events]
    if not records:
        raise ValueError("no events to send")
    as_batch = len(records) > 1 if batch is None else batch
    if not as_batch and len(records) != 1:
        raise ValueError("a single JSON request carries exactly one event")
    body = b"\n".join(records) + b"\n" if as_batch else records[0]
    ctype = "application/x-ndjson" if as_batch else "application/json"
    attempt = 0
    while True:
        attempt += 1
        try:
            result = post(url, body, ctype, secret=secret, timeout=timeout, cafile=cafile)
        except OSError:
            if attempt > retries:
                raise
            time.sleep(min(2.0 ** (attempt - 1), MAX_RETRY_WAIT_S))
            continue
        result.attempts = attempt
        if result.status != 503 or attempt > retries:
            return result
        time.sleep(min(result.retry_after or 1.0, MAX_RETRY_WAIT_S))


def post(
    url: str,
    body: bytes,
    content_type: str,
    *,
    secret: bytes | None,
    timeout: float = 30.0,
    cafile: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> SendResult:
    """One signed POST (unsigned when ``secret`` is None), no retries."""
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else EVENTS_PATH
    if parts.query:
        path += "?" + parts.query
    headers = {"Content-Type": content_type, **(extra_headers or {})}
    if secret is not None:
        headers |= signed_headers(secret, body, target=path)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context
        )
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        raise ValueError(f"{url!r}: expected an http:// or https:// URL")
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {"error": "not_json", "message": raw[:200].decode(errors="replace")}
    retry = resp.getheader("Retry-After")
    return SendResult(
        status=resp.status,
        body=doc if isinstance(doc, dict) else {"response": doc},
        retry_after=float(retry) if retry and retry.isdigit() else None,
        headers={k.lower(): v for k, v in resp.getheaders()},
    )
