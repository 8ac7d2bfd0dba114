"""HMAC-SHA256 signing of requests and records, shared by the ingress, the dataflow and the client.

A signature is ``sha256=<hex>`` of HMAC-SHA256 under one of the active
secrets over ``METHOD "\\n" TARGET "\\n" timestamp "\\n" body``:

- an HTTP request signs its method and request target (``path?query``), so a
  signature made for ``POST /v1/events`` is no good for ``POST /v1/jobs`` nor
  for a ``GET`` (domain separation; a GET signs an empty body);
- a record on the raw Kafka topic signs the fixed pair ``RECORD`` /
  ``tilepipe:record`` (:data:`RECORD_METHOD`, :data:`RECORD_TARGET`): no HTTP
  method is ``RECORD``, so a request's signature never verifies as a record's
  and the other way round. The ingress signs every record it produces this way
  with its newest key; a producer writing to Kafka directly does the same.

None of the parts can contain the separator (a method is a token, a request
target has no raw newline, the timestamp is decimal digits), so the input is
unambiguous. Several secrets can be active at once, each with a key id, so a
secret can be rotated without downtime. Checks compare in constant time and
try every key without stopping at the first match, so timing says neither
whether a signature was close nor which key matched. Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

SIGNATURE_HEADER = "x-tilepipe-signature"
TIMESTAMP_HEADER = "x-tilepipe-timestamp"
RECORD_METHOD = "RECORD"
RECORD_TARGET = "tilepipe:record"
MIN_SECRET_BYTES = 32
"""HMAC-SHA256's own strength needs at least its output size in key (RFC 2104, section 3)."""
# Values the repository's examples and docs have shipped; a deployment using one
# signs with a secret anyone who read the repository has.
KNOWN_PLACEHOLDERS = frozenset({b"CHANGE-ME", b"CHANGEME", b"changeme", b"s3cret", b"secret"})
# A timestamp is unix seconds: 12 digits reach the year 33658. A longer header is
# refused before int() (whose cost grows with the digits) and before any float
# arithmetic on it (which overflows at ~309 digits).
MAX_TIMESTAMP_DIGITS = 12


def message(method: str, target: str, timestamp: str, body: bytes) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    return f"{method}\n{target}\n{timestamp}\n".encode() + body


def sign(
    secret: bytes,
    timestamp: str,
    body: bytes,
    *,
    method: str = RECORD_METHOD,
    target: str = RECORD_TARGET,
) -> str:
    """The ``x-tilepipe-signature`` header value; a record's unless ``method``/``target`` say."""
    mac = hmac.new(secret, message(method, target, timestamp, body), hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def parse_timestamp(value: str | bytes | None) -> int | None:
    """A signature timestamp header as unix seconds, or ``None``; never raises."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not 0 < len(value) <= MAX_TIMESTAMP_DIGITS or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def matching_key(
    secrets: Mapping[str, bytes],
    timestamp: bytes,
    body: bytes,
    signature: bytes,
    *,
    method: str = RECORD_METHOD,
    target: str = RECORD_TARGET,
) -> str | None:
    """The id of the active secret that ``signature`` was made with, or ``None``."""
    try:
        ts_text = timestamp.decode("ascii")
    except UnicodeDecodeError:
        return None
    found = None
    for key_id, secret in secrets.items():
        # No early exit: the time taken does not reveal which key matched.
        expected = sign(secret, ts_text, body, method=method, target=target).encode()
        if hmac.compare_digest(expected, signature):
            found = key_id
    return found


def record_signature_problem(
    secrets: Mapping[str, bytes],
    headers: Iterable[tuple[str, bytes]],
    body: bytes,
    *,
    read_ms: float | None = None,
    max_age_s: float | None = None,
) -> str | None:
    """Why a record's signature headers do not verify ``body``, or ``None`` when they do.

    With ``max_age_s``, a record signed longer than that before ``read_ms`` (when it
    was read) is refused too: it can only be an old record produced again, since
    nothing older than the topic's retention is legitimately on the topic.
    """
    found = {k.lower(): v for k, v in headers if k.lower() in (SIGNATURE_HEADER, TIMESTAMP_HEADER)}
    sig, ts = found.get(SIGNATURE_HEADER), found.get(TIMESTAMP_HEADER)
    if sig is None or ts is None:
        return f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}"
    seconds = parse_timestamp(ts)
    if seconds is None:
        return f"{TIMESTAMP_HEADER} is not unix seconds"
    if matching_key(secrets, ts, body, sig) is None:
        return f"{SIGNATURE_HEADER} does not match the record under any configured key"
    if max_age_s is not None and read_ms is not None:
        age = read_ms / 1000 - seconds
        if age > max_age_s:
            return (
                f"signed {age:.0f} s before it was read, over the {max_age_s:.0f} s"
                " TILEPIPE_SIGNATURE_MAX_AGE (a replayed record?)"
            )
    return None


def signature_valid(
    secrets: Mapping[str, bytes], headers: Iterable[tuple[str, bytes]], body: bytes
) -> bool:
    """Whether a record's signature headers match ``body`` under any active secret."""
    return record_signature_problem(secrets, headers, body) is None


def parse_secrets(text: str) -> dict[str, bytes]:
    """``keyid:secret[,keyid:secret]`` (commas or newlines) → secrets by key id, in order.

    A bare ``secret`` gets the key id ``key<i>``. Raises ``ValueError`` for an
    empty secret (anyone could sign with it) or a key id given twice; the
    message never contains a secret. The order is kept: the last key is the
    newest, the one the ingress signs records with.
    """
    out: dict[str, bytes] = {}
    items = [p.strip() for p in text.replace("\n", ",").split(",")]
    for i, item in enumerate(p for p in items if p):
        kid, sep, secret = item.partition(":")
        if not sep:
            kid, secret = f"key{i}", kid
        kid = kid.strip()
        if not kid or not secret:
            raise ValueError(f"entry {i + 1} of the HMAC secrets has an empty key id or secret")
        if kid in out:
            raise ValueError(f"HMAC key id {kid!r} is given twice")
        out[kid] = secret.encode()
    return out


def check_strength(secrets: Mapping[str, bytes], setting: str = "TILEPIPE_HMAC_SECRETS") -> None:
    """Raise ``ValueError`` (one line, naming the key id, never the secret) for a weak secret.

    A service refuses to start on a placeholder from the examples or a secret
    shorter than :data:`MIN_SECRET_BYTES`; ``tilepipe send`` and the library
    functions do not check, so tests and clients can sign with anything.
    """
    for kid, secret in secrets.items():
        if secret.strip() in KNOWN_PLACEHOLDERS or b"CHANGE-ME" in secret:
            raise ValueError(
                f"HMAC key {kid!r} in {setting} is a placeholder from the examples; generate a"
                " real one: openssl rand -hex 32"
            )
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"HMAC key {kid!r} in {setting} is {len(secret)} bytes, under the"
                f" {MIN_SECRET_BYTES} required; generate one with: openssl rand -hex 32"
            )
