"""``tilepipe gateway`` as users run it, and map clients as browsers talk to it.

Plain Python (no pytest), so ``bench/`` uses it too::

    with GatewayProcess(f"{redis_url}?channel={channel}") as gw:
        async with LiveClient(gw.ws_url) as ws:
            await ws.send({"type": "track", "tiles": {"14/8805/5376": 3}})
            await ws.wait_live()
            ...  # ws.updates(): every tile_updated received, batches unpacked

The gateway is a subprocess on a free loopback port (:meth:`GatewayProcess.restart`
brings it back on the same port); :class:`LiveClient` is a real WebSocket client
(the ``websockets`` library) and :class:`SSEClient` a real streaming HTTP client
(``httpx``) parsing ``text/event-stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import websockets

from tests.support.services import free_port

STARTUP_TIMEOUT = 30.0


class GatewayProcess:
    """``python -m tilepipe gateway`` with its log lines in a file."""

    def __init__(
        self, redis: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.redis = redis
        self.env = env or {}
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/live"
        fd, log = tempfile.mkstemp(prefix="gateway-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "tilepipe", "gateway", "--listen", f"127.0.0.1:{self.port}",
               "--redis", self.redis, *self.args]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "TILEPIPE_GATEWAY_KEEPALIVE": "2s", **self.env},
            )  # fmt: skip

    def __enter__(self) -> GatewayProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``/readyz`` answers 200: listening and subscribed to Redis."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.status("/readyz") == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready within {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)

    def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        prefix = f"{name}{{{want}}} " if labels else f"{name} "
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(prefix):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()
        self.wait_ready()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def unpack(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tile_updated`` messages of one frame (a batch holds several)."""
    if frame.get("type") == "batch":
        return list(frame["messages"])
    return [frame] if frame.get("type") == "tile_updated" else []


class _Collector:
    """Frames received so far, with waits on them."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str] | None = None
        self._changed = asyncio.Event()

    def _add(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        self._changed.set()

    def updates(self) -> list[dict[str, Any]]:
        return [m for f in self.frames for m in unpack(f)]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    async def wait(
        self, predicate: Callable[[], bool], timeout: float = 30, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed is not None and not predicate():
                raise AssertionError(f"closed {self.closed} while waiting for {what}; got "
                                     f"{self.frames[-5:]}")  # fmt: skip
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out waiting for {what}; last frames {self.frames[-5:]}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def wait_updates(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        await self.wait(lambda: len(self.updates()) >= n, timeout, f"{n} updates")
        return self.updates()

    async def wait_live(self, count: int = 1, timeout: float = 30) -> dict[str, Any]:
        await self.wait(lambda: len(self.of("live")) >= count, timeout, f"live #{count}")
        return self.of("live")[count - 1]

    async def settle(self, quiet: float = 0.5) -> list[dict[str, Any]]:
        """All updates once none arrived for ``quiet`` seconds."""
        while True:
            n = len(self.frames)
            await asyncio.sleep(quiet)
            if len(self.frames) == n:
                return self.updates()


class LiveClient(_Collector):
    """A WebSocket client of ``/v1/live`` reading every frame in a background task."""

    def __init__(self, url: str, origin: str | None = None, read: bool = True, **kw: Any) -> None:
        super().__init__()
        self.url = url
        self.origin = origin
        self.read = read
        self.kw = kw
        self.ws: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveClient:
        extra = {"origin": self.origin} if self.origin else {}
        self.ws = await websockets.connect(
            self.url, compression=None, open_timeout=10, **extra, **self.kw
        )
        if self.read:
            self._task = asyncio.create_task(self._reader())
            await self.wait(lambda: bool(self.of("hello")), 10, "hello")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)

    async def _reader(self) -> None:
        try:
            async for raw in self.ws:
                self._add(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        self.closed = (self.ws.close_code, self.ws.close_reason or "")
        self._changed.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    @property
    def session(self) -> str:
        return str(self.of("hello")[0]["session"])


class SSEClient(_Collector):
    """A streaming client of ``/v1/sse``; each event kept as its JSON plus ``_event``, ``_id``."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.url = url
        self.headers = headers or {}
        self.status: int | None = None
        self.session_id: str | None = None
        self.last_id: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10, read=None))

    async def __aenter__(self) -> SSEClient:
        self._task = asyncio.create_task(self._reader())
        await self.wait(lambda: self.status is not None, 10, "response")
        if self.status == 200:
            await self.wait(lambda: bool(self.of("hello")), 10, "hello")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._client.aclose()

    async def _reader(self) -> None:
        try:
            async with self._client.stream("GET", self.url, headers=self.headers) as resp:
                self.status = resp.status_code
                self.session_id = resp.headers.get("x-tilepipe-session")
                if resp.status_code != 200:
                    self.body = (await resp.aread()).decode()
                    self._changed.set()
                    return
                event: dict[str, str] = {}
                async for line in resp.aiter_lines():
                    if line == "":
                        if "data" in event:
                            doc = json.loads(event["data"])
                            doc["_event"], doc["_id"] = event.get("event"), event.get("id")
                            if event.get("id"):
                                self.last_id = event["id"]
                            self._add(doc)
                        event = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(":")
                        event[key] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass
        finally:
            self.closed = (None, "stream ended")
            self._changed.set()
