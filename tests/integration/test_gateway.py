"""The gateway through the real parts: Tansu, ``tilepipe run``, Redis, ``tilepipe gateway``.

Every gateway is the command as users run it (a subprocess under uvicorn on a
free loopback port), every client a real WebSocket (``websockets``) or SSE
(``httpx`` streaming) client. Updates come from tile events produced to Kafka
and carried by the dataflow, except where the test needs a flood faster than
the dataflow's ordering window: there they come from the Redis sink's own
broadcaster (the same compare-and-set script on the same Redis).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
import websockets

from sinks.redis import RedisBroadcaster, RedisTarget
from tests.support.gateway import GatewayProcess, LiveClient, SSEClient
from tests.support.job import Job
from tests.support.services import KafkaBroker, RedisServer
from tilepipe.tiles import quadkey, tile_bounds_lonlat

pytestmark = pytest.mark.integration

Tile = tuple[int, int, int]


def event(t: Tile, version: int | str, **extra: Any) -> bytes:
    z, x, y = t
    return json.dumps({"event_id": f"{z}-{x}-{y}-{version}-{uuid.uuid4().hex[:6]}",
                       "kind": "tile", "version": version, "source": "gw-test",
                       "ts": int(time.time() * 1000), "z": z, "x": x, "y": y,
                       **extra}).encode()  # fmt: skip


def key(t: Tile) -> str:
    return f"{t[0]}/{t[1]}/{t[2]}"


def tiles_of(updates: list[dict[str, Any]]) -> list[Tile]:
    return [(u["z"], u["x"], u["y"]) for u in updates]


def inner(t: Tile, eps: float = 1e-7) -> list[float]:
    w, s, e, n = tile_bounds_lonlat(*t)
    return [w + eps, s + eps, e - eps, n - eps]


def never_backwards(updates: list[dict[str, Any]]) -> None:
    """Tile events' versions are monotonic per tile: each client sees them only go up."""
    last: dict[Tile, int] = {}
    for u in updates:
        t = (u["z"], u["x"], u["y"])
        assert u["version"] >= last.get(t, -1), (t, u["version"], last.get(t))
        last[t] = u["version"]


class Pipeline:
    """Kafka topic → ``tilepipe run`` → Redis; :meth:`produce` sends tile events."""

    def __init__(self, kafka: KafkaBroker, redis_url: str, channel: str) -> None:
        self.kafka = kafka
        self.prefix = f"gw{uuid.uuid4().hex[:6]}"
        self.sink = f"{redis_url}?channel={channel}&prefix={self.prefix}"
        self.redis = redis.Redis.from_url(redis_url)
        self.topic = kafka.new_topic("gateway-events")
        self.job = Job("--source", kafka.url(self.topic), "--sink", self.sink,
                       "--kafka-start", "earliest", "--max-delay", "100ms",
                       "--allowed-lateness", "100ms")  # fmt: skip

    def produce(self, *events: bytes) -> None:
        self.kafka.produce(self.topic, list(events))

    def stored_version(self, t: Tile) -> Any:
        raw = self.redis.hget(f"{self.prefix}:tile:WebMercatorQuad:{t[0]}:{t[1]}:{t[2]}", "msg")
        return None if raw is None else json.loads(raw)["version"]

    def wait_stored(self, t: Tile, version: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.stored_version(t) != version:
            assert self.job.proc.poll() is None, self.job.stop()[2][-3000:]
            assert time.monotonic() < deadline, f"{t} never reached version {version} in Redis"
            time.sleep(0.05)

    def close(self) -> None:
        if self.job.proc.poll() is None:
            self.job.kill()
        self.redis.close()


@pytest.fixture
def pipeline(kafka, redis_url, channel) -> Iterator[Pipeline]:
    p = Pipeline(kafka, redis_url, channel)
    try:
        yield p
    finally:
        p.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


# -- routing ---------------------------------------------------------------------------------


def test_an_update_reaches_exactly_the_clients_tracking_its_tile_or_area(pipeline) -> None:
    a, b, nobody = (12, 2200, 1343), (12, 2201, 1343), (12, 3000, 1000)
    with GatewayProcess(pipeline.sink) as gw:

        async def scenario() -> None:
            async with (
                LiveClient(gw.ws_url) as ws_a,
                LiveClient(gw.ws_url) as ws_b,
                LiveClient(gw.ws_url) as ws_area,
                LiveClient(gw.ws_url) as ws_none,
                SSEClient(f"{gw.url}/v1/sse?tiles={key(a)}") as sse_a,
            ):
                await ws_a.send({"type": "track", "tiles": {key(a): None}})
                await ws_b.send({"type": "track", "tiles": [key(b)]})
                await ws_area.send({"type": "area", "bbox": inner(a), "minzoom": 12,
                                    "maxzoom": 12})  # fmt: skip
                await ws_none.send({"type": "track", "tiles": {"12/1/1": None}})
                for c in (ws_a, ws_b, ws_area, ws_none, sse_a):
                    await c.wait_live()
                pipeline.produce(event(a, 1), event(b, 1), event(nobody, 1))
                await ws_a.wait_updates(1)
                await ws_b.wait_updates(1)
                await ws_area.wait_updates(1)
                await sse_a.wait_updates(1)
                pipeline.wait_stored(nobody, 1)
                got = {n: tiles_of(await c.settle(0.5)) for n, c in
                       {"a": ws_a, "b": ws_b, "area": ws_area, "none": ws_none,
                        "sse": sse_a}.items()}  # fmt: skip
                assert got == {"a": [a], "b": [b], "area": [a], "none": [], "sse": [a]}
                # The message is the one on Redis, byte for byte the sink's JSON.
                stored = pipeline.redis.hget(
                    f"{pipeline.prefix}:tile:WebMercatorQuad:12:2200:1343", "msg"
                )
                assert ws_a.updates()[0] == json.loads(stored)
                sse_event = sse_a.updates()[0]
                assert sse_event.pop("_event") == "tile_updated" and sse_event.pop("_id")
                assert sse_event == json.loads(stored)

        run(scenario())
        assert gw.metric("tilepipe_gateway_delivered_total", source="live") == 4


def test_area_subscriptions_at_several_zooms(pipeline) -> None:
    t13 = _z, x, y = (13, 4400, 2686)
    inside = [(11, x >> 2, y >> 2), (12, x >> 1, y >> 1), t13, (14, 2 * x + 1, 2 * y + 1)]
    outside = [(10, x >> 3, y >> 3), (13, x + 1, y), (14, 2 * x + 2, 2 * y), (15, 4 * x, 4 * y)]
    # Level 11: the z13 neighbour and its z14 child share the area's routing cell, so only
    # the bbox check below the level keeps them out.
    with GatewayProcess(pipeline.sink, env={"TILEPIPE_GATEWAY_AREA_LEVEL": "11"}) as gw:

        async def scenario() -> None:
            async with (
                LiveClient(gw.ws_url) as ws,
                SSEClient(f"{gw.url}/v1/sse?bbox={','.join(map(str, inner(t13)))}"
                          "&minzoom=11&maxzoom=14") as sse,
            ):  # fmt: skip
                await ws.send({"type": "area", "bbox": inner(t13), "minzoom": 11, "maxzoom": 14})
                await ws.wait_live()
                await sse.wait_live()
                pipeline.produce(*(event(t, 1) for t in inside + outside))
                await ws.wait_updates(len(inside))
                await sse.wait_updates(len(inside))
                for t in outside:
                    pipeline.wait_stored(t, 1)
                assert sorted(tiles_of(await ws.settle())) == sorted(inside)
                assert sorted(tiles_of(await sse.settle())) == sorted(inside)
                # Moving the area (a pan) needs no reconnect.
                await ws.send({"type": "area", "bbox": inner(outside[1]), "minzoom": 13,
                               "maxzoom": 13})  # fmt: skip
                await ws.wait_live(2)
                pipeline.produce(event(outside[1], 2), event(t13, 2))
                await ws.wait_updates(len(inside) + 1)
                pipeline.wait_stored(t13, 2)
                assert tiles_of(await ws.settle())[len(inside) :] == [outside[1]]

        run(scenario())


# -- resume ----------------------------------------------------------------------------------


def test_resume_after_a_disconnect_delivers_each_changed_tile_once_at_its_newest(pipeline) -> None:
    tiles = [(14, 8800 + i, 5376) for i in range(5)]
    with GatewayProcess(pipeline.sink) as gw:

        async def scenario() -> None:
            async with LiveClient(gw.ws_url) as ws:
                await ws.send({"type": "track", "tiles": {key(t): None for t in tiles}})
                await ws.wait_live()
                pipeline.produce(*(event(t, 1) for t in tiles))
                have = {tuple(tiles_of([u])[0]): u for u in await ws.wait_updates(5)}
            # Away: three tiles change twice, two not at all.
            for v in (2, 3):
                pipeline.produce(*(event(t, v) for t in tiles[:3]))
                for t in tiles[:3]:
                    pipeline.wait_stored(t, v)
            async with LiveClient(gw.ws_url) as ws:
                await ws.send({"type": "track", "tiles": {
                    key(t): {"version": have[t]["version"], "hash": have[t]["hash"]}
                    for t in tiles}})  # fmt: skip
                await ws.wait_live()
                caught_up = await ws.settle(0.5)
                assert sorted((tiles_of([u])[0], u["version"]) for u in caught_up) == [
                    (t, 3) for t in tiles[:3]
                ]
                pipeline.produce(event(tiles[4], 4))  # then live
                got = await ws.wait_updates(4)
                assert (tiles_of(got)[-1], got[-1]["version"]) == (tiles[4], 4)
                never_backwards(got)
            # The same with versions only (what a URL can carry): strictly newer is sent.
            async with SSEClient(
                f"{gw.url}/v1/sse?tiles=" + ",".join(f"{key(t)}@{2}" for t in tiles)
            ) as sse:
                await sse.wait_live()
                got = await sse.settle(0.5)
                assert sorted((tiles_of([u])[0], u["version"]) for u in got) == [
                    *((t, 3) for t in tiles[:3]),
                    (tiles[4], 4),
                ]

        run(scenario())
        assert gw.metric("tilepipe_gateway_delivered_total", source="state") == 3 + 4


def test_an_sse_stream_resumes_its_session_with_last_event_id(pipeline) -> None:
    a, b = (12, 100, 100), (12, 101, 100)
    with GatewayProcess(pipeline.sink) as gw:

        async def scenario() -> None:
            async with SSEClient(f"{gw.url}/v1/sse?tiles={key(a)}") as sse:
                await sse.wait_live()
                sid = sse.session_id
                async with httpx.AsyncClient() as http:  # add b without reconnecting
                    r = await http.post(f"{gw.url}/v1/sessions/{sid}/track",
                                        json={"type": "track", "tiles": [key(b)]})  # fmt: skip
                    assert r.status_code == 200 and r.json()["tiles"] == 2, r.text
                await sse.wait_live(2)
                pipeline.produce(event(a, 1), event(b, 1))
                await sse.wait_updates(2)
                last = sse.last_id
            # Gone for a moment (a proxy cut it): a and b change meanwhile, a twice.
            pipeline.produce(event(a, 2), event(b, 2))
            pipeline.wait_stored(a, 2)
            pipeline.produce(event(a, 3))
            pipeline.wait_stored(a, 3)
            pipeline.wait_stored(b, 2)
            async with SSEClient(f"{gw.url}/v1/sse?tiles={key(a)}",
                                 headers={"Last-Event-ID": last or ""}) as sse:  # fmt: skip
                assert sse.session_id == sid  # the same session, b included
                got = await sse.wait_updates(2)
                assert sorted((tiles_of([u])[0], u["version"]) for u in await sse.settle()) == [
                    (a, 3),
                    (b, 2),
                ]
                assert not sse.of("resync")
            # Unknown to this process (e.g. after a restart): resumed from the URL's tiles by
            # state, and told that the session (the POSTed b) is gone.
            async with SSEClient(f"{gw.url}/v1/sse?tiles={key(a)}@2",
                                 headers={"Last-Event-ID": "nosuchsession.7"}) as sse:  # fmt: skip
                await sse.wait_live()
                assert [r["reason"] for r in sse.of("resync")] == ["session_lost"]
                got = await sse.settle(0.3)
                assert [(tiles_of([u])[0], u["version"]) for u in got] == [(a, 3)]

        run(scenario())


def test_a_gateway_restart_loses_nothing_a_reconnecting_client_needs(pipeline) -> None:
    tiles = [(13, 4000 + i, 2000) for i in range(4)]
    with GatewayProcess(pipeline.sink) as gw:

        async def before() -> dict[Tile, dict[str, Any]]:
            async with LiveClient(gw.ws_url) as ws:
                await ws.send({"type": "track", "tiles": {key(t): None for t in tiles}})
                await ws.wait_live()
                pipeline.produce(*(event(t, 1) for t in tiles))
                got = await ws.wait_updates(4)
                gw.kill()  # mid-stream, no goodbye
                await ws.wait(lambda: ws.closed is not None, 10, "the close")
                return {tiles_of([u])[0]: u for u in got}

        have = run(before())
        pipeline.produce(*(event(t, 2) for t in tiles[:2]))
        pipeline.wait_stored(tiles[1], 2)
        gw.start()
        gw.wait_ready()

        async def after() -> None:
            async with LiveClient(gw.ws_url) as ws:
                await ws.send({"type": "track", "tiles": {
                    key(t): {"version": h["version"], "hash": h["hash"]} for t, h in have.items()
                }})  # fmt: skip
                await ws.wait_live()
                got = await ws.settle(0.5)
                assert sorted((tiles_of([u])[0], u["version"]) for u in got) == [
                    (t, 2) for t in tiles[:2]
                ]

        run(after())


def test_a_redis_restart_mid_stream_loses_nothing_a_client_needs(kafka, channel) -> None:
    tiles = [(12, 500 + i, 700) for i in range(4)]
    with RedisServer() as server:
        pipeline = Pipeline(kafka, server.url, channel)
        try:
            with GatewayProcess(pipeline.sink, env={"TILEPIPE_GATEWAY_REDIS_RETRY_MAX": "500ms"}
                                ) as gw:  # fmt: skip

                async def scenario() -> None:
                    async with LiveClient(gw.ws_url) as ws:
                        await ws.send({"type": "track", "tiles": {key(t): None for t in tiles}})
                        await ws.wait_live()
                        pipeline.produce(*(event(t, 1) for t in tiles))
                        await ws.wait_updates(4)
                        server.stop()  # a crash: the store is gone, nothing persisted
                        await asyncio.sleep(1)
                        server.start()
                        # Published while the gateway may still be resubscribing: the
                        # re-read of its tracked tiles after the resubscribe finds them.
                        pipeline.produce(*(event(t, 2) for t in tiles[:2]))
                        await ws.wait(lambda: bool(ws.of("resync")), 30, "resync")
                        await ws.wait(
                            lambda: {(tiles_of([u])[0], u["version"]) for u in ws.updates()}
                            >= {(t, 2) for t in tiles[:2]}, 60, "the updates made meanwhile",
                        )  # fmt: skip
                        got = await ws.settle(0.5)
                        assert ws.of("resync")[0]["reason"] == "redis_reconnected"
                        never_backwards(got)
                        assert sorted(tiles_of(got)) == sorted(tiles + tiles[:2])  # once each
                        pipeline.produce(event(tiles[3], 3))
                        got = await ws.wait_updates(7)
                        assert got[-1]["version"] == 3

                run(scenario())
        finally:
            pipeline.close()


# -- slow clients ----------------------------------------------------------------------------


def _slow_socket(port: int) -> Any:
    import socket

    sock = socket.socket()
    # Small, but above loopback's 64 KiB MSS: smaller, the receiver never announces a window
    # worth a segment and TCP stalls on its persist timer (silly-window avoidance).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.connect(("127.0.0.1", port))
    return sock


def test_a_slow_client_is_conflated_then_closed_while_others_keep_up(redis_url, channel) -> None:
    prefix = f"gw{uuid.uuid4().hex[:6]}"
    sink = f"{redis_url}?channel={channel}&prefix={prefix}"
    target = RedisTarget(redis_url, channel=channel, prefix=prefix)
    broadcaster = RedisBroadcaster(target)
    tiles = [(14, 9000 + i, 6000) for i in range(200)]
    env = {"TILEPIPE_GATEWAY_SLOW_TIMEOUT": "1s", "TILEPIPE_GATEWAY_WRITE_BUFFER_HIGH": "4096",
           "TILEPIPE_GATEWAY_CLOSE_GRACE": "20s",
           "TILEPIPE_GATEWAY_SOCKET_SEND_BUFFER": "65536"}  # fmt: skip

    def publish(version: int) -> None:
        items = []
        for z, x, y in tiles:
            msg = {"type": "tile_updated", "tms": "WebMercatorQuad", "z": z, "x": x, "y": y,
                   "version": version, "hash": f"{x}-{version}", "pad": "x" * 2000}  # fmt: skip
            tile_key = target.key_of("WebMercatorQuad", z, x, y)
            items.append((tile_key, [(f"tile:{x}", f"{version:012d}")], json.dumps(msg).encode()))
        assert broadcaster.publish_prepared(items) == [1] * len(tiles)

    with GatewayProcess(sink, env=env) as gw:

        async def scenario() -> None:
            track = {"type": "track", "tiles": {key(t): None for t in tiles}}
            async with LiveClient(gw.ws_url) as healthy:
                slow = LiveClient(gw.ws_url, read=False, sock=_slow_socket(gw.port),
                                  max_size=None, max_queue=(4, 1))  # fmt: skip
                async with slow:
                    await healthy.send(track)
                    await slow.send(track)
                    await healthy.wait_live()
                    for v in range(1, 31):
                        publish(v)
                        await healthy.wait(
                            lambda v=v: any(u["version"] == v for u in healthy.updates()), 30,
                            f"version {v}",
                        )  # fmt: skip
                    newest = {}
                    for u in await healthy.settle(0.3):
                        newest[tiles_of([u])[0]] = u["version"]
                    assert newest == {t: 30 for t in tiles}  # every tile, at its newest
                    never_backwards(healthy.updates())
                    # Leave the slow one unread past the slow timeout (1 s), with margin:
                    # on a quiet machine the 30 versions above go out in under a second.
                    await asyncio.sleep(3)
                    # Now read what the slow one was sent: older frames, then bye 4008.
                    # (A quiet spell is not the end: on a loaded machine the gateway's
                    # writer may not run for seconds; only the close, or the deadline, is.)
                    deadline = time.monotonic() + 60
                    frames, code = [], None
                    while time.monotonic() < deadline:
                        try:
                            frames.append(json.loads(await asyncio.wait_for(slow.ws.recv(), 5)))
                        except TimeoutError:
                            continue
                        except websockets.ConnectionClosed as e:
                            code = e.rcvd.code if e.rcvd else None
                            break
                    assert code == 4008, frames[-3:]
                    assert frames[-1] == {"type": "bye", "code": 4008, "reason": "slow"}
                    got = [u for f in frames for u in (f.get("messages") or [f])
                           if u.get("type") == "tile_updated"]  # fmt: skip
                    assert 0 < len(got) < 30 * len(tiles)  # conflated, and it never caught up
                    never_backwards(got)
            # It reconnects and resyncs by state: the newest of every tile, once.
            async with LiveClient(gw.ws_url) as again:
                last = {}
                for u in got:
                    last[tiles_of([u])[0]] = u
                await again.send({"type": "track", "tiles": {
                    key(t): ({"version": last[t]["version"], "hash": last[t]["hash"]}
                             if t in last else None) for t in tiles}})  # fmt: skip
                await again.wait_live()
                resumed = await again.settle(0.3)
                assert {tiles_of([u])[0]: u["version"] for u in resumed} == {
                    t: 30 for t in tiles if last.get(t, {}).get("version") != 30
                }

        run(scenario())
        assert gw.metric("tilepipe_gateway_slow_closes_total") == 1
        assert gw.metric("tilepipe_gateway_conflated_total") > 0
    broadcaster.close()


# -- limits and auth -------------------------------------------------------------------------

SECRET = "gateway-test-secret-at-least-32-bytes-long"
ORIGIN = "https://maps.example.org"


def token(sub: str = "u1", ttl: int = 600, **tp: Any) -> str:
    now = int(time.time())
    claims = {"sub": sub, "aud": "tilepipe-gateway", "iat": now, "exp": now + ttl, "tp": tp}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_jwt_scope_origin_and_connection_cap_are_enforced(pipeline) -> None:
    inside, outside = (12, 2200, 1343), (12, 100, 100)
    area = quadkey(*inside)[:8]
    env = {"TILEPIPE_GATEWAY_JWT_SECRET": SECRET, "TILEPIPE_GATEWAY_ALLOWED_ORIGINS": ORIGIN,
           "TILEPIPE_GATEWAY_AUTH_TIMEOUT": "1s",
           "TILEPIPE_GATEWAY_MAX_CONNECTIONS": "3"}  # fmt: skip
    with GatewayProcess(pipeline.sink, env=env) as gw:

        async def scenario() -> None:
            # Origin not on the list: refused at the handshake.
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with LiveClient(gw.ws_url, origin="https://evil.example"):
                    pass
            assert refused.value.response.status_code == 403
            # No auth frame: closed with 4001 (a token in the URL is not read).
            async with LiveClient(gw.ws_url + f"?token={token()}", origin=ORIGIN) as anon:
                await anon.send({"type": "track", "tiles": [key(inside)]})
                await anon.wait(lambda: anon.closed is not None, 10, "close")
                assert anon.closed[0] == 4001
            async with LiveClient(gw.ws_url, origin=ORIGIN) as bad:
                await bad.send({"type": "auth", "token": token(ttl=-30)})
                await bad.wait(lambda: bad.closed is not None, 10, "close")
                assert bad.closed[0] == 4001 and bad.of("bye")[0]["reason"] == "token_expired"
            async with LiveClient(gw.ws_url, origin=ORIGIN) as ws:
                assert ws.of("hello")[0]["auth"] == "required"
                await ws.send({"type": "auth", "token": token(area=[area], layers=["roads"])})
                await ws.send({"type": "track", "tiles": [key(inside), key(outside)]})
                await ws.wait(lambda: bool(ws.of("error")), 10, "the refusal")
                err = ws.of("error")[0]
                assert err["code"] == "forbidden" and err["tiles"] == [key(outside)]
                await ws.send({"type": "area", "bbox": [-10, -10, 10, 10], "minzoom": 4,
                               "maxzoom": 4})  # fmt: skip
                await ws.wait(lambda: len(ws.of("error")) == 2, 10, "area refusal")
                await ws.send({"type": "track", "tiles": [key(inside)], "layers": ["water"]})
                await ws.wait(lambda: len(ws.of("error")) == 3, 10, "layer refusal")
                assert [e["code"] for e in ws.of("error")] == ["forbidden"] * 3
                await ws.wait_live()
                pipeline.produce(event(inside, 1, layers=["water"]),
                                 event(outside, 1))  # fmt: skip
                pipeline.wait_stored(outside, 1)
                pipeline.wait_stored(inside, 1)
                pipeline.produce(event(inside, 2, layers=["roads"]))
                got = await ws.wait_updates(1)
                assert [(tiles_of([u])[0], u["version"]) for u in await ws.settle()] == [
                    (inside, 2)
                ], got
                # SSE: the token in a header (or cookie), never required in the URL.
                async with SSEClient(f"{gw.url}/v1/sse?tiles={key(inside)}") as no_token:
                    assert no_token.status == 401
                headers = {"Authorization": f"Bearer {token(area=[area])}"}
                async with SSEClient(f"{gw.url}/v1/sse?tiles={key(inside)}", headers) as sse:
                    assert sse.status == 200
                    # Third session: the cap (3) answers the fourth with 503 + Retry-After.
                    async with LiveClient(gw.ws_url, origin=ORIGIN):
                        with pytest.raises(websockets.InvalidStatus) as full:
                            async with LiveClient(gw.ws_url, origin=ORIGIN):
                                pass
                        assert full.value.response.status_code == 503
                        assert full.value.response.headers["Retry-After"] == "5"

        run(scenario())
        log = gw.log()
        assert SECRET not in log and "eyJ" not in log  # no secret, no token (JWTs start so)
