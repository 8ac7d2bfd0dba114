"""HMAC-SHA256 request signing, shared by the ingress, the dataflow and the client.

A signature is ``sha256=<hex>`` of HMAC-SHA256 over ``timestamp + "." + body``
under one of the active secrets. Several secrets can be active at once, each
with a key id, so a secret can be rotated without downtime: add the new one,
move producers over, retire the old one. Checks compare in constant time and
try every key without stopping at the first match, so timing says neither
whether a signature was close nor which key matched. Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

SIGNATURE_HEADER = "x-tilepipe-signature"
TIMESTAMP_HEADER = "x-tilepipe-timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``x-tilepipe-signature`` header value for ``body``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def matching_key(
    secrets: Mapping[str, bytes], timestamp: bytes, body: bytes, signature: bytes
) -> str | None:
    """The id of the active secret that ``signature`` was made with, or ``None``."""
    try:
        ts_text = timestamp.decode("ascii")
    except UnicodeDecodeError:
        return None
    found = None
    for key_id, secret in secrets.items():
        # No early exit: the time taken does not reveal which key matched.
        if hmac.compare_digest(sign(secret, ts_text, body).encode(), signature):
            found = key_id
    return found


def signature_valid(
    secrets: Mapping[str, bytes], headers: Iterable[tuple[str, bytes]], body: bytes
) -> bool:
    """Whether the signature headers match ``body`` under any active secret."""
    found = {k.lower(): v for k, v in headers if k.lower() in (SIGNATURE_HEADER, TIMESTAMP_HEADER)}
    sig, ts = found.get(SIGNATURE_HEADER), found.get(TIMESTAMP_HEADER)
    if sig is None or ts is None:
        return False
    return matching_key(secrets, ts, body, sig) is not None


def parse_secrets(text: str) -> dict[str, bytes]:
    """``keyid:secret[,keyid:secret]`` (commas or newlines) → secrets by key id.

    A bare ``secret`` gets the key id ``key<i>``. Raises ``ValueError`` for an
    empty secret (anyone could sign with it) or a key id given twice; the
    message never contains a secret.
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
