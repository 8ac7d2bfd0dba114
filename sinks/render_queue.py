"""Stage 8 when rendering is configured: each tile update becomes a render job.

Instead of broadcasting ``tile_updated`` at once, the dataflow enqueues the
update as a :class:`render.jobs.RenderJob` (one pipelined round trip per
batch) and a render worker broadcasts it after the tile is committed to the
store, so a client never refetches a tile before its new version is there.
The job carries the message and the order keys, and the worker publishes
them through the same forward-only compare-and-set as the Redis sink.

Accounting: an update whose job is new counts its records as ``broadcast``
(handed on; the worker's own metrics say when it went out), one the queue
already had (a replay after a restart) as ``duplicate``. An update that
cannot become a job, or whose job Redis refuses for itself, is one dead
letter (``sinks/guard.py``); transient Redis errors are retried.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from render.jobs import RenderJob
from render.queue import RenderQueue
from sinks import accounting, guard
from sinks.file import build_dead_letters
from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter, TileUpdate
from tilepipe.retry import REDIS_RETRY_ON, RetryPolicy, transient_redis, write_with_retry
from tilepipe.store import DEFAULT_PREFIX
from tilepipe.timeutil import now_ms

CHUNK = 500
"""Jobs per script call, as the Redis sink's chunk."""


@dataclass(frozen=True)
class RenderQueueTarget:
    url: str  # redis:// or rediss://, with the database
    prefix: str = DEFAULT_PREFIX
    deadline_ms: int | None = None
    """How long after enqueueing a job is still worth rendering (then invalidate-only)."""


class RenderEnqueuer:
    """Plain enqueuer (no Bytewax): tests call it directly."""

    def __init__(
        self,
        target: RenderQueueTarget,
        policy: RetryPolicy | None = None,
        dead_letters: guard.DeadLetters | None = None,
    ) -> None:
        self.target = target
        self.policy = policy or RetryPolicy()
        self.client = redis.Redis.from_url(target.url, socket_timeout=5, socket_connect_timeout=5)
        self.queue = RenderQueue(self.client, target.prefix)
        self._dead = dead_letters

    def enqueue(self, updates: list[TileUpdate]) -> list[bool]:
        """Per update: True if its job is new, False if the queue had it or it was dead-lettered."""
        if not updates:
            return []
        now = int(now_ms())
        deadline = None if self.target.deadline_ms is None else now + self.target.deadline_ms

        def job(u: TileUpdate) -> RenderJob:
            j = RenderJob.from_update(u, now)
            j.encode()  # what the queue will store: refuse it here, per update
            return j if deadline is None else replace(j, deadline_ms=deadline)

        jobs, dead = guard.each(updates, job)
        results = [accounting.DEAD_LETTERED] * len(updates)
        try:
            added = self._add([j for _, j in jobs])
        except redis.ResponseError:  # refused, not transient: find the jobs Redis refuses
            added = []
            for i, j in jobs:
                try:
                    added += self._add([j])
                except redis.ResponseError as e:
                    added.append(None)
                    dead.append(guard.update_letter(updates[i], Reason.SINK_REJECTED, e))
        for (i, _), a in zip(jobs, added, strict=True):
            if a is not None:
                results[i] = accounting.PUBLISHED if a else accounting.DUPLICATE
        if dead:
            if self._dead is None:
                self._dead = build_dead_letters(None, "render_queue", 0, 1)
            self._dead.write_batch(dead)
        accounting.record_results(updates, results)
        return [r == accounting.PUBLISHED for r in results]

    def _add(self, jobs: list[RenderJob]) -> list[bool | None]:
        """Enqueue ``jobs`` a chunk at a time, each retried on its own.

        A chunk that went in is not sent again when a later one fails: sent
        again, its jobs would find their own dedup markers and count as
        duplicates (review L4). One round trip per chunk of ``CHUNK`` jobs.
        """
        added: list[bool | None] = []
        for start in range(0, len(jobs), CHUNK):
            added += self._add_chunk(jobs[start : start + CHUNK])
        return added

    def _add_chunk(self, part: list[RenderJob]) -> list[bool]:
        def send() -> list[bool]:
            return list(self.queue.enqueue(part, CHUNK))

        return write_with_retry("render_queue", transient_redis(send), self.policy, REDIS_RETRY_ON)

    def close(self) -> None:
        self.client.close()


class _Partition(StatelessSinkPartition[TileUpdate]):
    def __init__(self, enqueuer: RenderEnqueuer) -> None:
        self._e = enqueuer

    def write_batch(self, items: list[TileUpdate]) -> None:
        self._e.enqueue(items)

    def close(self) -> None:
        self._e.close()


class RenderQueueSink(DynamicSink[TileUpdate]):
    def __init__(
        self,
        target: RenderQueueTarget,
        policy: RetryPolicy | None = None,
        dead_letters: DynamicSink[DeadLetter] | None = None,
    ) -> None:
        self.target = target
        self.policy = policy
        self.dead_letters = dead_letters

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        dlq = build_dead_letters(self.dead_letters, step_id, worker_index, worker_count)
        return _Partition(RenderEnqueuer(self.target, self.policy, dlq))
