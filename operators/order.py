"""Stage 5 logic (``docs/ARCHITECTURE.md``): the per-tile event-time watermark.

``wm(now) = min(M, B + (now - S))`` where ``M`` is the newest event time seen,
``B = M - allowed_lateness`` and ``S`` the wall time at which ``M`` last
advanced. Wall-clock time lets a quiet tile's watermark catch up within
``allowed_lateness``, but never past the newest event seen, so a backlog
replayed after an outage is not misread as late (``docs/ARCHITECTURE.md``,
"Guarantees", Ordering). Pure logic: no I/O, no Bytewax.

An event dated ahead of the wall clock counts as at most ``now +
allowed_lateness``: validation lets events up to ``max_future`` (5 min) ahead
through, and one of them used to move ``M`` 5 min ahead, so every event of
its tile was "late" (applied at once, unordered, uncoalesced) until the
clock caught up (review L7).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Watermark:
    lateness_ms: int
    newest_ms: int | None = None  # M
    base_ms: int = 0  # B
    set_at_ms: float = 0.0  # S, wall clock

    def observe(self, event_ms: int, now_ms: float) -> None:
        """Account for an on-time event's time (clamped to ``now + lateness``)."""
        event_ms = min(event_ms, int(now_ms) + self.lateness_ms)
        if self.newest_ms is None or event_ms > self.newest_ms:
            self.newest_ms = event_ms
            self.base_ms = event_ms - self.lateness_ms
            self.set_at_ms = now_ms

    def at(self, now_ms: float) -> float:
        """The watermark now; ``-inf`` before any event."""
        if self.newest_ms is None:
            return float("-inf")
        return min(self.newest_ms, self.base_ms + (now_ms - self.set_at_ms))

    def passes_at(self, event_ms: int) -> float:
        """Wall time at which the watermark reaches ``event_ms`` (``<= M``)."""
        return self.set_at_ms + (event_ms - self.base_ms)
