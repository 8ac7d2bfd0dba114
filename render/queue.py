"""The durable job queue: a Redis Stream read by a consumer group.

Why Redis Streams and not a Kafka topic: render jobs need per-message
acknowledgement and per-message reclaim. A consumer group keeps every
delivered, unacknowledged job in its pending list with an idle time, so
``XAUTOCLAIM`` hands a crashed worker's job to another after the SLA while
the other jobs flow on; a Kafka partition has one offset, so one stuck job
would hold back everything behind it, and scaling consumers past the
partition count does nothing. Workers here join and leave freely (the
NOTES: autoscale consumer-group services, not the dataflow), and Redis is
already a dependency. Durability beyond Redis's own (AOF) comes from the
PostgreSQL ledger, which is the source of truth for what is done.

Keys, under ``{prefix}:render:``:

- ``jobs`` the stream (one entry per job; an entry is deleted when its job
  is acknowledged, so ``XLEN`` is the queue depth), group ``workers``;
- ``key:{job_key}`` the dedup marker: the first enqueue sets it (``SET NX``)
  and adds the entry in the same script, so the same trigger twice is one job;
- ``retry`` a sorted set of jobs waiting out their back-off (score: due time);
- ``dead`` the dead-letter list: one JSON object per job that exhausted its
  attempts, with its error and how its tile was invalidated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from render.jobs import RenderJob

_ENQUEUE_LUA = """
local added = {}
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local key = ARGV[i]
  if redis.call('SET', KEYS[1] .. key, '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[2], '*', 'key', key, 'job', ARGV[i + 1])
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
end
return added
"""

# Due retries go back into the stream atomically: none is lost or doubled.
_PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local sep = string.find(member, ' ', 1, true)
  redis.call('XADD', KEYS[2], '*', 'key', string.sub(member, 1, sep - 1),
             'job', string.sub(member, sep + 1))
end
return #due
"""


@dataclass(frozen=True)
class Delivery:
    """A job handed to this consumer; ``entry_id`` acknowledges it."""

    entry_id: str
    job: RenderJob
    reclaimed: bool = False


class RenderQueue:
    """Plain queue client (no threads of its own); safe to share between threads."""

    GROUP = "workers"

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "tilepipe",
        dedup_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        base = f"{prefix}:render:"
        self.stream = base + "jobs"
        self.dedup_prefix = base + "key:"
        self.retry_key = base + "retry"
        self.dead_key = base + "dead"
        self.dedup_ttl_s = dedup_ttl_s
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._promote = client.register_script(_PROMOTE_LUA)

    def ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist."""
        try:
            self.client.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def enqueue(self, jobs: Iterable[RenderJob], chunk: int = 500) -> list[bool]:
        """Add jobs not seen before; per job True if it is new, False if a duplicate."""
        jobs = list(jobs)
        pipe = self.client.pipeline(transaction=False)
        for i in range(0, len(jobs), chunk):
            args: list[str | bytes | int] = [self.dedup_ttl_s]
            for job in jobs[i : i + chunk]:
                args += [job.key, job.encode()]
            self._enqueue(keys=[self.dedup_prefix, self.stream], args=args, client=pipe)
        return [bool(r) for part in pipe.execute() for r in part]

    def read(self, consumer: str, count: int = 1, block_ms: int = 1000) -> list[Delivery]:
        """New jobs for ``consumer``, waiting up to ``block_ms`` for one."""
        reply: Any = self.client.xreadgroup(
            self.GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [d for _stream, entries in reply or [] for d in self._deliveries(entries, False)]

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 10) -> list[Delivery]:
        """Jobs another consumer took and left unacknowledged longer than ``min_idle_ms``."""
        out: list[Delivery] = []
        start = "0-0"
        while len(out) < count:
            reply: Any = self.client.xautoclaim(
                self.stream, self.GROUP, consumer, min_idle_ms, start, count=count - len(out)
            )
            start = _s(reply[0])
            out += self._deliveries(reply[1], True)
            if start == "0-0":
                break
        return out

    def ack(self, delivery: Delivery) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream, self.GROUP, delivery.entry_id)
        pipe.xdel(self.stream, delivery.entry_id)
        pipe.execute()

    def retry_later(self, delivery: Delivery, delay_s: float) -> None:
        """Acknowledge the delivery and bring the job back after ``delay_s``."""
        member = delivery.job.key.encode() + b" " + delivery.job.encode()
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.retry_key, {member: (time.time() + delay_s) * 1000})
        pipe.xack(self.stream, self.GROUP, delivery.entry_id)
        pipe.xdel(self.stream, delivery.entry_id)
        pipe.execute()

    def promote_due(self, limit: int = 100) -> int:
        """Move retries whose back-off is over back into the stream."""
        return int(
            self._promote(keys=[self.retry_key, self.stream], args=[time.time() * 1000, limit])
        )

    def dead_letter(
        self, delivery: Delivery, error: str, attempts: int, invalidated: str | None = None
    ) -> None:
        """Acknowledge the delivery and record the job in the dead-letter list, with how its
        tile was invalidated (``"cache hit, purge miss"``; None if no cache is configured)."""
        doc = {
            "job_key": delivery.job.key,
            "job": orjson.loads(delivery.job.encode()),
            "error": error,
            "attempts": attempts,
            "dead_at_ms": int(time.time() * 1000),
            "invalidated": invalidated,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self.dead_key, orjson.dumps(doc))
        pipe.xack(self.stream, self.GROUP, delivery.entry_id)
        pipe.xdel(self.stream, delivery.entry_id)
        pipe.execute()

    def dead_letters(self) -> list[dict[str, object]]:
        return [orjson.loads(d) for d in self.client.lrange(self.dead_key, 0, -1)]

    def depth(self) -> int:
        """Jobs not yet done: in the stream (waiting or in progress) plus waiting to retry."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.zcard(self.retry_key)
        return sum(int(n) for n in pipe.execute())

    def _deliveries(self, entries: list[Any], reclaimed: bool) -> list[Delivery]:
        out = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            out.append(Delivery(_s(entry_id), RenderJob.decode(fields[b"job"]), reclaimed))
        return out


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
