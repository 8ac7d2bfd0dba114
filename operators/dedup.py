"""Stage 6 logic (``docs/ARCHITECTURE.md``): apply each object's versions once and only forward.

Per tile, a :class:`VersionGate` remembers the last applied ``(version,
event time)`` of each upstream object and the most recent ``event_id``\\ s.
An event applies only if it is newer than its object's last applied one.
For ``kind: "tile"`` events the object is the tile itself (``object_id ""``);
for fan-out events it is the feature or sensor, so two features touching the
same tile never suppress each other. Pure logic: no I/O, no Bytewax.

A tile remembers at most ``max_objects`` objects; past that the least recently
applied is forgotten, and the gate keeps the newest event time it forgot as
the tile's *floor*: an object it does not know applies only if its event is
newer than the floor. Without it a forgotten object's old version (a late
replay, a retry) was applied and broadcast as if new (review M5). The floor
is an event time, not an order key: versions are per object, so a new object
at version 1 on a tile whose forgotten objects reached version 57 still
applies (the mistake of review H3).
"""

from __future__ import annotations

from enum import Enum

from tilepipe.records import TileEvent
from tilepipe.versions import VersionKey

Applied = tuple[VersionKey, int]  # (version, event time)


class Verdict(str, Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # the same event, or the same version and time, again
    STALE = "stale"  # older than what was already applied


class VersionGate:
    """Immutable tuples, not dicts: a tile usually remembers one object and a
    few ids, where tuples take a third of the memory, and a snapshot is then
    the tuples themselves, with no copy."""

    __slots__ = ("_applied", "_max_ids", "_max_objects", "_recent_ids", "floor_ms")

    def __init__(
        self,
        max_ids: int,
        max_objects: int,
        applied: tuple[tuple[str, VersionKey, int], ...] = (),
        recent_ids: tuple[str, ...] = (),
        floor_ms: int = 0,
    ) -> None:
        self._max_ids = max_ids
        self._max_objects = max_objects
        self.floor_ms = floor_ms
        """The newest event time of an object this tile forgot (0: none forgotten)."""
        # (object, version, event time), least recently applied first.
        self._applied = applied
        # Oldest first; the oldest are forgotten first.
        self._recent_ids = recent_ids

    def seen(self, event_id: str) -> bool:
        return event_id in self._recent_ids

    def _last(self, object_id: str) -> Applied | None:
        for obj, vkey, ts in reversed(self._applied):
            if obj == object_id:
                return (vkey, ts)
        return None

    def judge(self, event: TileEvent) -> Verdict:
        """Decide without changing anything."""
        if event.event_id in self._recent_ids:
            return Verdict.DUPLICATE
        last = self._last(event.object_id)
        if last is None:
            return Verdict.APPLY if event.ts_ms > self.floor_ms else Verdict.STALE
        current = (event.vkey, event.ts_ms)
        if current > last:
            return Verdict.APPLY
        return Verdict.DUPLICATE if current == last else Verdict.STALE

    def offer(self, event: TileEvent) -> Verdict:
        """Judge ``event`` and, if it applies, record it as applied."""
        verdict = self.judge(event)
        if verdict is Verdict.APPLY:
            obj = event.object_id
            kept = tuple(entry for entry in self._applied if entry[0] != obj)
            if len(kept) >= self._max_objects:
                cut = len(kept) - self._max_objects + 1
                self.floor_ms = max(self.floor_ms, max(ts for _, _, ts in kept[:cut]))
                kept = kept[cut:]
            self._applied = (*kept, (obj, event.vkey, event.ts_ms))
            ids = (*self._recent_ids, event.event_id)
            self._recent_ids = ids[-self._max_ids :] if len(ids) > self._max_ids else ids
        return verdict

    def applied(self) -> dict[str, Applied]:
        """Each remembered object's last applied (version, event time), oldest first."""
        return {obj: (vkey, ts) for obj, vkey, ts in self._applied}

    def snapshot(self) -> tuple[tuple[tuple[str, VersionKey, int], ...], tuple[str, ...]]:
        return self._applied, self._recent_ids

    @classmethod
    def restore(
        cls,
        max_ids: int,
        max_objects: int,
        snap: tuple[tuple[tuple[str, VersionKey, int], ...], tuple[str, ...]],
        floor_ms: int = 0,
    ) -> VersionGate:
        applied, ids = snap
        return cls(max_ids, max_objects, applied, ids, floor_ms)
