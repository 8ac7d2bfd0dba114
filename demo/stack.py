"""Start and stop the pieces of a local tilepipe, each as its own process.

``tilepipe demo`` uses it to run everything a live map needs on this machine: a private
``redis-server`` (unless one is given), a throwaway PostgreSQL database for the render
ledger, a render worker with the builtin renderer, the tile server (which also serves the
demo page and the installed npm packages), the gateway, and the dataflow reading the
built-in generator into the render queue. The browser tests use the same class, with the
feed off, to drive exact updates and to kill and restart single pieces.

Every piece is the real command a user runs (``python -m tilepipe ...``), its output in
``{run_dir}/{name}.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import redis
from psycopg import conninfo, sql

REPO = Path(__file__).resolve().parents[1]
JS_DIR = REPO / "clients" / "js"
STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


class StackError(RuntimeError):
    """Something the demo needs is missing or did not start; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class StackConfig:
    host: str = "127.0.0.1"
    tiles_port: int = 0  # 0: a free port
    gateway_port: int = 0
    redis_url: str | None = None  # None: a private redis-server
    postgres: str | None = None  # None: TILEPIPE_RENDER_LEDGER, else 127.0.0.1:5432
    feed: bool = True
    rate: float = 4.0  # generator events per second
    tiles: int = 64
    zoom: int = 14
    lon: float = 13.4050
    lat: float = 52.5200
    events: int = 10_000_000
    run_dir: Path | None = None
    js_dir: Path = JS_DIR
    worker_threads: int = 2
    extra_static: list[str] = field(default_factory=list)
    """More ``PREFIX=DIRECTORY`` folders for the tile server to serve (test pages)."""


@dataclass
class Stack:
    config: StackConfig = field(default_factory=StackConfig)

    def __post_init__(self) -> None:
        c = self.config
        self._own_dir = c.run_dir is None
        self.run_dir = (
            Path(tempfile.mkdtemp(prefix="tilepipe-demo-")) if c.run_dir is None else c.run_dir
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = self.run_dir / "tiles"
        self.store.mkdir(exist_ok=True)
        self.request_log = self.run_dir / "tile-requests.jsonl"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tiles_port = c.tiles_port or free_port(c.host)
        self.gateway_port = c.gateway_port or free_port(c.host)
        self.redis_url = c.redis_url or ""
        self.ledger_dsn = ""
        self._admin_dsn = ""
        self._dbname = ""
        # A Redis the user gave may be shared: keep this run's keys and channel apart.
        tag = "tilepipe" if c.redis_url is None else f"tilepipe-demo-{uuid.uuid4().hex[:8]}"
        self.prefix = tag
        self.channel = f"{tag}:tile_updated"

    # -- the pieces --------------------------------------------------------------------------

    def check_js(self) -> None:
        modules = self.config.js_dir / "node_modules" / "maplibre-gl" / "dist"
        if not (modules / "maplibre-gl.mjs").is_file():
            raise StackError(
                f"the map page needs the JS packages: run `npm ci --prefix {self.config.js_dir}`"
                " once (installs maplibre-gl from the npm registry; no CDN at run time)"
            )

    def start_redis(self) -> None:
        if self.config.redis_url is not None:
            self._ping_redis()
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError(
                "no redis-server on PATH: install Redis 7 (apt-get install redis-server) or"
                " pass --redis redis://HOST:PORT/0"
            )
        port = free_port(self.config.host)
        self.redis_url = f"redis://{self.config.host}:{port}/0"
        argv = [exe, "--port", str(port), "--bind", self.config.host, "--save", "",
                "--appendonly", "no", "--dir", str(self.run_dir)]  # fmt: skip
        self._spawn("redis", argv)
        self._wait(self._ping_redis, "redis-server", 10)

    def _ping_redis(self) -> bool:
        try:
            with redis.Redis.from_url(self.redis_url, socket_connect_timeout=2) as r:
                return bool(r.ping())
        except (redis.RedisError, OSError) as e:
            if self.config.redis_url is not None:
                raise StackError(f"Redis at {self.redis_url} does not answer ({e})") from None
            return False

    def create_ledger(self) -> None:
        base = self.config.postgres or os.environ.get("TILEPIPE_RENDER_LEDGER") or DEFAULT_POSTGRES
        self._admin_dsn = base
        self._dbname = f"tilepipe_demo_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._dbname)))
        except psycopg.Error as e:
            raise StackError(
                f"PostgreSQL for the render ledger: {str(e).strip().splitlines()[0]}. Start"
                " PostgreSQL on 127.0.0.1:5432 (trust auth) or set TILEPIPE_RENDER_LEDGER to a"
                " server where this user may CREATE DATABASE"
            ) from None
        self.ledger_dsn = conninfo.make_conninfo(base, dbname=self._dbname)

    def drop_ledger(self) -> None:
        if not self._dbname:
            return
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(self._dbname)
        )
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self._admin_dsn, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(drop)
        self._dbname = ""

    @property
    def broadcast_uri(self) -> str:
        return f"{self.redis_url}?channel={self.channel}&prefix={self.prefix}"

    def start_worker(self) -> None:
        env = {"TILEPIPE_RENDER_LEDGER": self.ledger_dsn, "TILEPIPE_RENDER_PREFIX": self.prefix}
        self._tilepipe("worker", ["render-worker", "--redis", self.redis_url,
                                  "--store", f"dir:{self.store}", "--renderer", "builtin",
                                  "--workers", str(self.config.worker_threads),
                                  "--broadcast", self.broadcast_uri],
                       env)  # fmt: skip

    def start_tiles(self) -> None:
        static = [f"demo={STATIC}", f"live={self.config.js_dir / 'src'}",
                  f"node_modules={self.config.js_dir / 'node_modules'}",
                  *self.config.extra_static]  # fmt: skip
        env = {"TILEPIPE_TILES_LEDGER": self.ledger_dsn,
               "TILEPIPE_TILES_STATIC": json.dumps(static)}  # fmt: skip
        self._tilepipe("tiles", ["tiles", "--listen", f"{self.config.host}:{self.tiles_port}",
                                 "--store", f"dir:{self.store}",
                                 "--request-log", str(self.request_log)], env)  # fmt: skip
        self._wait(lambda: self._ready(self.tiles_port), "the tile server", 20, "tiles")

    def start_gateway(self) -> None:
        self._tilepipe("gateway", ["gateway", "--listen", f"{self.config.host}:{self.gateway_port}",
                                   "--redis", self.broadcast_uri], {})  # fmt: skip
        self._wait(lambda: self._ready(self.gateway_port), "the gateway", 20, "gateway")

    def start_feed(self) -> None:
        c = self.config
        query = urlencode({"events": c.events, "tiles": c.tiles, "zoom": c.zoom, "lon": c.lon,
                           "lat": c.lat, "rate": c.rate, "duplicates": 0, "replays": 0,
                           "invalid": 0, "seed": int(time.time()) % 100_000})  # fmt: skip
        self._tilepipe("dataflow", ["run", "--source", f"generator:?{query}",
                                    "--render-queue", f"{self.redis_url}?prefix={self.prefix}",
                                    "--max-delay", "100ms"], {})  # fmt: skip

    def start(self) -> None:
        self.check_js()
        try:
            self.start_redis()
            self.create_ledger()
            self.start_worker()
            self.start_tiles()
            self.start_gateway()
            if self.config.feed:
                self.start_feed()
        except BaseException:
            self.close()
            raise

    @property
    def page_url(self) -> str:
        c = self.config
        query = urlencode({"gateway": f"http://{c.host}:{self.gateway_port}", "lon": c.lon,
                           "lat": c.lat, "zoom": c.zoom})  # fmt: skip
        return f"http://{c.host}:{self.tiles_port}/demo/?{query}"

    @property
    def tiles_url(self) -> str:
        return f"http://{self.config.host}:{self.tiles_port}"

    # -- processes ---------------------------------------------------------------------------

    def _tilepipe(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self._spawn(name, [sys.executable, "-m", "tilepipe", *args], env)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.run_dir / f"{name}.log").open("ab")
        full = {**os.environ, "TILEPIPE_LOG_LEVEL": os.environ.get("TILEPIPE_LOG_LEVEL", "INFO")}
        full.update(env or {})
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full,
            cwd=self.run_dir, start_new_session=True,
        )  # fmt: skip
        log.close()

    def _ready(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.config.host}:{port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _wait(
        self, check: Callable[[], bool], what: str, timeout: float, name: str | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            proc = self.procs.get(name or "")
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = ""
        if name is not None and (self.run_dir / f"{name}.log").exists():
            tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-1500:]
        raise StackError(f"{what} did not come up within {timeout:.0f}s. Its log:\n{tail}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def running(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def close(self) -> None:
        for name in ("dataflow", "gateway", "tiles", "worker"):
            self.stop(name)
        self.drop_ledger()
        self.stop("redis")
        if self._own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
