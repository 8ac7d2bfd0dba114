"""The tile store in Redis: each tile's newest versions and message, forward only.

Every publisher of ``tile_updated`` (the dataflow's Redis sink, the render worker
after a commit) goes through :class:`TileStore`, so one rule holds for all of them:
an update is stored and published only if one of its objects' order keys advanced,
in one atomic script call per tile. An equal or older version is never published,
whatever replays, restarts or redeliveries happen upstream, and the latest message
of every tile stays readable for clients that join late:
``HGET {prefix}:tile:{tms}:{z}:{x}:{y} msg``. Refused updates are counted durably in
``HGET {prefix}:stats suppressed``. A batch is one round trip: a pipeline of script
calls, each covering up to ``chunk`` updates (docs/ARCHITECTURE.md, "Guarantees").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from tilepipe.config import redis_uri
from tilepipe.connect import redis_client
from tilepipe.records import TileUpdate
from tilepipe.retry import (
    REDIS_RETRY_ON,
    RetryPolicy,
    TransientRedisError,
    is_transient_redis_error,
    transient_redis,
    write_with_retry,
)

#: The key prefix every service uses unless told otherwise (``?prefix=`` or a setting).
DEFAULT_PREFIX = "tilepipe"

#: The Redis commands a ``tile_updated`` may be published with (``?mode=``).
PUBLISH_MODES = ("publish", "spublish")

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
-- applied event is oldest (the event time ends each order key), and remember
-- the newest event time forgotten as the tile's `floor`: an object the tile
-- does not know is refused unless its event is newer than that, so a forgotten
-- object's old version cannot come back (review M5).
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
  local floor = redis.call('HGET', key, 'floor')
  if (not floor) or before(floor, objs[drop][2]) then
    redis.call('HSET', key, 'floor', objs[drop][2])
  end
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
  local floor = nil
  for j = 1, n do
    local f, o = 'o:' .. ARGV[i], ARGV[i + 1]; i = i + 2
    local cur
    if j == 1 then  -- the floor comes with the first object: no extra call per update
      local got = redis.call('HMGET', key, f, 'floor')
      cur, floor = got[1], got[2]
    else
      cur = redis.call('HGET', key, f)
    end
    if not cur then
      if (not floor) or before(floor, string.sub(o, -15)) then
        fields[#fields + 1] = f; fields[#fields + 1] = o
      else
        older = true
      end
    elseif before(cur, o) then
      fields[#fields + 1] = f; fields[#fields + 1] = o
    elseif cur ~= o then
      older = true
    end
  end
  local msg, token, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]); i = i + 3
  if #fields > 0 then
    fields[#fields + 1] = 'msg'; fields[#fields + 1] = msg
    fields[#fields + 1] = 'w'; fields[#fields + 1] = token
    redis.call('HSET', key, unpack(fields))
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    if cap > 0 and redis.call('HLEN', key) > cap + 3 then
      trim(key, cap)
    end
    redis.call(cmd, channel, msg)
    out[k] = 1
  elseif redis.call('HGET', key, 'w') == token then
    out[k] = 1  -- this very update, written by an earlier try of the same call
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
    prefix: str = DEFAULT_PREFIX
    mode: Literal["publish", "spublish"] = "publish"
    chunk: int = 500
    max_objects_per_tile: int = 1024
    """Objects (features, sensors) whose versions a tile remembers; 0 = no limit."""
    tile_ttl_s: int = 0
    """Expire a tile's hash this long after its last publish (0: never), at ``ttl_minzoom``+."""
    ttl_minzoom: int = 0

    def __post_init__(self) -> None:
        # The mode is run as a Redis command inside the script: only these two (review L8).
        if self.mode not in PUBLISH_MODES:
            raise ValueError(
                f"Redis publish mode {self.mode!r} is not one of {', '.join(PUBLISH_MODES)};"
                " fix ?mode= in the sink URL (or TILEPIPE_PUBLISH_MODE)"
            )

    @classmethod
    def from_uri(
        cls, uri: str, *, prefix: str = DEFAULT_PREFIX, mode: str = "publish", **kw: Any
    ) -> RedisTarget:
        """A target from ``redis[s]://HOST:PORT/DB?channel=&prefix=&mode=``: the URI's
        options win over ``prefix`` and ``mode`` (the service's settings)."""
        url, options = redis_uri(uri)
        return cls(
            url,
            channel=options.get("channel", cls.channel),
            prefix=options.get("prefix", prefix),
            mode=options.get("mode", mode),  # type: ignore[arg-type]  # checked in __post_init__
            **kw,
        )

    def tile_key(self, u: TileUpdate) -> str:
        return self.key_of(u.tms, u.z, u.x, u.y)

    def key_of(self, tms: str, z: int, x: int, y: int) -> str:
        return f"{self.prefix}:tile:{tms}:{z}:{x}:{y}"

    def ttl_of(self, z: int) -> int:
        return self.tile_ttl_s if self.tile_ttl_s and z >= self.ttl_minzoom else 0

    @property
    def stats_key(self) -> str:
        """A hash of durable counters; ``suppressed`` counts updates the store refused."""
        return f"{self.prefix}:stats"


Prepared = tuple[str, list[tuple[str, str]], bytes]
"""One message ready for the compare-and-set script: tile key, ``(object, order)``s, JSON."""

Item = tuple[str, list[tuple[str, str]], bytes, int]
"""What one script call takes per update: tile key, objects, message, TTL seconds."""


def script_call(
    target: RedisTarget, items: list[Item], call: str, first: int = 0
) -> tuple[list[str], list[bytes | str | int]]:
    """The keys and arguments of one :data:`CAS_PUBLISH_LUA` call for ``items``.

    Each update's write token is ``call`` (unique per publish) and its index, so an update
    an earlier try wrote is recognised on a retry. Public for clients of the script that
    bring their own Redis client (the gateway benchmark publishes through redis.asyncio).
    """
    keys = [key for key, _, _, _ in items]
    keys.append(target.stats_key)
    args: list[bytes | str | int] = [target.channel, target.mode, target.max_objects_per_tile]
    for n, (_, objects, msg, ttl) in enumerate(items):
        args.append(len(objects))
        for obj, order in objects:
            args.append(obj)
            args.append(order)
        args += [msg, f"{call}.{first + n}", ttl]
    return keys, args


class TileStore:
    """The compare-and-set store and publisher, with no Bytewax and no accounting."""

    def __init__(self, target: RedisTarget, policy: RetryPolicy | None = None) -> None:
        self.target = target
        self.policy = policy or RetryPolicy()
        self.client = redis_client(target.url)
        self._script = self.client.register_script(CAS_PUBLISH_LUA)

    def publish_prepared(self, items: list[Prepared]) -> list[int]:
        """Publish messages already encoded: ``(tile key, objects, message)`` each.

        The render worker calls this after a commit with what the dataflow
        put in the job, so the broadcast goes through the same forward-only
        compare-and-set as a direct one. No accounting: the caller counts.
        A message Redis refuses for itself raises its error.
        """
        out = self.publish_items([(key, objects, msg, 0) for key, objects, msg in items])
        for r in out:
            if isinstance(r, Exception):
                raise r
        return [int(r) for r in out]  # type: ignore[arg-type]

    def publish_items(self, items: list[Item]) -> list[Any]:
        """Per item 1/0/-1, or the ``ResponseError`` Redis refused that item with.

        One pipeline of script calls per attempt, results kept per chunk: a
        chunk that went through is not sent again when another failed, and an
        update written by an earlier try that lost its reply is recognised by
        its write token (``w``), so a retry counts it published, not duplicate
        (review L4). Transient errors (see ``tilepipe/retry.py``) are retried with
        the one back-off policy; a chunk refused otherwise is sent again one
        update per call, so only the updates Redis refuses themselves fail.
        """
        if not items:
            return []
        call = secrets.token_hex(8)
        size = self.target.chunk
        chunks = {
            start: script_call(self.target, items[start : start + size], call, start)
            for start in range(0, len(items), size)
        }
        done: dict[int, list[Any]] = {}

        def attempt() -> None:
            # A chunk Redis refuses for one of its updates is split into one call per
            # update and sent again at once (not after a back-off: nothing is down).
            while todo := [start for start in chunks if start not in done]:
                pipe = self.client.pipeline(transaction=False)
                for start in todo:
                    keys, args = chunks[start]
                    self._script(keys=keys, args=args, client=pipe)
                transient: Exception | None = None
                for start, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                    if not isinstance(reply, Exception):
                        done[start] = [int(r) for r in reply]
                    elif is_transient_redis_error(reply):
                        transient = reply
                    elif len(chunks[start][0]) > 2:  # several updates: find the one refused
                        for j in range(start, start + len(chunks[start][0]) - 1):
                            chunks[j] = script_call(self.target, items[j : j + 1], call, j)
                    else:
                        done[start] = [reply]
                if transient is not None:
                    raise TransientRedisError(str(transient)) from transient

        write_with_retry("redis", transient_redis(attempt), self.policy, REDIS_RETRY_ON)
        out: list[Any] = []
        for start in sorted(done):
            out.extend(done[start])
        return out

    def close(self) -> None:
        self.client.close()
