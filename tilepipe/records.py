"""The records that flow between tilepipe's stages.

They are ``NamedTuple``s on purpose: cheap to build on the hot path, immutable
(so state snapshots can hold them without copying) and picklable for
Bytewax recovery.
"""

from __future__ import annotations

import base64
from typing import Any, NamedTuple

from tilepipe.reasons import Reason
from tilepipe.versions import Version, VersionKey


class RawRecord(NamedTuple):
    """One input record exactly as a source read it."""

    value: bytes | None  # None: a Kafka tombstone (dead-lettered as empty_record)
    origin: dict[str, Any]
    """Where it came from: ``{topic, partition, offset}`` or ``{file, line}``."""
    received_ms: float
    """Wall-clock time the source read it, epoch milliseconds."""
    headers: tuple[tuple[str, bytes], ...] = ()
    truncated_from: int = 0
    """The record's real size when the source kept only its head (oversized)."""


class TileEvent(NamedTuple):
    """A validated, enriched change to one tile: what stages 4-7 work on."""

    key: str  # "{z}:{quadkey}", the partition key
    tms: str
    z: int
    x: int
    y: int
    version: Version  # as received, echoed in the broadcast
    vkey: VersionKey  # numeric form, for comparison
    ts_ms: int  # event time
    event_id: str
    source: str
    layers: tuple[str, ...] | None
    received_ms: float
    object_id: str = ""
    """The upstream object whose version this is; ``""`` for a plain tile event.

    Fan-out events (features, telemetry) carry their feature or sensor id so
    that versions of different objects on one tile do not suppress each other.
    """
    coverage: str = "tile"
    """How the tile was found: ``tile`` (named directly), or the cover method."""
    h3_cell: str | None = None
    weight: int = 1
    """1 on the tile event that accounts for its input record, 0 on the other tiles
    the record fanned out to: every record is counted once, whatever its fan-out."""


class FanOutEvent(NamedTuple):
    """A valid event that does not name its tiles (feature, telemetry)."""

    model: Any  # wire.FeatureEventIn | wire.TelemetryEventIn
    vkey: VersionKey
    ts_ms: int
    received_ms: float
    record: RawRecord  # kept for a dead letter if expansion fails


class TileUpdate(NamedTuple):
    """One render trigger: all applied events of a tile released together."""

    key: str
    tms: str
    z: int
    x: int
    y: int
    version: Version
    objects: tuple[tuple[str, str], ...]
    """``(object_id, order key)`` of each object applied; the store compares these."""
    hash: str
    ts_ms: int  # event time of the winning event
    oldest_ts_ms: int
    oldest_received_ms: float
    events: int  # tile events this update covers
    records: int  # input records it accounts for (see TileEvent.weight)
    layers: tuple[str, ...] | None
    coverage: str = "tile"
    h3_cells: tuple[str, ...] = ()


MAX_ERROR_CHARS = 512
"""A dead letter's ``error`` and ``field`` are cut to this: they must never echo a whole record."""


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    if len(text) <= limit:
        return text
    return text[: limit - 24] + f"... ({len(text)} chars)"


class DeadLetter(NamedTuple):
    """An input record (or, from a sink, a tile update) that cannot be processed, and why."""

    reason: Reason  # a stable code (tilepipe/reasons.py), the same in the DLQ and the ingress
    error: str  # a human-readable message
    raw: bytes
    origin: dict[str, Any]
    received_ms: float
    field: str | None = None  # dotted path of the offending field, if any
    records: int = 1
    """Input records this letter accounts for: 1 for a record, an update's count from a sink."""

    def to_json_dict(self, raw_limit: int) -> dict[str, Any]:
        """The DLQ wire form; ``raw`` is text when it is UTF-8, else base64.

        Records larger than ``raw_limit`` bytes keep only their head, and say so;
        ``error`` and ``field`` are cut to :data:`MAX_ERROR_CHARS` whoever built
        the letter, so its size is bounded by ``raw_limit`` plus a few KiB.
        """
        from tilepipe.timeutil import format_rfc3339_ms

        raw = self.raw
        doc: dict[str, Any] = {
            "reason": clip(self.reason, 64),
            "error": clip(self.error),
            "field": clip(self.field) if self.field is not None else None,
        }
        if len(raw) > raw_limit:
            doc["raw_truncated"] = True
            doc["raw_bytes"] = len(raw)
            raw = raw[:raw_limit]
        try:
            doc["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            doc["raw"] = base64.b64encode(raw).decode("ascii")
            doc["raw_encoding"] = "base64"
        doc["origin"] = self.origin
        doc["received_at"] = format_rfc3339_ms(self.received_ms)
        return doc
