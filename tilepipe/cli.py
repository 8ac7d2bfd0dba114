"""The ``tilepipe`` command: the top of the import graph, and nothing but argparse.

Each subcommand builds its service's settings (flags over ``TILEPIPE_*`` variables
over defaults, :func:`tilepipe.config.settings_from_flags`) and hands them to the
service: ``run`` to :mod:`dataflows.run`, ``ingress`` to :mod:`ingress.server`,
``render-worker`` to :mod:`render.pool`, ``send`` to :mod:`tilepipe.client`. A
:class:`~tilepipe.errors.ConfigError` is printed as one line with exit code 2. With
nothing configured ``tilepipe run`` runs on the built-in generator and prints
``tile_updated`` lines, so a newcomer sees it work in one command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from tilepipe import __version__
from tilepipe.client import send_events
from tilepipe.config import settings_from_flags
from tilepipe.errors import ConfigError
from tilepipe.signing import parse_secrets

RUN_EXAMPLES = """\
examples:
  tilepipe run                                   # built-in generator in, tile_updated on stdout
  tilepipe run --source file:events.jsonl --sink file:out.jsonl --dlq file:dlq.jsonl
  tilepipe run --source kafka://127.0.0.1:9092/tile-events \\
               --sink 'redis://127.0.0.1:6379/0?channel=tiles' \\
               --dlq kafka://127.0.0.1:9092/tile-events-dlq \\
               --recovery-dir /var/lib/tilepipe/recovery --metrics-port 9464
  TILEPIPE_SOURCE=file:- tilepipe run < events.jsonl

Every flag has a TILEPIPE_* environment variable (e.g. TILEPIPE_MAX_DELAY=250ms).
A file or generator source ends at end of input: held events are released and
a one-line summary of every record's outcome is printed to stderr.
"""


def _run_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="run the tile-update dataflow",
        description="Run the tile-update dataflow: validate, order per tile, apply each "
        "tile's versions once and forward, broadcast tile_updated.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("connectors")
    io.add_argument("--source", help="file:PATH (- = stdin) | kafka://HOST:PORT[,..]/TOPIC "
                    "| generator:?events=N&rate=N  [default: generator:]")  # fmt: skip
    io.add_argument("--sink", help="file:PATH (- = stdout) | redis://HOST:PORT/DB?channel=NAME "
                    "[default: file:-]")  # fmt: skip
    io.add_argument("--dlq", help="file:PATH | kafka://HOST:PORT/TOPIC [default: file:/dev/stderr]")
    io.add_argument("--render-queue", help="redis://HOST:PORT/DB[?prefix=NAME]: render each update"
                    " first (tilepipe render-worker broadcasts after the commit)")  # fmt: skip
    io.add_argument("--kafka-start", choices=("earliest", "latest"),
                    help="where a Kafka source starts on its first run [earliest]")  # fmt: skip
    io.add_argument(
        "--kafka-exit-at-end",
        action="store_true",
        default=None,
        help="stop at the end of every Kafka partition instead of tailing (backfill)",
    )
    ex = p.add_argument_group("execution")
    ex.add_argument("--workers", type=int, help="worker processes on this machine [1]")
    ex.add_argument("--recovery-dir", help="Bytewax recovery directory, created on first use")
    ex.add_argument("--snapshot-interval", help="how often state and offsets are snapshotted [5s]")
    ex.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    ex.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    ex.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    ex.add_argument("--addresses", help=argparse.SUPPRESS)
    ex.add_argument("--summary-file", help=argparse.SUPPRESS)
    order = p.add_argument_group("ordering and state")
    order.add_argument("--allowed-lateness", help="event-time disorder tolerated per tile [1s]")
    order.add_argument("--max-delay", help="longest an event is held for ordering [250ms]")
    order.add_argument("--state-ttl", help="idle tiles' state is evicted after this [5m]")
    return p


INGRESS_EXAMPLES = """\
examples:
  TILEPIPE_HMAC_SECRETS=k2026:$(openssl rand -hex 32) tilepipe ingress --listen 0.0.0.0:8080 \\
      --sink kafka://127.0.0.1:9092/tile-events
  tilepipe ingress --listen 127.0.0.1:8443 --sink kafka://broker:9092/tile-events \\
      --tls-certfile cert.pem --tls-keyfile key.pem     # TLS when running bare

POST /v1/events takes one event (application/json) or a batch (application/x-ndjson),
signed: X-Tilepipe-Timestamp (unix seconds) and X-Tilepipe-Signature: sha256=<hex of
HMAC-SHA256(secret, "POST\\n/v1/events\\n" + timestamp + "\\n" + body)>; keys of 32 bytes or
more. 202 once the broker acknowledged; 401, 400, 408, 409, 413, 415, 422 for bad requests;
503 + Retry-After while the broker is unavailable or too many bodies are arriving.
Other settings are TILEPIPE_INGRESS_* variables (e.g. TILEPIPE_INGRESS_DEDUP_WINDOW=10m).
"""

SEND_EXAMPLES = """\
examples:
  TILEPIPE_SEND_SECRET=k2026:s3cret tilepipe send --url http://127.0.0.1:8080 events.jsonl
  echo '{"event_id":"e1","kind":"tile","version":1,"source":"me","ts":1767225600000,\\
        "z":3,"x":4,"y":2}' | TILEPIPE_SEND_SECRET=s3cret tilepipe send --url http://127.0.0.1:8080

The secret comes from --secret-file, else TILEPIPE_SEND_SECRET, else the newest (last) of
TILEPIPE_HMAC_SECRETS (--key-id picks another); never from a flag's value. Exit code 0 when
every event was accepted (or already had been), 1 when some were rejected, 2 on errors.
"""


def _ingress_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ingress",
        help="serve the HTTP ingress: signed events in, onto the raw Kafka topic",
        description="Receive signed tile events over HTTP, validate them with the dataflow's "
        "rules and produce them to the raw topic, answering 202 once the broker acknowledged.",
        epilog=INGRESS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", help="HOST:PORT to serve on [127.0.0.1:8080]")
    p.add_argument("--sink", help="kafka://HOST:PORT[,..]/TOPIC, the raw topic")
    p.add_argument("--tls-certfile", help="serve HTTPS with this PEM certificate chain")
    p.add_argument("--tls-keyfile", help="the certificate's PEM private key")
    p.add_argument("--tls-client-ca", help="require client certificates from this CA (mTLS)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    return p


def _send_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "send",
        help="sign and post events (JSON lines) to an ingress",
        description="Sign and post events to a tilepipe ingress, in batches, retrying 503s.",
        epilog=SEND_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", default="-", help="JSON lines, one event each [- = stdin]")
    p.add_argument("--url", required=True, help="the ingress, e.g. http://127.0.0.1:8080")
    p.add_argument("--batch", type=int, default=100, help="events per request [100]")
    p.add_argument("--retries", type=int, default=3, help="retries of a 503 or lost connection")
    p.add_argument("--secret-file", help="file holding the secret (keyid:secret or secret)")
    p.add_argument("--key-id", help="which key of TILEPIPE_HMAC_SECRETS to sign with")
    p.add_argument("--cafile", help="CA bundle to verify an https:// ingress with")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request [30]")
    return p


RENDER_EXAMPLES = """\
examples:
  TILEPIPE_RENDER_LEDGER=postgresql://postgres@127.0.0.1/tilepipe \\
      tilepipe render-worker --redis redis://127.0.0.1:6379/0 --store dir:/srv/tiles --workers 4
  PGPASSWORD=... tilepipe render-worker --ledger postgresql://tilepipe@db/tilepipe \\
      --store mbtiles:tiles.mbtiles --sla 2m \\
      --renderer 'command:render-tile --z {z} --x {x} --y {y}'

Jobs come from the Redis Stream {prefix}:render:jobs (consumer group "workers"); each is
recorded in the PostgreSQL ledger (tables render_jobs, render_job_history, render_tiles,
created on first start), rendered, staged, validated and moved into the store atomically,
then acknowledged. A job in progress longer than --sla is reclaimed by another worker.
Other settings are TILEPIPE_RENDER_* variables (e.g. TILEPIPE_RENDER_MAX_ATTEMPTS=5,
TILEPIPE_RENDER_CACHE_KEY=tilecache:{z}:{x}:{y}). SIGTERM finishes the current jobs and exits.
"""


def _render_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "render-worker",
        help="run render workers: queued render jobs rendered and committed to a tile store",
        description="Take render jobs from the queue, render each tile, commit it atomically to "
        "the tile store exactly once, and record every job's state in the ledger.",
        epilog=RENDER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--redis", help="the queue's Redis, redis://HOST:PORT/DB [redis://127.0.0.1:6379/0]"
    )
    p.add_argument("--ledger", help="PostgreSQL DSN of the job ledger, without a password (the "
                   "process list shows flags): the password goes in TILEPIPE_RENDER_LEDGER, "
                   "PGPASSWORD or ~/.pgpass")  # fmt: skip
    p.add_argument("--renderer", help="builtin | command:PROGRAM {z} {x} {y} [builtin]")
    p.add_argument("--store", help="dir:PATH | mbtiles:PATH [dir:./tiles]")
    p.add_argument("--workers", type=int, help="worker threads in this process [4]")
    p.add_argument("--sla", help="a job in progress longer than this is reclaimed [60s]")
    p.add_argument("--broadcast", help="redis://HOST:PORT/DB?channel=NAME: tile_updated after"
                   " each commit (the dataflow's sink when it renders first)")  # fmt: skip
    p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz here")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    return p


TILES_EXAMPLES = """\
examples:
  TILEPIPE_RENDER_LEDGER=postgresql://postgres@127.0.0.1/tilepipe \\
      tilepipe tiles --store dir:/srv/tiles --listen 0.0.0.0:8091
  tilepipe tiles --store mbtiles:tiles.mbtiles --request-log /var/log/tilepipe/tiles.jsonl

GET /{z}/{x}/{y}.png?v=VERSION&h=HASH (the release a tile_updated message named) is
immutable (max-age one year) once the ledger says the store has it; a bare URL is no-cache
with an ETag (304 on If-None-Match); a release the store does not have yet is no-store.
Other settings are TILEPIPE_TILES_* variables (e.g. TILEPIPE_TILES_CORS_ORIGINS=*).
"""


def _tiles_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tiles",
        help="serve the render store's tiles, versioned URLs cacheable forever",
        description="Serve tiles from the render store with a cache contract for live maps: "
        "versioned URLs immutable, bare URLs revalidated by ETag.",
        epilog=TILES_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", help="HOST:PORT to serve on [127.0.0.1:8091]")
    p.add_argument("--store", help="dir:PATH | mbtiles:PATH: the render workers' store"
                   " [dir:./tiles]")  # fmt: skip
    p.add_argument("--format", help="png | jpg | webp | mvt | pbf [png]")
    p.add_argument("--ledger", help="PostgreSQL DSN of the render ledger (prefer the env"
                   " variable when it holds a password)")  # fmt: skip
    p.add_argument("--request-log", help="append one JSON line per tile request to this file")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    return p


GATEWAY_EXAMPLES = """\
examples:
  tilepipe gateway --redis 'redis://127.0.0.1:6379/0?channel=tilepipe:tile_updated'
  TILEPIPE_GATEWAY_JWT_SECRET=s3cret TILEPIPE_GATEWAY_ALLOWED_ORIGINS=https://maps.example.org \\
      tilepipe gateway --listen 0.0.0.0:8090

Browsers connect to ws://HOST:PORT/v1/live (JSON frames: track, untrack, area, ping) or
GET /v1/sse?tiles=14/8805/5376@3,...&bbox=w,s,e,n&minzoom=12&maxzoom=14, and hear each
tile_updated message exactly as the dataflow published it. /healthz, /readyz, /metrics.
Other settings are TILEPIPE_GATEWAY_* variables (e.g. TILEPIPE_GATEWAY_SLOW_TIMEOUT=10s).
"""


def _gateway_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gateway",
        help="push tile_updated to browsers over WebSocket and SSE",
        description="Subscribe to the dataflow's Redis channel once and push each tile_updated "
        "to the browsers that show that tile, resuming from the per-tile state on reconnect.",
        epilog=GATEWAY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", help="HOST:PORT to serve on [127.0.0.1:8090]")
    p.add_argument("--redis", help="the sink's redis://HOST:PORT/DB?channel=NAME&prefix=P")
    p.add_argument("--max-connections", type=int, help="sessions per process [20000]")
    p.add_argument("--max-tiles", type=int, help="tiles one session may track [512]")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    return p


DEMO_EXAMPLES = """\
examples:
  npm ci --prefix clients/js && tilepipe demo      # then open the URL it prints
  tilepipe demo --rate 20 --tiles 100              # busier: 20 updates/s over 10x10 tiles
  TILEPIPE_RENDER_LEDGER=postgresql://postgres@db/postgres tilepipe demo --redis redis://127.0.0.1:6379/0

Starts, on this machine: a private redis-server (unless --redis), a throwaway database for
the render ledger on TILEPIPE_RENDER_LEDGER's server (else 127.0.0.1:5432), a render
worker with the builtin renderer (it draws each tile's version), the tile server (which
also serves the page and the npm packages: no CDN), the gateway, and the dataflow reading
the built-in generator into the render queue. Ctrl-C stops all of it and drops the database.
"""


def _demo_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline locally and print the URL of a live map",
        description="Everything on this machine, ending in a MapLibre map whose tiles change "
        "as updates flow, with a panel of live status, updates/s and the last updates.",
        epilog=DEMO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on [127.0.0.1]")
    p.add_argument("--port", type=int, default=8091, help="the page and tiles [8091]")
    p.add_argument("--gateway-port", type=int, default=8090, help="the gateway [8090]")
    p.add_argument("--redis", help="use this Redis (redis://HOST:PORT/DB) instead of a private one")
    p.add_argument("--rate", type=float, default=4.0, help="updates per second [4]")
    p.add_argument("--tiles", type=int, default=64, help="tiles in the block that changes [64]")
    p.add_argument("--zoom", type=int, default=14, help="the tiles' zoom [14]")
    p.add_argument("--lon", type=float, default=13.405, help="centre longitude [13.405, Berlin]")
    p.add_argument("--lat", type=float, default=52.52, help="centre latitude [52.52]")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tilepipe",
        description="Keep web map tiles in sync with their data.",
        epilog="examples:\n"
        "  tilepipe run                       # the job on the built-in generator\n"
        "  tilepipe run --source kafka://127.0.0.1:9092/tile-events --sink redis://127.0.0.1:6379/0\n"
        "  tilepipe ingress --listen 0.0.0.0:8080 --sink kafka://127.0.0.1:9092/tile-events\n"
        "  tilepipe render-worker --store dir:/srv/tiles --ledger postgresql://postgres@db/tiles\n"
        "  tilepipe tiles --store dir:/srv/tiles --listen 0.0.0.0:8091\n"
        "  tilepipe gateway --listen 0.0.0.0:8090 --redis redis://127.0.0.1:6379/0\n"
        "  tilepipe demo                      # everything locally, ending in a live map\n"
        "\nRun 'tilepipe COMMAND --help' for a command's options and more examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tilepipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _run_parser(sub)
    _ingress_parser(sub)
    _send_parser(sub)
    _render_parser(sub)
    _tiles_parser(sub)
    _demo_parser(sub)
    _gateway_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what each worker process gets
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return run(args)
        if args.command == "ingress":
            from ingress.server import ingress_command

            return ingress_command(args)
        if args.command == "send":
            return send(args)
        if args.command == "render-worker":
            return render_worker(args)
        if args.command == "demo":
            from demo.run import demo_command

            return demo_command(args)
        if args.command == "tiles":
            from tiles.server import tiles_command

            return tiles_command(args)
        if args.command == "gateway":
            from gateway.server import gateway_command

            return gateway_command(args)
    except ConfigError as e:
        print(f"tilepipe {args.command}: {e}", file=sys.stderr)
        return 2
    return 2


def run(args: argparse.Namespace) -> int:
    """``tilepipe run``: the dataflow, configured by flags over ``TILEPIPE_*`` variables."""
    from dataflows.run import run as run_dataflow
    from dataflows.settings import Settings
    from tilepipe.logs import setup_logging

    settings = settings_from_flags(Settings, args)
    setup_logging(settings.log_level)
    return run_dataflow(settings, args.argv, args.summary_file)


def render_worker(args: argparse.Namespace) -> int:
    """``tilepipe render-worker``: a pool of render threads until SIGTERM."""
    from render.pool import run_pool
    from render.settings import RenderSettings
    from tilepipe.logs import setup_logging

    if args.ledger is not None and dsn_has_password(args.ledger):
        raise ConfigError(
            "--ledger carries a password, which every user of this machine can read in the"
            " process list: pass the DSN in TILEPIPE_RENDER_LEDGER instead, or keep the flag"
            " without the password and set PGPASSWORD or a ~/.pgpass file (PGPASSFILE)"
        )
    settings = settings_from_flags(RenderSettings, args)
    setup_logging(settings.log_level)
    return run_pool(settings)


def dsn_has_password(dsn: str) -> bool:
    """Whether a libpq DSN (URL or ``key=value`` form) spells out a password."""
    from urllib.parse import parse_qs, urlsplit

    if "://" in dsn:
        parts = urlsplit(dsn)
        return bool(parts.password) or "password" in parse_qs(parts.query)
    return re.search(r"(?:^|\s)password\s*=", dsn) is not None


def send(args: argparse.Namespace) -> int:
    """``tilepipe send``: post JSON lines in signed batches; one summary line at the end."""
    if args.batch < 1:
        raise ConfigError("--batch must be at least 1")
    try:
        if args.secret_file:
            text = Path(args.secret_file).read_text()
        else:
            text = os.environ.get("TILEPIPE_SEND_SECRET") or os.environ.get(
                "TILEPIPE_HMAC_SECRETS", ""
            )
        secrets = parse_secrets(text)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the secret: {e}") from None
    if not secrets:
        raise ConfigError(
            "no secret to sign with: set TILEPIPE_SEND_SECRET=keyid:secret or pass --secret-file"
        )
    if args.key_id is not None and args.key_id not in secrets:
        raise ConfigError(f"--key-id {args.key_id!r} is not among the secrets' key ids")
    secret = secrets[args.key_id] if args.key_id else list(secrets.values())[-1]
    try:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror}") from None
    totals = {"accepted": 0, "duplicate": 0, "rejected": 0, "unavailable": 0}
    sent = 0
    with stream:
        chunk: list[bytes] = []
        for line in (line.strip() for line in stream):
            if line:
                chunk.append(line)
            if len(chunk) == args.batch:
                sent += _send_chunk(args, chunk, secret, totals, sent)
                chunk = []
        if chunk:
            sent += _send_chunk(args, chunk, secret, totals, sent)
    print(
        f"tilepipe send: {sent} events: {totals['accepted']} accepted, {totals['duplicate']}"
        f" duplicate, {totals['rejected']} rejected, {totals['unavailable']} unavailable",
        file=sys.stderr,
    )
    if totals["unavailable"]:
        return 2
    return 1 if totals["rejected"] else 0


def _send_chunk(
    args: argparse.Namespace, chunk: list[bytes], secret: bytes, totals: dict[str, int], at: int
) -> int:
    try:
        result = send_events(
            args.url,
            chunk,
            secret=secret,
            timeout=args.timeout,
            retries=args.retries,
            cafile=args.cafile,
            batch=len(chunk) > 1,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot post to {args.url} ({e}); is the ingress running and the URL right?"
        ) from None
    if "results" not in result.body:  # the whole request was refused
        raise ConfigError(
            f"the ingress answered {result.status}: {result.body.get('message', result.body)}"
        )
    for r in result.body["results"]:
        totals[r["result"]] += 1
        if r["result"] == "rejected":
            print(json.dumps({**r, "index": at + r["index"]}), file=sys.stderr)
    return len(chunk)


if __name__ == "__main__":
    sys.exit(main())
