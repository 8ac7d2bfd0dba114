"""What a render job is, and the key that makes the same trigger twice one job.

The key hashes only what identifies the tile release to render:
``(tms, z, x, y, version)``. Versions are normalised first (``"2"`` and
``"2.0"`` are one version), so two triggers for the same release collapse
into one job however they were spelled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from tilepipe.records import TileUpdate
from tilepipe.versions import Version, version_key


def job_key(tms: str, z: int, x: int, y: int, version: Version) -> str:
    """32 hex digits of SHA-256 over the tile and its normalised version."""
    vkey = ".".join(str(p) for p in version_key(version))
    return hashlib.sha256(f"{tms}\x1f{z}\x1f{x}\x1f{y}\x1f{vkey}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RenderJob:
    """One tile release to render and commit."""

    tms: str
    z: int
    x: int
    y: int
    version: Version
    hash: str = ""  # the TileUpdate's hash, echoed in the broadcast after commit
    enqueued_ms: int = 0
    deadline_ms: int | None = None
    """Epoch milliseconds after which rendering is pointless: degrade to invalidate-only."""

    @property
    def key(self) -> str:
        return job_key(self.tms, self.z, self.x, self.y, self.version)

    @property
    def tile(self) -> str:
        return f"{self.tms}/{self.z}/{self.x}/{self.y}"

    @property
    def vkey(self) -> tuple[int, ...]:
        return version_key(self.version)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "tms": self.tms, "z": self.z, "x": self.x, "y": self.y,
                "version": self.version, "hash": self.hash,
                "enqueued_ms": self.enqueued_ms, "deadline_ms": self.deadline_ms,
            }
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes | str) -> RenderJob:
        d = orjson.loads(raw)
        return cls(
            tms=d["tms"], z=int(d["z"]), x=int(d["x"]), y=int(d["y"]), version=d["version"],
            hash=d.get("hash", ""), enqueued_ms=int(d.get("enqueued_ms") or 0),
            deadline_ms=d.get("deadline_ms"),
        )  # fmt: skip

    @classmethod
    def from_update(cls, u: TileUpdate, now_ms: int = 0) -> RenderJob:
        return cls(u.tms, u.z, u.x, u.y, u.version, u.hash, enqueued_ms=now_ms)
