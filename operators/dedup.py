"""Stage 6 logic: apply each object's versions once and only forward.

Per tile, a :class:`VersionGate` remembers the last applied ``(version,
event time)`` of each upstream object and the most recent ``event_id``\\ s.
An event applies only if it is newer than its object's last applied one.
For ``kind: "tile"`` events the object is the tile itself (``object_id ""``);
for fan-out events it is the feature or sensor, so two features touching the
same tile never suppress each other. Pure logic: no I/O, no Bytewax.
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
    __slots__ = ("_applied", "_max_ids", "_max_objects", "_recent_ids")

    def __init__(
        self,
        max_ids: int,
        max_objects: int,
        applied: dict[str, Applied] | None = None,
        recent_ids: dict[str, None] | None = None,
    ) -> None:
        self._max_ids = max_ids
        self._max_objects = max_objects
        self._applied: dict[str, Applied] = applied if applied is not None else {}
        # A dict used as an insertion-ordered set: oldest ids are dropped first.
        self._recent_ids: dict[str, None] = recent_ids if recent_ids is not None else {}

    def seen(self, event_id: str) -> bool:
        return event_id in self._recent_ids

    def judge(self, event: TileEvent) -> Verdict:
        """Decide without changing anything."""
        if event.event_id in self._recent_ids:
            return Verdict.DUPLICATE
        last = self._applied.get(event.object_id)
        if last is None:
            return Verdict.APPLY
        current = (event.vkey, event.ts_ms)
        if current > last:
            return Verdict.APPLY
        return Verdict.DUPLICATE if current == last else Verdict.STALE

    def offer(self, event: TileEvent) -> Verdict:
        """Judge ``event`` and, if it applies, record it as applied."""
        verdict = self.judge(event)
        if verdict is Verdict.APPLY:
            applied = self._applied
            # Least recently applied objects are forgotten first.
            if applied.pop(event.object_id, None) is None and len(applied) >= self._max_objects:
                del applied[next(iter(applied))]
            applied[event.object_id] = (event.vkey, event.ts_ms)
            self._remember(event.event_id)
        return verdict

    def _remember(self, event_id: str) -> None:
        ids = self._recent_ids
        ids[event_id] = None
        if len(ids) > self._max_ids:
            del ids[next(iter(ids))]

    def snapshot(self) -> tuple[tuple[tuple[str, Applied], ...], tuple[str, ...]]:
        return tuple(self._applied.items()), tuple(self._recent_ids)

    @classmethod
    def restore(
        cls,
        max_ids: int,
        max_objects: int,
        snap: tuple[tuple[tuple[str, Applied], ...], tuple[str, ...]],
    ) -> VersionGate:
        applied, ids = snap
        return cls(max_ids, max_objects, dict(applied), dict.fromkeys(ids))
