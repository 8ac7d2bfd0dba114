"""The one retry policy: capped exponential back-off with full jitter.

Every sink (:mod:`sinks.retry`) and the render worker's failed attempts
(:mod:`render.worker`) wait by it, so "retried with capped, jittered back-off"
means the same formula wherever the README says it. Pure: no I/O, only
:func:`random.uniform`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.05
    max_s: float = 5.0
    multiplier: float = 2.0
    max_attempts: int | None = None
    """``None``: retry until the sink is back (the default; never drop output)."""

    def delay(self, attempt: int) -> float:
        """Full-jitter back-off before retry number ``attempt`` (1-based)."""
        cap = min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))
        return random.uniform(0, cap)
