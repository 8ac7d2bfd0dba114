"""Load on ``tilepipe gateway``: connections, memory, deliveries, latency, reconnects, slow clients.

It starts what it measures on loopback: Redis (the test suite's: the machine's
server on 6379, database 15, or a private one) and ``tilepipe gateway`` as
users run it, then drives it from one load-generator process (asyncio on
uvloop, real ``websockets`` clients). The load generator shares the machine's
cores with the gateway and Redis (two on this project's machine), so every
figure is a floor for the gateway alone. Updates are published the way the
dataflow publishes them: the Redis sink's compare-and-set script (``HSET`` the
tile's ``msg``, then ``PUBLISH``), each message carrying ``sent`` (the
publisher's clock) so a client measures PUBLISH → receipt.

Phases, each bounded in time:

1. **connections**: ``--connections`` clients connect, each tracking
   ``--tiles`` tiles of a pool; the gateway's RSS before and after gives RSS
   per connection (kernel socket buffers are not in RSS).
2. **throughput**: publish at ``--flood-rate`` for ``--seconds``; delivered/s
   is the gateway's own count of messages written to sockets, over the time
   until it and the clients went quiet.
3. **latency**: publish at ``--rate`` messages/s; p50/p99 PUBLISH → receipt.
4. **reconnect storm**: at ``--storm-rate`` reconnects/s while publishing at
   ``--rate``, clients drop and reconnect with the versions they hold; at the
   end every client must hold every tile's newest version (lost) and no client
   may ever have received a version below one it had (backwards).
5. **slow clients**: ``--slow-share`` of the clients stop reading; the others'
   p99 is compared with phase 3's.

    python -m bench.gateway                              # 2,000 connections, ~1 min
    python -m bench.gateway --connections 500 --seconds 5 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import sys
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
import websockets

from sinks.redis import CAS_PUBLISH_LUA
from tests.support.gateway import GatewayProcess
from tests.support.services import start_redis
from tilepipe.tiles import quadkey, tile_bounds_lonlat

Tile = tuple[int, int, int]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Publisher:
    """The sink's compare-and-set script over redis.asyncio; versions count up per tile."""

    def __init__(self, url: str, channel: str, prefix: str) -> None:
        self.r = aioredis.Redis.from_url(url)
        self.script = self.r.register_script(CAS_PUBLISH_LUA)
        self.channel, self.prefix = channel, prefix
        self.version: dict[Tile, int] = {}
        self.sent = 0

    async def publish(self, tiles: list[Tile]) -> None:
        keys: list[str] = []
        args: list[Any] = [self.channel, "publish", 1024]
        now = time.time()
        for t in tiles:
            v = self.version[t] = self.version.get(t, 0) + 1
            z, x, y = t
            msg = {"type": "tile_updated", "tms": "WebMercatorQuad", "z": z, "x": x, "y": y,
                   "version": v, "hash": f"{x}.{y}.{v}", "bbox": list(tile_bounds_lonlat(z, x, y)),
                   "ts": "2026-12-01T00:00:00.000Z", "quadkey": quadkey(z, x, y), "events": 1,
                   "coverage": "tile", "sent": now}  # fmt: skip
            keys.append(f"{self.prefix}:tile:WebMercatorQuad:{z}:{x}:{y}")
            args += [1, "tile", f"{v:012d}", orjson.dumps(msg)]
        keys.append(f"{self.prefix}:stats")
        await self.script(keys=keys, args=args)
        self.sent += len(tiles)

    async def paced(self, pool: list[Tile], rate: int, seconds: float, stop: asyncio.Event) -> None:
        """``rate`` messages/s in 10 ms ticks, tiles round-robin over ``pool``."""
        per_tick = max(1, rate // 100)
        i = 0
        start = time.monotonic()
        tick = 0
        while not stop.is_set() and time.monotonic() - start < seconds:
            batch = [pool[(i + k) % len(pool)] for k in range(per_tick)]
            i += per_tick
            await self.publish(batch)
            tick += 1
            delay = start + tick * per_tick / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


class Client:
    """One map client: tracks tiles, keeps the newest version it has of each."""

    def __init__(self, url: str, tiles: list[Tile], bench: Bench) -> None:
        self.url, self.tiles, self.bench = url, tiles, bench
        self.have: dict[Tile, tuple[int, str]] = {}
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.live = asyncio.Event()
        self.backwards = 0
        self.closed_code: int | None = None

    async def connect(self) -> float:
        """Connect and track; seconds until the gateway said ``live`` (the catch-up done)."""
        t0 = time.monotonic()
        self.live.clear()
        self.ws = await websockets.connect(self.url, compression=None, open_timeout=30,
                                           max_queue=(16, 4), ping_interval=None)  # fmt: skip
        self.task = asyncio.create_task(self.read())
        track = {f"{z}/{x}/{y}": ({"version": self.have[(z, x, y)][0],
                                   "hash": self.have[(z, x, y)][1]}
                                  if (z, x, y) in self.have else None)
                 for z, x, y in self.tiles}  # fmt: skip
        await self.ws.send(orjson.dumps({"type": "track", "tiles": track}).decode())
        await asyncio.wait_for(self.live.wait(), 30)
        return time.monotonic() - t0

    async def read(self) -> None:
        b = self.bench
        try:
            async for raw in self.ws:
                doc = orjson.loads(raw)
                kind = doc.get("type")
                if kind == "batch":
                    msgs = doc["messages"]
                elif kind == "tile_updated":
                    msgs = [doc]
                else:
                    if kind == "live":
                        self.live.set()
                    continue
                now = time.time()
                for m in msgs:
                    t = (m["z"], m["x"], m["y"])
                    prev = self.have.get(t)
                    if prev is not None and m["version"] < prev[0]:
                        self.backwards += 1
                    self.have[t] = (m["version"], m["hash"])
                    if b.recording is not None:
                        b.recording.append(now - m["sent"])
                b.received += len(msgs)
        except websockets.ConnectionClosed as e:
            self.closed_code = e.rcvd.code if e.rcvd else None

    async def stop_reading(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            self.task = None
        # websockets keeps reading into its queue until max_queue, then stops: the
        # socket fills and the gateway sees a client that does not read.

    async def close(self) -> None:
        await self.stop_reading()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


class Bench:
    def __init__(self, args: argparse.Namespace, gw: GatewayProcess, redis_url: str,
                 channel: str, prefix: str) -> None:  # fmt: skip
        self.args, self.gw = args, gw
        self.publisher = Publisher(redis_url, channel, prefix)
        self.recording: list[float] | None = None
        self.received = 0
        # The pool: tiles of one z14 city block; each client tracks a contiguous run.
        side = max(1, int(args.pool**0.5))
        self.pool = [(14, 8800 + i % side, 5370 + i // side) for i in range(args.pool)]
        self.clients = [
            Client(gw.ws_url, [self.pool[(c * 7 + k) % len(self.pool)] for k in range(args.tiles)],
                   self)
            for c in range(args.connections)
        ]  # fmt: skip
        self.rows: list[tuple[str, str, str, str]] = []

    async def drain(self, timeout: float = 60) -> None:
        """Until the gateway has read every published message and the clients went quiet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.gw.metric("tilepipe_gateway_received_total")
            n = self.received
            if got >= self.publisher.sent:
                break
            await asyncio.sleep(1)
            # Redis drops a subscriber whose backlog passes its pub/sub output limit: then the
            # gateway resubscribes and resyncs, and never reads what was dropped.
            if self.gw.metric("tilepipe_gateway_received_total") == got and self.received == n:
                break
        while time.monotonic() < deadline:
            n = self.received
            await asyncio.sleep(0.5)
            if self.received == n:
                return

    def row(self, name: str, measured: str, target: str, anchor: str) -> None:
        self.rows.append((name, measured, target, anchor))
        print(f"  {name}: {measured}", file=sys.stderr, flush=True)

    async def connections(self) -> None:
        pid = self.gw.proc.pid  # type: ignore[union-attr]
        warm = Client(self.gw.ws_url, self.pool[:1], self)
        await warm.connect()  # imports and first-use allocations are not per connection
        await warm.close()
        await asyncio.sleep(0.5)
        before = rss_bytes(pid)
        t0 = time.monotonic()
        for i in range(0, len(self.clients), 100):
            await asyncio.gather(*(c.connect() for c in self.clients[i : i + 100]))
        took = time.monotonic() - t0
        await asyncio.sleep(1)
        per = (rss_bytes(pid) - before) / len(self.clients)
        n = len(self.clients)
        self.row("concurrent connections, one process", f"{n:,} ({n / took:,.0f} connects/s)",
                 "20,000", "Centrifugo 50k per pod (2020); 100k-200k per node (2026)")  # fmt: skip
        self.row("RSS per connection", f"{per / 1024:.1f} KiB ({self.args.tiles} tiles each)",
                 "<= 32 KiB",
                 "Centrifugo ~27 KB (2026); websockets 14 KiB w/o compression")  # fmt: skip

    async def throughput(self) -> None:
        s = self.args.seconds
        d0 = self.gw.metric("tilepipe_gateway_delivered_total", source="live")
        r0, p0 = self.received, self.publisher.sent
        resyncs0 = self.gw.metric("tilepipe_gateway_resyncs_total", reason="redis_reconnected")
        t0 = time.monotonic()
        await self.publisher.paced(self.pool, self.args.flood_rate, s, asyncio.Event())
        await self.drain()  # the backlog counts: delivered over the time to deliver it
        took = time.monotonic() - t0
        d = self.gw.metric("tilepipe_gateway_delivered_total", source="live") - d0
        fanout = len(self.clients) * self.args.tiles / len(self.pool)
        published = (self.publisher.sent - p0) / took
        read = (self.received - r0) / took
        dropped = (
            self.gw.metric("tilepipe_gateway_resyncs_total", reason="redis_reconnected") - resyncs0
        )
        self.row("delivered updates/s", f"{d / took:,.0f} (published {published:,.0f}/s x fan-out"
                 f" {fanout:.0f}, conflated; clients read {read:,.0f}/s; {dropped:.0f} session"
                 " resyncs after Redis dropped the subscription)",
                 "25,000", "Centrifugo 25k msg/s per pod (2020)")  # fmt: skip

    def full_gcs(self) -> tuple[float, float]:
        """(count, seconds) of the gateway's full garbage collections so far."""
        m = self.gw.metric
        return (m("tilepipe_gateway_gc_pause_seconds_count", generation="2"),
                m("tilepipe_gateway_gc_pause_seconds_sum", generation="2"))  # fmt: skip

    async def latency(self, label: str, clients: list[Client] | None = None) -> float:
        gc0 = self.full_gcs()
        self.recording = []
        stop = asyncio.Event()
        await self.publisher.paced(self.pool, self.args.rate, self.args.seconds, stop)
        await self.drain()
        lat, self.recording = self.recording, None
        p50, p99 = pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000
        fanout = len(clients or self.clients) * self.args.tiles / len(self.pool)
        gc1 = self.full_gcs()
        gcs = f"; {gc1[0] - gc0[0]:.0f} full GCs, {(gc1[1] - gc0[1]) * 1000:.0f} ms in all"
        if label == "base":
            self.row(f"p99 PUBLISH -> client receipt at {self.args.rate:,}/s",
                     f"{p99:.1f} ms (p50 {p50:.1f} ms, {len(lat):,} receipts,"
                     f" fan-out {fanout:.0f}{gcs})", "<= 50 ms at 5,000/s",
                     "Centrifugo p99 200 ms at 1M conns; hashrocket 95% < 500 ms")  # fmt: skip
        return p99

    async def storm(self) -> None:
        a = self.args
        stop = asyncio.Event()
        pub = asyncio.create_task(
            self.publisher.paced(self.pool, a.storm_updates, a.seconds + 60, stop)
        )
        times: list[float] = []
        t0 = time.monotonic()
        order = list(range(len(self.clients)))
        random.shuffle(order)
        n = 0

        failed = 0

        async def bounce(c: Client) -> None:
            nonlocal failed
            await c.close()
            t0 = time.monotonic()
            for attempt in range(20):  # as a client would: retry with jittered back-off
                try:
                    await c.connect()
                    times.append(time.monotonic() - t0)
                    return
                except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                    failed += 1
                    await asyncio.sleep(random.uniform(0, min(8, 0.5 * 2**attempt)))

        pending: set[asyncio.Task[None]] = set()
        while time.monotonic() - t0 < a.seconds:
            c = self.clients[order[n % len(order)]]
            n += 1
            pending.add(asyncio.create_task(bounce(c)))
            delay = t0 + n / a.storm_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending)
        took = time.monotonic() - t0
        stop.set()
        await pub
        await self.drain()  # the last messages land
        newest = self.publisher.version
        lost = sum(
            1 for c in self.clients for t in c.tiles
            if t in newest and c.have.get(t, (0, ""))[0] != newest[t]
        )  # fmt: skip
        backwards = sum(c.backwards for c in self.clients)
        self.row("reconnect storm", f"{n / took:,.0f} reconnects/s for {took:.0f} s at"
                 f" {a.storm_updates:,} updates/s: {lost} lost, {backwards} backwards, resync p99"
                 f" {pct(times, 0.99) * 1000:.0f} ms (reconnect to live),"
                 f" {failed} handshakes retried",
                 "1,000/s; 0 lost; 0 backwards; resync p99 <= 2 s",
                 "Centrifugo ~167 reconnects/s per pod (2020); Socket.IO #26/#48")  # fmt: skip

    async def slow(self, base_p99: float) -> None:
        a = self.args
        k = max(1, int(len(self.clients) * a.slow_share))
        slow, healthy = self.clients[-k:], self.clients[:-k]
        for c in slow:
            await c.stop_reading()
        closes0 = self.gw.metric("tilepipe_gateway_slow_closes_total")
        self.recording = []
        p99 = await self.latency("slow", healthy)
        closes = self.gw.metric("tilepipe_gateway_slow_closes_total") - closes0
        rss = rss_bytes(self.gw.proc.pid)  # type: ignore[union-attr]
        self.row(f"{a.slow_share:.0%} slow clients ({k} not reading)",
                 f"others' p99 {p99:.1f} ms vs {base_p99:.1f} ms ({(p99 / base_p99 - 1):+.0%}); "
                 f"{closes:.0f} closed 4008; gateway RSS {rss / 2**20:.0f} MiB",
                 "others' p99 within +10%, flat RSS",
                 "Centrifugo 1 MiB queue then 3008; websockets broadcast unbounded")  # fmt: skip

    async def run(self, phases: set[str]) -> None:
        print("connections ...", file=sys.stderr)
        await self.connections()
        if "throughput" in phases:
            print("throughput ...", file=sys.stderr)
            await self.throughput()
        base = float("nan")
        if "latency" in phases or "slow" in phases:
            print("latency ...", file=sys.stderr)
            base = await self.latency("base")
        if "storm" in phases:
            print("reconnect storm ...", file=sys.stderr)
            await self.storm()
        if "slow" in phases:
            print("slow clients ...", file=sys.stderr)
            await self.slow(base)
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--connections", type=int, default=2000, help="clients [2000]")
    p.add_argument("--tiles", type=int, default=20, help="tiles each client tracks [20]")
    p.add_argument("--pool", type=int, default=2000, help="distinct tiles published [2000]")
    p.add_argument("--rate", type=int, default=2000, help="updates/s in the latency phases")
    p.add_argument("--storm-rate", type=int, default=200, help="reconnects/s in the storm [200]")
    p.add_argument("--flood-rate", type=int, default=8000,
                   help="updates/s published in the throughput phase [8000]")  # fmt: skip
    p.add_argument(
        "--storm-updates", type=int, default=500, help="updates/s published during the storm [500]"
    )
    p.add_argument("--slow-share", type=float, default=0.05, help="share of slow clients [0.05]")
    p.add_argument("--seconds", type=float, default=10, help="length of each phase [10]")
    p.add_argument("--phases", default="throughput,latency,storm,slow",
                   help="phases after connecting [throughput,latency,storm,slow]")  # fmt: skip
    a = p.parse_args(argv)
    if not 0 < a.slow_share < 1 or a.connections < 2 or a.tiles > a.pool:
        p.error("need 0 < --slow-share < 1, --connections >= 2, --tiles <= --pool")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.connections * 2 + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    import uvloop

    with start_redis() as redis_url:
        channel = f"bench-gw-{uuid.uuid4().hex[:8]}"
        prefix = f"benchgw{uuid.uuid4().hex[:6]}"
        # Twice the clients: a reconnecting client's old session may still be closing.
        env = {"TILEPIPE_GATEWAY_MAX_CONNECTIONS": str(a.connections * 2),
               "TILEPIPE_GATEWAY_KEEPALIVE": "15s", "TILEPIPE_GATEWAY_SLOW_TIMEOUT": "3s",
               "TILEPIPE_GATEWAY_SOCKET_SEND_BUFFER": "65536",
               "TILEPIPE_GATEWAY_MAX_TILES": str(max(512, a.tiles))}  # fmt: skip
        with GatewayProcess(f"{redis_url}?channel={channel}&prefix={prefix}", env=env) as gw:
            bench = Bench(a, gw, redis_url, channel, prefix)
            uvloop.run(bench.run(set(a.phases.split(","))))
            print(f"\npython -m bench.gateway --connections {a.connections} --tiles {a.tiles} "
                  f"--pool {a.pool} --rate {a.rate} --storm-rate {a.storm_rate} --storm-updates "
                  f"{a.storm_updates} --seconds "
                  f"{a.seconds:g}; load generator, gateway and Redis share "
                  f"{__import__('os').cpu_count()} cores\n")  # fmt: skip
            print("| figure | measured | target | anchor |\n| --- | --- | --- | --- |")
            for row in bench.rows:
                print("| " + " | ".join(row) + " |")
            pid = gw.proc.pid  # type: ignore[union-attr]
            print(f"\ngateway RSS at the end {rss_bytes(pid) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
