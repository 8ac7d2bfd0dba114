"""One retry policy for every writer: the sinks, the render queue, the tile store.

A sink that cannot write blocks its worker and retries with capped
exponential back-off and full jitter. Blocking is the back-pressure: the
source stops reading while the sink is down, so nothing piles up in memory
and nothing acknowledged upstream is lost. The outage is logged once when it
starts, every so often while it lasts, and once when it ends, and
``tilepipe_sink_up`` shows it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from tilepipe import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


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


# Redis errors that mean "not now", not "not this": a script running (BUSY, e.g.
# a slow script of another client), a replica still loading or promoted
# (LOADING, READONLY and MASTERDOWN after a failover), memory full (OOM: the
# job waits until eviction or an operator makes room), a cluster slot moving
# (TRYAGAIN, CLUSTERDOWN). They hold the job back like an outage (review L4);
# any other refusal is the update's own and dead-letters it.
REDIS_TRANSIENT_CODES = frozenset(
    {"BUSY", "LOADING", "READONLY", "OOM", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"}
)


class TransientRedisError(redis.RedisError):
    """A Redis reply worth retrying (see :data:`REDIS_TRANSIENT_CODES`)."""


REDIS_RETRY_ON: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # with LOADING (BusyLoadingError)
    redis.TimeoutError,
    TransientRedisError,
)
"""What every Redis sink retries with back-off."""

# redis-py strips the code of the replies it has a class for.
_TRANSIENT_CLASSES = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # and MasterDownError
)


def is_transient_redis_error(e: BaseException) -> bool:
    if isinstance(e, REDIS_RETRY_ON + _TRANSIENT_CLASSES):
        return True
    if isinstance(e, redis.ResponseError):
        return str(e).split(" ", 1)[0] in REDIS_TRANSIENT_CODES
    return False


def transient_redis(call: Callable[[], T]) -> Callable[[], T]:
    """``call`` with transient Redis refusals raised as :class:`TransientRedisError`."""

    def wrapped() -> T:
        try:
            return call()
        except redis.ResponseError as e:
            if is_transient_redis_error(e):
                raise TransientRedisError(str(e)) from e
            raise

    return wrapped


class SinkGaveUp(RuntimeError):
    """A sink failed ``max_attempts`` times; the job stops and restarts from recovery."""


def write_with_retry(
    sink: str,
    write: Callable[[], T],
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``write`` until it succeeds; retry only on ``retry_on`` errors."""
    attempt = 0
    started = 0.0
    while True:
        try:
            result = write()
        except retry_on as e:
            attempt += 1
            metrics.BROADCAST_ERRORS.labels(sink).inc()
            metrics.SINK_UP.labels(sink).set(0)
            if attempt == 1:
                started = time.monotonic()
                log.warning("%s sink: write failed (%s); retrying with back-off", sink, e)
            elif attempt % 20 == 0:
                log.warning(
                    "%s sink: still failing after %d attempts over %.0f s (%s)",
                    sink, attempt, time.monotonic() - started, e,
                )  # fmt: skip
            if policy.max_attempts is not None and attempt >= policy.max_attempts:
                raise SinkGaveUp(
                    f"{sink} sink: gave up after {attempt} attempts: {e}. Check that the"
                    f" {sink} destination is reachable; the job restarts from its last snapshot."
                ) from e
            metrics.BROADCAST_RETRIES.labels(sink).inc()
            sleep(policy.delay(attempt))
            continue
        if attempt:
            log.warning(
                "%s sink: recovered after %d failed attempts (%.1f s)",
                sink, attempt, time.monotonic() - started,
            )  # fmt: skip
        metrics.SINK_UP.labels(sink).set(1)
        return result
