"""Stage 8: broadcast ``tile_updated`` on Redis pub/sub, forward-only per tile.

Each batch is one round trip: a pipeline of script calls, each covering up
to ``chunk`` updates. The script compares every object's stored order key
with the update's and, only if one advanced, stores the new order keys and
the message and publishes it, all in one atomic step. So an equal or older
version is never published, whatever replays or restarts happen upstream,
and the latest message of every tile stays readable for clients that join
late: ``HGET {prefix}:tile:{tms}:{z}:{x}:{y} msg``. Refused updates are
counted durably in ``HGET {prefix}:stats suppressed``, across restarts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from sinks import accounting
from sinks.messages import encode
from sinks.retry import RetryPolicy, write_with_retry
from tilepipe.records import TileUpdate

log = logging.getLogger(__name__)

# Order keys are compared byte by byte: Lua's `<` on strings uses the
# server's collation locale, which may ignore punctuation.
CAS_PUBLISH_LUA = """
local function before(a, b)
  local n = math.min(#a, #b)
  for p = 1, n do
    local x, y = string.byte(a, p), string.byte(b, p)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- Keep at most `cap` objects per tile: past it, forget the quarter whose last
-- applied event is oldest (the event time ends each order key).
local function trim(key, cap)
  local all = redis.call('HGETALL', key)
  local objs = {}
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, 2) == 'o:' then
      objs[#objs + 1] = {all[j], string.sub(all[j + 1], -15)}
    end
  end
  if #objs <= cap then return end
  table.sort(objs, function(a, b) return before(a[2], b[2]) end)
  local drop = #objs - math.floor(cap * 3 / 4)
  for j = 1, drop do redis.call('HDEL', key, objs[j][1]) end
end
local channel, cmd, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local i = 4
local out = {}
local suppressed = 0
local stats = KEYS[#KEYS]
for k = 1, #KEYS - 1 do
  local key = KEYS[k]
  local n = tonumber(ARGV[i]); i = i + 1
  local fields = {}
  local older = false
  for j = 1, n do
    local f, o = 'o:' .. ARGV[i], ARGV[i + 1]; i = i + 2
    local cur = redis.call('HGET', key, f)
    if (not cur) or before(cur, o) then
      fields[#fields + 1] = f; fields[#fields + 1] = o
    elseif cur ~= o then
      older = true
    end
  end
  local msg = ARGV[i]; i = i + 1
  if #fields > 0 then
    fields[#fields + 1] = 'msg'; fields[#fields + 1] = msg
    redis.call('HSET', key, unpack(fields))
    if cap > 0 and redis.call('HLEN', key) > cap + 1 then
      trim(key, cap)
    end
    redis.call(cmd, channel, msg)
    out[k] = 1
  elseif older then
    out[k] = -1
    suppressed = suppressed + 1
  else
    out[k] = 0
    suppressed = suppressed + 1
  end
end
if suppressed > 0 then
  redis.call('HINCRBY', stats, 'suppressed', suppressed)
end
return out
"""


@dataclass(frozen=True)
class RedisTarget:
    url: str  # redis:// or rediss://, with the database
    channel: str = "tilepipe:tile_updated"
    prefix: str = "tilepipe"
    mode: Literal["publish", "spublish"] = "publish"
    chunk: int = 500
    max_objects_per_tile: int = 1024
    """Objects (features, sensors) whose versions a tile remembers; 0 = no limit."""

    def tile_key(self, u: TileUpdate) -> str:
        return self.key_of(u.tms, u.z, u.x, u.y)

    def key_of(self, tms: str, z: int, x: int, y: int) -> str:
        return f"{self.prefix}:tile:{tms}:{z}:{x}:{y}"

    @property
    def stats_key(self) -> str:
        """A hash of durable counters; ``suppressed`` counts updates the store refused."""
        return f"{self.prefix}:stats"


Prepared = tuple[str, list[tuple[str, str]], bytes]
"""One message ready for the compare-and-set script: tile key, ``(object, order)``s, JSON."""


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


class RedisBroadcaster:
    """Plain broadcaster (no Bytewax): tests and benchmarks call it directly."""

    def __init__(self, target: RedisTarget, policy: RetryPolicy | None = None) -> None:
        self.target = target
        self.policy = policy or RetryPolicy()
        self.client = connect(target.url)
        self._script = self.client.register_script(CAS_PUBLISH_LUA)

    def publish(self, updates: list[TileUpdate]) -> list[int]:
        """Publish ``updates``; per update 1 published, 0 duplicate, -1 stale."""
        if not updates:
            return []
        results = self.publish_prepared(
            [(self.target.tile_key(u), list(u.objects), encode(u)) for u in updates]
        )
        accounting.record_results(updates, results)
        return results

    def publish_prepared(self, items: list[Prepared]) -> list[int]:
        """Publish messages already encoded: ``(tile key, objects, message)`` each.

        The render worker calls this after a commit with what the dataflow
        put in the job, so the broadcast goes through the same forward-only
        compare-and-set as a direct one. No accounting: the caller counts.
        """
        if not items:
            return []
        chunk = self.target.chunk
        calls = [self._call_args(items[i : i + chunk]) for i in range(0, len(items), chunk)]

        def write() -> list[int]:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                self._script(keys=keys, args=args, client=pipe)
            results: list[int] = []
            for part in pipe.execute():
                results.extend(int(r) for r in part)
            return results

        return write_with_retry(
            "redis", write, self.policy, (redis.ConnectionError, redis.TimeoutError)
        )

    def _call_args(self, items: list[Prepared]) -> tuple[list[str], list[bytes | str | int]]:
        keys = [key for key, _, _ in items]
        keys.append(self.target.stats_key)
        args: list[bytes | str | int] = [
            self.target.channel, self.target.mode, self.target.max_objects_per_tile
        ]  # fmt: skip
        for _, objects, msg in items:
            args.append(len(objects))
            for obj, order in objects:
                args.append(obj)
                args.append(order)
            args.append(msg)
        return keys, args

    def close(self) -> None:
        self.client.close()


class _RedisPartition(StatelessSinkPartition[TileUpdate]):
    def __init__(self, broadcaster: RedisBroadcaster) -> None:
        self._b = broadcaster

    def write_batch(self, items: list[TileUpdate]) -> None:
        self._b.publish(items)

    def close(self) -> None:
        self._b.close()


class RedisBroadcastSink(DynamicSink[TileUpdate]):
    def __init__(self, target: RedisTarget, policy: RetryPolicy | None = None) -> None:
        self.target = target
        self.policy = policy

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(RedisBroadcaster(self.target, self.policy))
