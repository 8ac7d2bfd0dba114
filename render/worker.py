"""The render worker: take a job, render it, commit it exactly once, acknowledge it.

Per job: the ledger moves it to IN_PROGRESS (or says it is already done: the
delivery is acknowledged and nothing else happens); the renderer makes the
bytes; the store stages and validates them; the ledger's commit transaction
moves them into place and writes COMPLETED; the tile cache is invalidated;
the queue entry is acknowledged. A crash anywhere leaves the entry pending,
so after the SLA another worker reclaims it and the ledger decides. Only the
entry's current owner acknowledges it, and every SLA a worker sweeps the ledger
for jobs whose entry was lost altogether (see ``RenderWorker.sweep``).

A failed attempt is retried after capped exponential back-off with full
jitter; after ``max_attempts`` the job is DEAD and on the dead-letter list.
Repeated failures open a circuit breaker: while it is open (and for a job
past its deadline) the worker only invalidates the tile, so the tile server
renders on demand, and records DEGRADED. A DEAD job's tile is invalidated too
(the ledger's ``result`` and the dead letter say how), for the same reason.

Invalidating is a ``DEL`` of the Redis tile cache key and/or an HTTP ``PURGE``
(``TILEPIPE_RENDER_PURGE_URL``), always after the commit it follows; a PURGE
that fails is counted and logged, never a failed job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import psycopg
import redis

from render import metrics
from render.invalidate import CacheInvalidator
from render.jobs import RenderJob
from render.ledger import JobState, Ledger
from render.queue import Delivery, RenderQueue
from render.renderers import Renderer
from render.stores import TileStore
from tilepipe.retry import RetryPolicy

log = logging.getLogger(__name__)


class JobOutcome(str, Enum):
    """What processing one delivery came to (:meth:`RenderWorker.process`), beside the
    ledger's :class:`~render.ledger.JobState`: an outcome is this worker's, a state the job's."""

    COMPLETED = "completed"  # committed (or superseded or covered) and acknowledged
    SKIPPED = "skipped"  # the ledger says it is done already: announced again, acknowledged
    DEGRADED = "degraded"  # circuit open or past its deadline: only invalidated
    RETRY = "retry"  # this attempt failed; retried after the back-off
    DEAD = "dead"  # the last attempt failed: on the dead-letter list
    LOST = "lost"  # another worker reclaimed it meanwhile: theirs to finish

    def __str__(self) -> str:
        return self.value


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; one trial after ``cooldown_s``."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._trial = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def allow(self) -> bool:
        with self._lock:
            if self._failures < self.threshold:
                return True
            if self.clock() < self._open_until or self._trial:
                return False
            self._trial = True  # half-open: exactly one render tries the renderer
            return True

    def success(self) -> None:
        with self._lock:
            if self._failures >= self.threshold:
                log.warning("renderer recovered: circuit closed")
            self._failures = 0
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._failures >= self.threshold:
                if self._failures == self.threshold:
                    log.warning(
                        "renderer failed %d times in a row: circuit open, jobs degrade to"
                        " invalidate-only for %.0f s",
                        self._failures, self.cooldown_s,
                    )  # fmt: skip
                self._open_until = self.clock() + self.cooldown_s


@dataclass
class WorkerConfig:
    name: str
    sla_s: float = 120.0
    max_attempts: int = 5
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(initial_s=1.0, max_s=300.0))
    poll_s: float = 1.0
    retention_s: float = 30 * 86400.0
    """Ledger history and finished jobs older than this are deleted (the sweep)."""

    @property
    def stalled_s(self) -> float:
        """An IN_PROGRESS job not restarted for this long has lost its queue entry: each
        reclaim (after one SLA) restarts it, so three SLAs means no entry is left."""
        return 3 * self.sla_s

    @property
    def failed_s(self) -> float:
        """A FAILED job waits at most the longest back-off in the retry set."""
        return self.backoff.max_s + 3 * self.sla_s


class RenderWorker:
    """One consumer of the queue. Not thread-safe: one per thread, each with its own ledger."""

    def __init__(
        self,
        config: WorkerConfig,
        queue: RenderQueue,
        ledger: Ledger,
        renderer: Renderer,
        store: TileStore,
        breaker: CircuitBreaker,
        invalidator: CacheInvalidator | None = None,
        on_committed: Callable[[RenderJob, str], None] | None = None,
    ) -> None:
        """``on_committed(job, result)`` runs after a job's tile is in the store (or, when
        degraded, after the cache was invalidated), before the job is acknowledged; it is
        where the render worker broadcasts ``tile_updated``. It runs again when a job
        found already done is delivered again (a crash between commit and acknowledge), so
        it must be idempotent: the forward-only broadcast is."""
        self.config = config
        self.queue = queue
        self.ledger = ledger
        self.renderer = renderer
        self.store = store
        self.breaker = breaker
        self.invalidator = invalidator or CacheInvalidator(None, None)
        self.on_committed = on_committed
        self.outcomes: Counter[str] = Counter()
        """Deliveries by :class:`JobOutcome` value, for the pool's summary line."""
        self._next_maintenance = 0.0
        self._next_sweep = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    def run(self, stop: threading.Event) -> None:
        """Take and process jobs until ``stop`` is set; survives Redis and ledger outages."""
        failures = 0
        while not stop.is_set():
            try:
                self.step()
                failures = 0
            except (redis.ConnectionError, redis.TimeoutError, psycopg.OperationalError) as e:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("%s: queue or ledger unavailable (%s); retrying", self.name, e)
                if isinstance(e, psycopg.OperationalError) and self.ledger.conn.closed:
                    self._reconnect_ledger()
                stop.wait(min(5.0, 0.1 * 2**failures))
            except redis.ResponseError as e:
                # The stream or its group went away under us (a FLUSHDB, a DEL, a Redis
                # restarted empty): a blocked read ends with UNBLOCKED, the next one with
                # NOGROUP. Make them again and carry on; jobs in the ledger are not lost.
                if "NOGROUP" not in str(e) and "UNBLOCKED" not in str(e):
                    raise
                failures += 1
                log.warning("%s: render queue missing (%s); creating it again", self.name, e)
                self.queue.ensure_group()
                stop.wait(min(5.0, 0.1 * 2**failures))

    def step(self) -> int:
        """Reclaim or read at most one job and process it; how many were processed."""
        deliveries: list[Delivery] = []
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.config.poll_s
            self.queue.promote_due()
            if now >= self._next_sweep:
                self._next_sweep = now + self.config.sla_s
                self.sweep()
            deliveries = self.queue.reclaim(self.name, int(self.config.sla_s * 1000), count=1)
            for d in deliveries:
                log.warning("%s: reclaimed stalled job %s (%s)", self.name, d.job.key, d.job.tile)
        if not deliveries:
            deliveries = self.queue.read(
                self.name, count=1, block_ms=int(self.config.poll_s * 1000)
            )
        for d in deliveries:
            self.process(d)
        return len(deliveries)

    def sweep(self) -> int:
        """Enqueue again jobs whose queue entry was lost, and apply the ledger's retention
        (see :meth:`Ledger.sweep` and :meth:`Ledger.trim`); how many were enqueued again."""
        n = self.ledger.sweep(self.config.stalled_s, self.config.failed_s, self.queue.requeue)
        if n:
            log.warning("%s: %d job(s) had no queue entry left and were enqueued again",
                        self.name, n)  # fmt: skip
        self.ledger.trim(self.config.retention_s)
        return n

    def process(self, d: Delivery) -> JobOutcome:
        """Run one delivery to its outcome; returns it (also counted in ``outcomes``)."""
        outcome = self._process(d)
        self.outcomes[outcome.value] += 1
        return outcome

    def _process(self, d: Delivery) -> JobOutcome:
        job = d.job
        attempt = self.ledger.start(job, self.name)
        if attempt is None:  # done already (a duplicate, or a reclaim after the commit)
            self._announce_again(job)
            self.queue.ack(d)
            return JobOutcome.SKIPPED
        metrics.JOBS.labels("IN_PROGRESS").inc()
        if job.deadline_ms is not None and time.time() * 1000 > job.deadline_ms:
            return self._degrade(d, attempt, "deadline passed before rendering", "deadline")
        if not self.breaker.allow():
            return self._degrade(d, attempt, "renderer circuit open", "circuit_open")
        started = time.perf_counter()
        try:
            data = self.renderer.render(job)
            staged = self.store.stage(job, data, attempt)
        except Exception as e:
            self.breaker.failure()
            return self._failed(d, attempt, f"render: {type(e).__name__}: {e}")
        self.breaker.success()
        commit = None
        try:
            commit = self.ledger.commit(job, attempt, self.name, lambda: self.store.commit(staged))
        except psycopg.OperationalError:
            raise  # the ledger is down: leave the job pending, it is reclaimed later
        except Exception as e:
            return self._failed(d, attempt, f"commit: {type(e).__name__}: {e}")
        finally:
            if commit is None or not commit.committed:
                self.store.discard(staged)  # superseded, covered, lost or failed: not stored
        if commit is None:  # reclaimed by another worker meanwhile: theirs to finish
            self.queue.ack(d)  # only if this worker still owns the entry (see RenderQueue.ack)
            return JobOutcome.LOST
        took = time.perf_counter() - started
        metrics.JOBS.labels("COMPLETED").inc()
        metrics.RENDER_LATENCY.labels(str(job.z)).observe(took)
        log.debug("%s: %s %s in %.3f s", self.name, job.tile, commit.result, took)
        if commit.committed:
            self.invalidator.invalidate(job)
        if self.on_committed is not None and not commit.result.startswith("superseded"):
            self.on_committed(job, commit.result)
        self.queue.ack(d)
        return JobOutcome.COMPLETED

    def _degrade(self, d: Delivery, attempt: int, reason: str, code: str) -> JobOutcome:
        self.invalidator.invalidate(d.job)  # first: a crash before the record repeats it
        if not self.ledger.degraded(d.job, attempt, self.name, reason):
            self.queue.ack(d)  # reclaimed meanwhile: a no-op unless this worker owns the entry
            return JobOutcome.LOST
        metrics.JOBS.labels("DEGRADED").inc()
        metrics.DEGRADED.labels(code).inc()
        if self.on_committed is not None:  # the tile server renders the new data on demand
            self.on_committed(d.job, "invalidated")
        self.queue.ack(d)
        return JobOutcome.DEGRADED

    def _announce_again(self, job: RenderJob) -> None:
        """Broadcast a finished job again: a worker may have died after its commit and
        before its broadcast and acknowledgement."""
        if self.on_committed is None:
            return
        record = self.ledger.get(job.key)
        if record is None or record.result is None or record.result.startswith("superseded"):
            return
        if record.state in (JobState.COMPLETED, JobState.DEGRADED):
            self.on_committed(job, record.result)

    def _failed(self, d: Delivery, attempt: int, error: str) -> JobOutcome:
        log.info("%s: attempt %d of %s failed: %s", self.name, attempt, d.job.tile, error)
        if attempt >= self.config.max_attempts:
            # The new data will not be rendered here: drop the old tile from the caches so
            # the tile server renders it on demand, and record that with the job.
            invalidated = self.invalidator.invalidate(d.job)
            result = f"invalidated ({invalidated})" if invalidated else None
            if not self.ledger.dead(d.job, attempt, self.name, error, result):
                self.queue.ack(d)  # reclaimed meanwhile: a no-op unless this worker owns it
                return JobOutcome.LOST
            log.warning("%s: job %s is dead after %d attempts: %s; %s",
                        self.name, d.job.tile, attempt, error,
                        result or "no tile cache configured to invalidate")  # fmt: skip
            metrics.JOBS.labels("DEAD").inc()
            self.queue.dead_letter(d, error, attempt, invalidated=invalidated)
            return JobOutcome.DEAD
        if not self.ledger.failed(d.job, attempt, self.name, error):
            self.queue.ack(d)
            return JobOutcome.LOST
        metrics.JOBS.labels("FAILED").inc()
        self.queue.retry_later(d, self.config.backoff.delay(attempt))
        return JobOutcome.RETRY

    def _reconnect_ledger(self) -> None:
        dsn = self.ledger.dsn
        try:
            self.ledger = Ledger(dsn)
        except Exception as e:
            log.warning("%s: ledger reconnect failed: %s", self.name, e)


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
