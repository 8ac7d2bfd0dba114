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
  and adds the entry in the same script, so the same trigger twice is one job.
  It lives for hours, not days (``dedup_ttl_s``, 6 h): it only spares a replay
  the round trip to the ledger, which refuses a finished job for as long as it
  keeps the job's row, and after that the tile's per-object order keys refuse a
  release already committed. 104 B per marker at 1,000 jobs/s is 2.2 GiB of
  Redis over 6 h; the former 7 days came to ~59 GiB;
- ``retry`` a sorted set of jobs waiting out their back-off (score: due time);
- ``dead`` the dead-letter list: one JSON object per job that exhausted its
  attempts, with its error and how its tile was invalidated; only the newest
  ``dead_max`` are kept (the ledger keeps every DEAD job's row and error).

Only the consumer that owns an entry acknowledges it (:data:`_SETTLE_LUA`): a worker
that stalled past the SLA, whose entry another worker reclaimed (``XAUTOCLAIM``
moves the same entry), would otherwise delete the entry the new owner relies on
for redelivery.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from render.jobs import RenderJob
from tilepipe.store import DEFAULT_PREFIX

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


# Settle a delivery only while `consumer` still owns its entry (XPENDING names the owner):
# acknowledge and delete it, and for a retry schedule the job again. A dead letter is
# recorded whoever owns the entry (the ledger's fenced DEAD transition already decided it),
# and the list keeps its newest ARGV[6] entries.
_SETTLE_LUA = """
if ARGV[4] == 'dead' then
  redis.call('RPUSH', KEYS[3], ARGV[5])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
if ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """A job handed to ``consumer``; ``entry_id`` acknowledges it."""

    entry_id: str
    job: RenderJob
    reclaimed: bool = False
    consumer: str = ""


class RenderQueue:
    """Plain queue client (no threads of its own); safe to share between threads."""

    GROUP = "workers"

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        dedup_ttl_s: int = 6 * 3600,
        dead_max: int = 10_000,
    ) -> None:
        self.client = client
        base = f"{prefix}:render:"
        self.stream = base + "jobs"
        self.dedup_prefix = base + "key:"
        self.retry_key = base + "retry"
        self.dead_key = base + "dead"
        self.dedup_ttl_s = dedup_ttl_s
        self.dead_max = dead_max
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._promote = client.register_script(_PROMOTE_LUA)
        self._settle = client.register_script(_SETTLE_LUA)

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

    def requeue(self, jobs: Iterable[RenderJob]) -> None:
        """Add entries for jobs whose entry was lost, past the dedup marker (the ledger's
        sweeper: a duplicate entry is harmless, the ledger fences every attempt)."""
        pipe = self.client.pipeline(transaction=False)
        for job in jobs:
            pipe.xadd(self.stream, {"key": job.key, "job": job.encode()})
        pipe.execute()

    def read(self, consumer: str, count: int = 1, block_ms: int = 1000) -> list[Delivery]:
        """New jobs for ``consumer``, waiting up to ``block_ms`` for one."""
        reply: Any = self.client.xreadgroup(
            self.GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [
            d
            for _stream, entries in reply or []
            for d in self._deliveries(entries, False, consumer)
        ]

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 10) -> list[Delivery]:
        """Jobs another consumer took and left unacknowledged longer than ``min_idle_ms``."""
        out: list[Delivery] = []
        start = "0-0"
        while len(out) < count:
            reply: Any = self.client.xautoclaim(
                self.stream, self.GROUP, consumer, min_idle_ms, start, count=count - len(out)
            )
            start = _s(reply[0])
            out += self._deliveries(reply[1], True, consumer)
            if start == "0-0":
                break
        return out

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge and delete the entry if this delivery's consumer still owns it;
        whether it did (False: reclaimed by another consumer, whose entry it now is)."""
        return self._settle_as(delivery, "ack")

    def retry_later(self, delivery: Delivery, delay_s: float) -> bool:
        """Acknowledge the delivery and bring the job back after ``delay_s`` (if owned)."""
        member = delivery.job.key.encode() + b" " + delivery.job.encode()
        return self._settle_as(delivery, "retry", member, (time.time() + delay_s) * 1000)

    def promote_due(self, limit: int = 100) -> int:
        """Move retries whose back-off is over back into the stream."""
        return int(
            self._promote(keys=[self.retry_key, self.stream], args=[time.time() * 1000, limit])
        )

    def dead_letter(
        self, delivery: Delivery, error: str, attempts: int, invalidated: str | None = None
    ) -> bool:
        """Record the job in the dead-letter list, with how its tile was invalidated
        (``"cache hit, purge miss"``; None if no cache is configured), and acknowledge the
        delivery if it still owns its entry."""
        doc = {
            "job_key": delivery.job.key,
            "job": orjson.loads(delivery.job.encode()),
            "error": error,
            "attempts": attempts,
            "dead_at_ms": int(time.time() * 1000),
            "invalidated": invalidated,
        }
        return self._settle_as(delivery, "dead", orjson.dumps(doc), self.dead_max)

    def _settle_as(self, d: Delivery, how: str, payload: bytes = b"", number: float = 0) -> bool:
        keys = [self.stream, self.retry_key, self.dead_key]
        args: list[str | bytes | float] = [self.GROUP, d.entry_id, d.consumer, how, payload, number]
        return bool(self._settle(keys=keys, args=args))

    def dead_letters(self) -> list[dict[str, object]]:
        return [orjson.loads(d) for d in self.client.lrange(self.dead_key, 0, -1)]

    def depth(self) -> int:
        """Jobs not yet done: in the stream (waiting or in progress) plus waiting to retry."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.zcard(self.retry_key)
        return sum(int(n) for n in pipe.execute())

    def _deliveries(self, entries: list[Any], reclaimed: bool, consumer: str) -> list[Delivery]:
        out = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            job = RenderJob.decode(fields[b"job"])
            out.append(Delivery(_s(entry_id), job, reclaimed, consumer))
        return out


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
