"""The JS client against the real ``tilepipe gateway``, over both transports, from Node.

The browser tests use WebSocket only (the demo page and the gateway are on two origins,
and the gateway sends no CORS headers, so a browser's EventSource could not read it);
here Node runs ``@tilepipe/live`` with ``ws`` and a small EventSource, so SSE is checked
against the real gateway too: the state on track, live updates, a tracked set changed on
the open connection (a frame, or ``POST /v1/sessions/{id}/track``), and a gateway killed
and restarted while a tile changed, after which the newest version arrives exactly once.
"""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from demo.stack import JS_DIR
from tests.browser.conftest import Live

pytestmark = pytest.mark.browser


class Driver:
    def __init__(self, url: str, transport: str, tiles: list[str]) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.skip("no node on PATH: run tests/system-packages.sh as root")
        self.proc = subprocess.Popen(
            [node, str(JS_DIR / "test" / "support" / "drive.js"), url, transport, ",".join(tiles)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(orjson.loads(line))

    def until(self, match: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
        while True:
            try:
                item = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {match} within {timeout}s; saw {self.seen}") from None
            self.seen.append(item)
            if all(item.get(k) == v for k, v in match.items()):
                return item

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd).decode() + "\n")
        self.proc.stdin.flush()

    def updates(self) -> list[tuple[str, int]]:
        return [(i["update"], i["version"]) for i in self.seen if "update" in i]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send({"close": True})
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def driver() -> Iterator[list[Driver]]:
    made: list[Driver] = []
    yield made
    for d in made:
        d.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_client_speaks_the_real_gateway_over_both_transports(
    live_stack: Live, driver: list[Driver], transport: str
) -> None:
    live = live_stack
    a, b = (14, 8800, 5370), (14, 8801, 5370)
    ka, kb = "/".join(map(str, a)), "/".join(map(str, b))
    live.update(*a)
    live.update(*b)
    live.wait_committed()
    gateway = f"http://{live.stack.config.host}:{live.stack.gateway_port}"
    d = Driver(gateway, transport, [ka])
    driver.append(d)
    d.until({"update": ka, "version": 1})  # the stored state of what it tracks
    d.until({"status": "live", "transport": transport})

    live.update(*a)  # live
    d.until({"update": ka, "version": 2})
    d.send({"tiles": [ka, kb]})  # a new view on the open connection
    d.until({"update": kb, "version": 1})

    live.stack.stop("gateway", signal.SIGKILL)
    d.until({"status": "offline"})
    live.update(*a)
    live.update(*a)
    live.wait_committed()
    live.stack.start_gateway()
    d.until({"update": ka, "version": 4}, timeout=30)
    d.until({"status": "live"})
    live.update(*b)
    d.until({"update": kb, "version": 2})
    # Every version once, in order, and nothing it did not track; across the restart only
    # the newest of what changed (3 was superseded while away).
    assert d.updates() == [(ka, 1), (ka, 2), (kb, 1), (ka, 4), (kb, 2)]
    assert not [i for i in d.seen if "error" in i]
