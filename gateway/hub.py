"""One Redis subscription per process, fanned out in memory; resume from the per-tile hash.

The hub owns the process's sessions and the :class:`~gateway.core.Router`.
A single task reads the pub/sub channel and offers each message to exactly
the sessions the router names; each session's writer (``gateway.app``)
drains its conflation map as its socket allows.

Resume from state, never from a log. When a session tracks tiles (on
connect, on reconnect, after the gateway's own Redis connection came back),
the hub (1) registers them in the router, (2) reads each tile's latest
message (``HGET {prefix}:tile:{tms}:{z}:{x}:{y} msg``, pipelined and merged
across sessions), (3) publishes a marker on a control channel of its own on
the *same* subscription and waits for it to come back, then (4) offers every
stored message the client does not have. Pub/sub delivers in publish order,
so when the marker arrives every message published before the read has been
routed; a tile that received a live message after (1) already has something
at least as new, and its stored copy is dropped (``Session.offer_state``).
Hence nothing published after (1) is missed, nothing before it is missed if
it is the tile's latest, and nothing older follows something newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import metrics
from gateway.auth import EVERYTHING, Scope
from gateway.core import (
    Area,
    FrameError,
    Have,
    Message,
    Router,
    Session,
    TileId,
    area_cells,
    parse_have,
    parse_tile_spec,
    resync_frame,
)
from gateway.settings import GatewaySettings
from tilepipe.tiles import WEB_MERCATOR_QUAD

log = logging.getLogger("tilepipe.gateway")


READ_MSGS_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'msg') end
return out
"""


class Full(Exception):
    """The process holds ``max_connections`` sessions; answer 503 + Retry-After."""


class Client:
    """A session plus what its transport needs: the writer's wake-up, the token's scope."""

    def __init__(self, session: Session, transport: str, scope: Scope) -> None:
        self.session = session
        self.transport = transport
        self.scope = scope
        self.event = asyncio.Event()
        session.wake = self.event.set
        self.send_started: float | None = None  # monotonic time of the send in progress
        self.closing: Callable[[int, str], None] | None = None  # set by the transport
        self.trailers: list[bytes] = []  # control frames that go after the pending messages
        self.closed = False


class Hub:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.url, self.channel, self.prefix = settings.redis_target()
        self.control = f"{self.channel}:gateway:{uuid.uuid4().hex[:12]}"
        self.router = Router(settings.area_level)
        self.clients: dict[str, Client] = {}
        self.lingering: dict[str, tuple[Client, float]] = {}
        self.subscribed = asyncio.Event()
        self.epoch: str | None = None
        self.stopping = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._reads: list[tuple[Client, dict[TileId, int], str]] = []
        self._reads_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_redis_error = "not connected yet"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._redis = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=5, socket_timeout=10, retry_on_timeout=False
        )
        # One script call reads a chunk of tiles: a pipeline of HGETs costs redis-py ~40 us
        # of packing and parsing per tile, which a reconnect storm multiplies (cProfile).
        self._read_msgs = self._redis.register_script(READ_MSGS_LUA)
        for coro in (self._subscribe_loop(), self._read_loop(), self._sweep_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        self.stopping.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def not_ready_reason(self) -> str | None:
        return None if self.subscribed.is_set() else f"Redis subscription: {self._last_redis_error}"

    def tile_key(self, t: TileId) -> str:
        return f"{self.prefix}:tile:{WEB_MERCATOR_QUAD}:{t[0]}:{t[1]}:{t[2]}"

    # -- sessions ----------------------------------------------------------------------------

    def open(self, transport: str, scope: Scope = EVERYTHING, sid: str | None = None) -> Client:
        if len(self.clients) >= self.settings.max_connections:
            metrics.CONNECTS.labels("rejected_full").inc()
            raise Full
        s = Session(
            sid or uuid.uuid4().hex,
            self.settings.max_tiles,
            self.settings.max_pending,
            layers=scope.layers,
        )
        c = Client(s, transport, scope)
        self.clients[s.id] = c
        metrics.CONNECTS.labels("accepted").inc()
        metrics.CONNECTIONS.labels(transport).inc()
        return c

    def close(self, c: Client, linger: bool = False) -> None:
        """The transport ended. With ``linger`` the subscriptions stay for a reattach."""
        if self.clients.pop(c.session.id, None) is None:
            return
        metrics.CONNECTIONS.labels(c.transport).dec()
        c.send_started = None
        c.closing = None
        if linger and not self.stopping.is_set():
            self.lingering[c.session.id] = (
                c, time.monotonic() + self.settings.session_linger.total_seconds()
            )  # fmt: skip
        else:
            self._forget(c)

    def reattach(self, sid: str, scope: Scope) -> Client | None:
        """A lingering SSE session of the same subject, back in service, or ``None``."""
        entry = self.lingering.get(sid)
        if entry is None or entry[0].scope.sub != scope.sub:
            return None
        if len(self.clients) >= self.settings.max_connections:
            metrics.CONNECTS.labels("rejected_full").inc()
            raise Full
        del self.lingering[sid]
        c = entry[0]
        c.scope = scope
        c.event = asyncio.Event()
        c.session.wake = c.event.set
        c.closed = False
        self.clients[sid] = c
        metrics.CONNECTS.labels("accepted").inc()
        metrics.CONNECTIONS.labels(c.transport).inc()
        c.event.set()
        return c

    def find(self, sid: str) -> Client | None:
        c = self.clients.get(sid)
        if c is None and sid in self.lingering:
            c = self.lingering[sid][0]
        return c

    def _forget(self, c: Client) -> None:
        c.closed = True
        self.router.drop(c.session)
        metrics.TRACKED.set(len(self.router.by_tile))

    # -- what clients ask --------------------------------------------------------------------

    def apply(self, c: Client, frame: Any) -> None:
        """One client frame (``track``, ``untrack``, ``area``, ``ping``); raises FrameError."""
        if not isinstance(frame, dict):
            raise FrameError("bad_frame", 'a frame is a JSON object with a "type"')
        kind = frame.get("type")
        s = c.session
        if kind == "track":
            layers = frame.get("layers")
            if layers is not None:
                if not isinstance(layers, list) or not all(isinstance(v, str) for v in layers):
                    raise FrameError("bad_frame", "layers must be a list of layer names")
                s.layers = c.scope.layer_filter(frozenset(layers))
            self.track(c, parse_tiles(frame.get("tiles")))
        elif kind == "untrack":
            tiles = frame.get("tiles")
            gone = list(s.tiles) if tiles == "all" else list(parse_tiles(tiles))
            self.router.untrack(s, gone)
            metrics.TRACKED.set(len(self.router.by_tile))
            c.trailers.append(self.live_frame(s))
            c.event.set()
        elif kind == "area":
            if frame.get("bbox") is None:
                self.router.set_area(s, None, set())
            else:
                area = Area.parse(frame.get("bbox"), frame.get("minzoom"), frame.get("maxzoom"))
                if not c.scope.allows_area(area):
                    raise FrameError("forbidden", "the area is outside this token's area")
                cells = area_cells(area, self.settings.area_level, self.settings.max_area_cells)
                self.router.set_area(s, area, cells)
            s.overflowed = False
            c.trailers.append(self.live_frame(s))
            c.event.set()
        elif kind == "ping":
            s.note(
                orjson.dumps({"type": "pong", "id": frame.get("id"), "ts": int(time.time() * 1000)})
            )
        else:
            raise FrameError(
                "bad_frame", f"unknown frame type {kind!r}: use track, untrack, area or ping"
            )

    def track(self, c: Client, tiles: dict[TileId, Have], reason: str = "resume") -> None:
        refused = [t for t in tiles if not c.scope.allows_tile(t)]
        if refused:
            for t in refused:
                del tiles[t]
        gens = self.router.track(c.session, tiles)
        metrics.TRACKED.set(len(self.router.by_tile))
        self.read_state(c, gens, reason)
        if refused:
            raise FrameError(
                "forbidden",
                f"{len(refused)} tiles are outside this token's area; the others are tracked",
                tiles=[f"{z}/{x}/{y}" for z, x, y in refused[:50]],
            )

    def live_frame(self, s: Session) -> bytes:
        return orjson.dumps({"type": "live", "tiles": len(s.tiles), "area_cells": len(s.cells)})

    # -- resume from state -------------------------------------------------------------------

    def read_state(self, c: Client, gens: dict[TileId, int], reason: str) -> None:
        """Queue a state read of ``gens``' tiles for ``c``; reads of one moment are merged."""
        self._reads.append((c, gens, reason))
        self._reads_ready.set()

    async def _read_loop(self) -> None:
        while True:
            await self._reads_ready.wait()
            self._reads_ready.clear()
            await self.subscribed.wait()  # a read is only placed in order by a live subscription
            batch, self._reads = self._reads, []
            try:
                await self._read(batch)
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                # Redone, not dropped: a read is idempotent (what the client has decides), and
                # the first command after a Redis restart fails on the pool's dead connection.
                log.warning("state read failed (%s); retrying", e)
                self._reads[:0] = [r for r in batch if not r[0].closed]
                self._reads_ready.set()
                await asyncio.sleep(0.2 + random.random() * 0.3)

    async def _read(self, batch: list[tuple[Client, dict[TileId, int], str]]) -> None:
        assert self._redis is not None
        tiles = list({t for _, gens, _ in batch for t in gens})
        stored: dict[TileId, Message] = {}
        chunk = self.settings.resume_chunk
        for i in range(0, len(tiles), chunk):
            part = tiles[i : i + chunk]
            raws = await self._read_msgs(keys=[self.tile_key(t) for t in part])
            now = time.monotonic()
            for t, raw in zip(part, raws, strict=True):
                if raw:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        m = Message.parse(raw, now)
                        m.live = False
                        stored[t] = m
        await self.barrier()
        for c, gens, reason in batch:
            if c.closed:
                continue
            for t, gen in gens.items():
                found = stored.get(t)
                if found is not None:
                    c.session.offer_state(found, gen)
            metrics.RESYNCS.labels(reason).inc()
            c.trailers.append(self.live_frame(c.session))
            c.event.set()

    async def barrier(self, timeout: float = 10.0) -> None:
        """Return once the subscription has delivered everything published before now."""
        assert self._redis is not None
        token = uuid.uuid4().hex.encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = fut
        try:
            await self._redis.publish(self.control, token)
            await asyncio.wait_for(fut, timeout)
        finally:
            self._barriers.pop(token, None)

    def _resync_all(self, reason: str) -> None:
        """After the subscription was lost: re-read every tracked tile; tell area sessions."""
        for c in list(self.clients.values()) + [c for c, _ in self.lingering.values()]:
            s = c.session
            s.note(resync_frame(reason, areas=s.area is not None))
            if s.tiles:
                self.read_state(c, {t: sub.gen for t, sub in s.tiles.items()}, reason)

    # -- the subscription --------------------------------------------------------------------

    async def _subscribe_loop(self) -> None:
        first = True
        delay = 0.1
        cap = self.settings.redis_retry_max.total_seconds()
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel, self.control)
                confirmed = 0
                while confirmed < 2:
                    msg = await pubsub.get_message(timeout=5)
                    if msg is None:
                        raise ConnectionError("Redis did not confirm SUBSCRIBE within 5s")
                    if msg["type"] == "subscribe":
                        confirmed += 1
                info = await client.info("server")
                self.epoch = str(info.get("run_id", "")) or None
                self.subscribed.set()
                metrics.REDIS_UP.set(1)
                log.info(
                    "subscribed to %s", self.channel, extra={"epoch": self.epoch, "first": first}
                )
                if not first:
                    self._resync_all("redis_reconnected")
                first, delay = False, 0.1
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as e:
                self._last_redis_error = str(e) or type(e).__name__
                if self.subscribed.is_set():
                    log.warning("Redis subscription lost: %s; reconnecting", self._last_redis_error)
            except Exception as e:  # a bug must not leave the process deaf: log, resubscribe
                self._last_redis_error = f"{type(e).__name__}: {e}"
                log.exception("the subscription reader failed; resubscribing")
            finally:
                self.subscribed.clear()
                metrics.REDIS_UP.set(0)
                for fut in self._barriers.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("subscription lost"))
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(cap, delay * 2)

    async def _pump(self, pubsub: Any) -> None:
        idle = self.settings.keepalive.total_seconds()
        quiet_since = time.monotonic()
        pinged = False
        control = self.control.encode()
        route = self.router.route
        while True:
            msg = await pubsub.get_message(timeout=idle)
            if msg is None:
                if pinged and time.monotonic() - quiet_since > 2 * idle:
                    raise ConnectionError(f"Redis did not answer a PING within {idle:g}s")
                if not pinged:
                    await pubsub.ping()
                    pinged = True
                continue
            quiet_since, pinged = time.monotonic(), False
            if msg["type"] != "message":
                continue
            data = msg["data"]
            if msg["channel"] == control:
                fut = self._barriers.get(data)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            try:
                m = Message.parse(data)
            except (ValueError, KeyError, TypeError):
                continue  # not a tile update (another publisher on the channel)
            metrics.RECEIVED.inc()
            for s in route(m):
                if m.tile in s.pending:
                    metrics.CONFLATED.inc()
                s.offer(m)

    # -- slow clients and expired tokens -----------------------------------------------------

    async def _sweep_loop(self) -> None:
        slow = self.settings.slow_timeout.total_seconds()
        period = max(0.05, min(1.0, slow / 4))
        while True:
            await asyncio.sleep(period)
            now, wall = time.monotonic(), time.time()
            for c in list(self.clients.values()):
                try:
                    if c.send_started is not None and now - c.send_started > slow:
                        metrics.SLOW_CLOSES.inc()
                        self.end(c, 4008, "slow")
                    elif c.scope.expires is not None and wall > c.scope.expires:
                        self.end(c, 4003, "token_expired")
                except Exception:  # one broken socket must not stop the sweep for the rest
                    log.exception("closing session %s failed", c.session.id)
            for sid, (c, until) in list(self.lingering.items()):
                if now > until:
                    del self.lingering[sid]
                    self._forget(c)

    def end(self, c: Client, code: int, reason: str) -> None:
        """Close a session from the server side with ``code`` (the transport knows how)."""
        closing, c.closing = c.closing, None
        if closing is not None:
            closing(code, reason)


def parse_tiles(value: Any) -> dict[TileId, Have]:
    """``{"z/x/y": have}`` or ``["z/x/y[@version[:hash]]", ...]``."""
    out: dict[TileId, Have] = {}
    if isinstance(value, dict):
        for key, have in value.items():
            tile, spec_have = parse_tile_spec(str(key))
            out[tile] = parse_have(have, str(key)) if have is not None else spec_have
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise FrameError("bad_tile", 'tiles are "z/x/y[@version[:hash]]" strings')
            tile, have = parse_tile_spec(item)
            out[tile] = have
    else:
        raise FrameError(
            "bad_frame", 'tiles: an object {"z/x/y": version} or a list of "z/x/y@version"'
        )
    return out


Writer = Callable[[bytes], Awaitable[None]]


async def drain(
    hub: Hub,
    c: Client,
    send: Writer,
    encode: Callable[[list[Message]], bytes],
    control: Callable[[bytes], bytes] = lambda f: f,
) -> None:
    """The writer of one session: control frames, then pending messages, as the socket allows.

    ``send`` blocks while the socket's buffer is over its high-water mark; the
    time it has been blocked is what the sweep compares with ``slow_timeout``.
    ``encode`` turns up to ``max_batch`` messages into one write (a WebSocket
    batch frame, or SSE events), ``control`` a control frame.
    """
    s = c.session
    limit = hub.settings.max_batch
    while True:
        await c.event.wait()
        c.event.clear()
        while s.notices or s.pending or c.trailers:
            if s.notices:
                await _send_frames(c, send, control, s.notices)
            if s.pending:
                await _send_messages(c, send, encode, s.take(limit))
                continue  # control frames that arrived meanwhile go first
            if c.trailers:
                await _send_frames(c, send, control, c.trailers)
        # Nothing of the last writes stays referenced while the session idles: a frame from
        # orjson holds a 4 KiB buffer, and an idle connection is most connections.


async def _send_frames(
    c: Client, send: Writer, control: Callable[[bytes], bytes], frames: list[bytes]
) -> None:
    while frames:  # frames added while one is being written are written too, in order
        await _timed(c, send, control(frames.pop(0)))


async def _send_messages(
    c: Client, send: Writer, encode: Callable[[list[Message]], bytes], msgs: list[Message]
) -> None:
    await _timed(c, send, encode(msgs))
    now = time.monotonic()
    live = 0
    for m in msgs:
        metrics.LATENCY.observe(now - m.received)
        live += m.live
    if live:
        metrics.DELIVERED.labels("live").inc(live)
    if len(msgs) - live:
        metrics.DELIVERED.labels("state").inc(len(msgs) - live)
    c.session.delivered += len(msgs)


async def _timed(c: Client, send: Writer, frame: bytes) -> None:
    c.send_started = time.monotonic()
    try:
        await send(frame)
    finally:
        c.send_started = None
