"""What a render job is, and the key that makes the same trigger twice one job.

The key hashes what identifies the tile release to render:
``(tms, z, x, y, version)``, plus the update's hash when it has one and the
region job it belongs to. Versions are normalised first (``"2"`` and
``"2.0"`` are one version), so two triggers for the same release collapse
into one job however they were spelled.

Why the update hash is part of the key: versions are monotonic per *object*
(per feature, per sensor: the dataflow's stage 6, ``docs/ARCHITECTURE.md``), so
two features that both reach version 1 in one tile at different times are two
different releases of the tile with one version number. Keyed by the version
alone the second would be dropped as a duplicate and never rendered nor
broadcast. The hash covers the order keys of every object applied, so a
replayed trigger still has the same hash (one job) and a different release does
not. A region job's tiles carry its id as ``origin``: a re-render of a tile
already rendered at its version is new work, not a duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from tilepipe.records import TileUpdate
from tilepipe.versions import Version, order_key, version_key

TEMPLATE_FIELDS = ("tms", "z", "x", "y", "version", "key")
"""What every operator template (``http:`` URL, ``command:`` arguments, cache key, purge URL)
can name; :meth:`RenderJob.fields` fills them, ``render.settings`` checks them at startup."""


def job_key(
    tms: str, z: int, x: int, y: int, version: Version, update_hash: str = "", origin: str = ""
) -> str:
    """32 hex digits of SHA-256 over the tile, its normalised version, hash and origin."""
    vkey = ".".join(str(p) for p in version_key(version))
    text = f"{tms}\x1f{z}\x1f{x}\x1f{y}\x1f{vkey}"
    if update_hash:
        text += f"\x1fh={update_hash}"
    if origin:
        text += f"\x1fo={origin}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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
    origin: str = ""
    """The region job this tile job belongs to (its id), or empty for a stream trigger."""
    broadcast: bytes | None = None
    """What to broadcast after the commit: ``{"objects": [[id, order], ...], "msg": {...}}``
    (the trigger's ``tile_updated`` and the order keys the forward-only store compares)."""

    @property
    def key(self) -> str:
        return job_key(self.tms, self.z, self.x, self.y, self.version, self.hash, self.origin)

    @property
    def tile(self) -> str:
        return f"{self.tms}/{self.z}/{self.x}/{self.y}"

    @property
    def vkey(self) -> tuple[int, ...]:
        return version_key(self.version)

    @property
    def objects(self) -> tuple[tuple[str, str], ...]:
        """``(object id, order key)`` of each object this job releases.

        Versions are per object, so the ledger decides "newer" per object, as the Redis
        store does. A dataflow job carries its trigger's pairs; a bare job (a tile named
        with a version, no broadcast) is the plain tile object ``""`` at its version; a
        region re-render releases no object (the later render wins, see the ledger).
        """
        if self.broadcast is not None:
            return tuple((str(o), str(k)) for o, k in orjson.loads(self.broadcast)["objects"])
        if self.origin:
            return ()
        return (("", order_key(self.vkey, 0)),)

    def fields(self) -> dict[str, object]:
        """The values of :data:`TEMPLATE_FIELDS` for this job."""
        return {"tms": self.tms, "z": self.z, "x": self.x, "y": self.y,
                "version": self.version, "key": self.key}  # fmt: skip

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "tms": self.tms, "z": self.z, "x": self.x, "y": self.y,
                "version": self.version, "hash": self.hash,
                "enqueued_ms": self.enqueued_ms, "deadline_ms": self.deadline_ms,
                "origin": self.origin,
                "broadcast": orjson.Fragment(self.broadcast) if self.broadcast else None,
            }
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes | str) -> RenderJob:
        d = orjson.loads(raw)
        return cls(
            tms=d["tms"], z=int(d["z"]), x=int(d["x"]), y=int(d["y"]), version=d["version"],
            hash=d.get("hash", ""), enqueued_ms=int(d.get("enqueued_ms") or 0),
            deadline_ms=d.get("deadline_ms"), origin=d.get("origin") or "",
            broadcast=orjson.dumps(d["broadcast"]) if d.get("broadcast") else None,
        )  # fmt: skip

    @classmethod
    def from_update(cls, u: TileUpdate, now_ms: int = 0) -> RenderJob:
        """The job for a trigger, carrying the ``tile_updated`` to broadcast after the commit."""
        from tilepipe.messages import tile_updated

        payload = orjson.dumps({"objects": [list(o) for o in u.objects], "msg": tile_updated(u)})
        return cls(u.tms, u.z, u.x, u.y, u.version, u.hash, enqueued_ms=now_ms, broadcast=payload)
