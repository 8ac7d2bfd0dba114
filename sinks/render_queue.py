"""Stage 8 when rendering is configured: each tile update becomes a render job.

Instead of broadcasting ``tile_updated`` at once, the dataflow enqueues the
update as a :class:`render.jobs.RenderJob` (one pipelined round trip per
batch) and a render worker broadcasts it after the tile is committed to the
store, so a client never refetches a tile before its new version is there.
The job carries the message and the order keys, and the worker publishes
them through the same forward-only compare-and-set as the Redis sink.

Accounting: an update whose job is new counts its records as ``broadcast``
(handed on; the worker's own metrics say when it went out), one the queue
already had (a replay after a restart) as ``duplicate``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from render.jobs import RenderJob
from render.queue import RenderQueue
from sinks import accounting
from sinks.retry import RetryPolicy, write_with_retry
from tilepipe.records import TileUpdate
from tilepipe.timeutil import now_ms


@dataclass(frozen=True)
class RenderQueueTarget:
    url: str  # redis:// or rediss://, with the database
    prefix: str = "tilepipe"
    deadline_ms: int | None = None
    """How long after enqueueing a job is still worth rendering (then invalidate-only)."""


class RenderEnqueuer:
    """Plain enqueuer (no Bytewax): tests call it directly."""

    def __init__(self, target: RenderQueueTarget, policy: RetryPolicy | None = None) -> None:
        self.target = target
        self.policy = policy or RetryPolicy()
        self.client = redis.Redis.from_url(target.url, socket_timeout=5, socket_connect_timeout=5)
        self.queue = RenderQueue(self.client, target.prefix)

    def enqueue(self, updates: list[TileUpdate]) -> list[bool]:
        if not updates:
            return []
        now = int(now_ms())
        jobs = [RenderJob.from_update(u, now) for u in updates]
        if self.target.deadline_ms is not None:
            deadline = now + self.target.deadline_ms
            jobs = [replace(j, deadline_ms=deadline) for j in jobs]
        added = write_with_retry(
            "render_queue",
            lambda: self.queue.enqueue(jobs),
            self.policy,
            (redis.ConnectionError, redis.TimeoutError),
        )
        accounting.record_results(updates, [1 if a else 0 for a in added])
        return added

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
    def __init__(self, target: RenderQueueTarget, policy: RetryPolicy | None = None) -> None:
        self.target = target
        self.policy = policy

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(RenderEnqueuer(self.target, self.policy))
