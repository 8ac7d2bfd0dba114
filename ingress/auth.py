"""Who sent a request: its signature headers, its body read within limits, its key.

Requests are signed over ``METHOD\npath?query\ntimestamp\nbody``
(:mod:`tilepipe.signing`). The cheap checks come first: :meth:`Auth.check_timestamp`
refuses a missing, malformed or stale timestamp before any body is read;
:meth:`Auth.read_body` reads the body within its byte limit, its deadline and
the budget of bytes all unverified bodies together may hold; then
:meth:`Auth.authenticate` finds the key whose HMAC matches. Every refusal is a
:class:`~ingress.responses.Rejected` (401, 408, 413 or 503) that says what to fix.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from ingress import metrics
from ingress.responses import Rejected
from tilepipe.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, matching_key, parse_timestamp


class Auth:
    """The request signature check, with the ingress's secrets and limits."""

    def __init__(
        self,
        secrets: dict[str, bytes],
        tolerance_s: float,
        body_timeout_s: float,
        max_unauthenticated_bytes: int,
    ) -> None:
        self.secrets = secrets
        self.tolerance_s = tolerance_s
        self.body_timeout_s = body_timeout_s
        self.max_unauthenticated_bytes = max_unauthenticated_bytes
        # Bytes buffered by bodies whose signature is not checked yet, all requests together.
        self.unverified_bytes = 0

    def check_timestamp(self, request: Request) -> str:
        """The request's timestamp header, once it and a signature are present and fresh."""
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
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
        return timestamp

    def authenticate(self, request: Request, body: bytes) -> str:
        """The id of the key the request is signed with; raises :class:`Rejected` if none.

        The signature covers the method, the request target as sent (``path?query``),
        the timestamp and the body (empty for a GET): :mod:`tilepipe.signing`.
        """
        timestamp = self.check_timestamp(request)
        signature = request.headers[SIGNATURE_HEADER]
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

    async def read_body(self, request: Request, limit: int) -> bytes:
        """The body, refused (413) as soon as it passes ``limit``."""
        too_large = Rejected(
            413, "too_large", f"the body is over the {limit}-byte limit; send smaller batches"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        budget = self.max_unauthenticated_bytes
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


def request_target(request: Request) -> str:
    """``path?query`` exactly as the client sent it (what the client signed)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.url.path
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path
