"""Load on ``tilepipe ingress``: accepted events per second and latency by concurrency.

By default it starts what it measures on loopback: a Tansu broker (the test
suite's) and ``tilepipe ingress`` as users run it, then for each concurrency
sends a fixed number of signed requests over that many keep-alive connections
and prints one row: accepted events/s, p50 and p99 request latency. Every
event has its own ``event_id``, so each one is produced and acknowledged
(``acks=all``), not answered from the dedup window. Requests are built and
signed before the clock starts, so the client's own cost is one write and
one read per request. Bounded: ``--requests`` per row, ``--timeout`` per row.

    python -m bench.ingress_load                        # 1, 8, 32, 128 connections
    python -m bench.ingress_load --batch 100 --requests 400
    python -m bench.ingress_load --url http://127.0.0.1:8080 --secret s3cret --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from urllib.parse import urlsplit

from tilepipe.client import signed_headers


def build_requests(host: str, n: int, batch: int, secret: bytes) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        docs = [{"event_id": f"{run}-{i}-{j}", "kind": "tile", "version": 1, "source": "bench",
                 "ts": now, "z": 14, "x": (i * batch + j) % 16384, "y": 5376}
                for j in range(batch)]  # fmt: skip
        events = [json.dumps(d, separators=(",", ":")).encode() for d in docs]
        body = events[0] if batch == 1 else b"\n".join(events) + b"\n"
        ctype = "application/json" if batch == 1 else "application/x-ndjson"
        headers = {"Host": host, "Content-Type": ctype, "Content-Length": str(len(body)),
                   **signed_headers(secret, body)}  # fmt: skip
        head = "POST /v1/events HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out.append(head.encode() + b"\r\n" + body)
    return out


async def _worker(
    host: str, port: int, queue: list[bytes], latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(
                int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run_level(
    url: str, concurrency: int, requests: list[bytes], timeout: float
) -> tuple[float, list[float], dict[int, int]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue = list(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    workers = [_worker(host, port, queue, latencies, statuses) for _ in range(concurrency)]
    await asyncio.wait_for(asyncio.gather(*workers), timeout)
    return time.perf_counter() - started, latencies, statuses


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ingress_load",
        description="Accepted events/s and p50/p99 latency of tilepipe ingress by concurrency.",
        epilog=__doc__.split("\n\n")[-1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--concurrency", default="1,8,32,128", help="connections per row [1,8,32,128]")
    p.add_argument("--requests", type=int, default=4000, help="requests per row [4000]")
    p.add_argument("--batch", type=int, default=1, help="events per request (1 = JSON) [1]")
    p.add_argument("--timeout", type=float, default=120, help="seconds a row may take [120]")
    p.add_argument("--url", help="an ingress already running (else one is started here)")
    p.add_argument("--secret", help="its secret (with --url)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    if args.url and not args.secret:
        p.error("--url needs --secret")

    with ExitStack() as stack:
        if args.url:
            url, secret = args.url, args.secret.encode()
        else:
            from tests.support.ingress import IngressProcess
            from tests.support.services import start_kafka

            kafka = stack.enter_context(start_kafka())
            topic = kafka.new_topic("bench-ingress", partitions=4)
            secret = b"bench-secret-0123456789abcdef0123456789"  # 32 bytes at least
            quiet = {"TILEPIPE_LOG_LEVEL": "WARNING"}
            ingress = stack.enter_context(
                IngressProcess(kafka.url(topic), secrets=f"bench:{secret.decode()}", env=quiet)
            )
            url = ingress.url
        host = urlsplit(url).netloc
        # Warm up: connections, metadata, the producer id.
        warm = build_requests(host, 200, args.batch, secret)
        asyncio.run(run_level(url, 8, warm, args.timeout))
        print(f"tilepipe ingress, {args.batch} event(s) a request, {args.requests} requests a row")
        columns = ("connections", "accepted ev/s", "p50 ms", "p99 ms")
        print(" | ".join(f"{c:>{max(7, len(c))}}" for c in columns) + " | other")
        for c in levels:
            requests = build_requests(host, args.requests, args.batch, secret)
            elapsed, lat, statuses = asyncio.run(run_level(url, c, requests, args.timeout))
            accepted = statuses.get(202, 0) * args.batch
            other = {s: n for s, n in statuses.items() if s != 202}
            print(
                f"{c:>11} | {accepted / elapsed:>13,.0f} | {percentile(lat, 50) * 1000:>7.2f}"
                f" | {percentile(lat, 99) * 1000:>7.2f} | {other or ''}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
