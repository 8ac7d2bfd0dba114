"""Stage 8: broadcast ``tile_updated`` through the tile store, forward-only per tile.

The compare-and-set and publish are :class:`tilepipe.store.TileStore`'s, shared with the
render worker; this module adds what a sink adds: an update that cannot be encoded or that
Redis refuses for itself becomes one dead letter (``sinks/guard.py``), the outcomes are
counted, and the Bytewax sink around it.
"""

from __future__ import annotations

import logging

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from sinks import accounting, guard
from sinks.file import build_dead_letters
from tilepipe.messages import encode
from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter, TileUpdate
from tilepipe.retry import RetryPolicy
from tilepipe.store import RedisTarget, TileStore

log = logging.getLogger(__name__)


class RedisBroadcaster(TileStore):
    """The tile store with the sink's guard and accounting (no Bytewax): tests and
    benchmarks call it directly.

    ``dead_letters`` receives the updates that cannot be written (see
    ``sinks/guard.py``); by default the default DLQ, standard error.
    """

    def __init__(
        self,
        target: RedisTarget,
        policy: RetryPolicy | None = None,
        dead_letters: guard.DeadLetters | None = None,
    ) -> None:
        super().__init__(target, policy)
        self._dead = dead_letters

    def publish(self, updates: list[TileUpdate]) -> list[int]:
        """Publish ``updates``; per update 1 published, 0 duplicate, -1 stale, 2 dead-lettered."""
        if not updates:
            return []
        target = self.target
        prepared, dead = guard.each(
            updates, lambda u: (target.tile_key(u), list(u.objects), encode(u), target.ttl_of(u.z))
        )
        results = [accounting.DEAD_LETTERED] * len(updates)
        outcome = self.publish_items([p for _, p in prepared])
        for (i, _), r in zip(prepared, outcome, strict=True):
            if isinstance(r, Exception):
                dead.append(guard.update_letter(updates[i], Reason.SINK_REJECTED, r))
            else:
                results[i] = r
        if dead:
            if self._dead is None:
                self._dead = build_dead_letters(None, "broadcast", 0, 1)
            self._dead.write_batch(dead)
        accounting.record_results(updates, results)
        return results


class _RedisPartition(StatelessSinkPartition[TileUpdate]):
    def __init__(self, broadcaster: RedisBroadcaster) -> None:
        self._b = broadcaster

    def write_batch(self, items: list[TileUpdate]) -> None:
        self._b.publish(items)

    def close(self) -> None:
        self._b.close()


class RedisBroadcastSink(DynamicSink[TileUpdate]):
    def __init__(
        self,
        target: RedisTarget,
        policy: RetryPolicy | None = None,
        dead_letters: DynamicSink[DeadLetter] | None = None,
    ) -> None:
        self.target = target
        self.policy = policy
        self.dead_letters = dead_letters

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        dlq = build_dead_letters(self.dead_letters, step_id, worker_index, worker_count)
        return _RedisPartition(RedisBroadcaster(self.target, self.policy, dlq))
