"""Fixtures for the browser tests: Debian's chromium driven by Playwright, and a live stack.

The browser is ``/usr/bin/chromium`` (``tests/system-packages.sh`` installs it; the
Playwright package's own browser download is never used: this machine cannot fetch it).
The stack is ``demo.stack.Stack`` with the feed off: the real render worker, tile server
and gateway, a private redis-server and a throwaway ledger database; each test makes the
updates it needs through the render queue, as the dataflow does, and reads the tile
server's request log, the one witness that sees every tile fetch (MapLibre fetches tiles
in a worker, where page-level request capture can miss them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from demo.stack import JS_DIR, Stack, StackConfig
from operators.coalesce import update_hash
from render.queue import RenderQueue
from sinks.render_queue import RenderEnqueuer, RenderQueueTarget
from tilepipe.records import TileUpdate
from tilepipe.tiles import WEB_MERCATOR_QUAD, quadkey
from tilepipe.versions import order_key, version_key

CHROMIUM = Path("/usr/bin/chromium")
PAGES = Path(__file__).resolve().parent / "pages"
ZOOM = 14
# The block the tests render: 8 x 8 tiles at z14 around Berlin, as the demo's generator.
LON, LAT = 13.405, 52.52


def _needs() -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            "no /usr/bin/chromium: run tests/system-packages.sh as root (apt-get install -y"
            " --no-install-recommends chromium)"
        )
    if not (JS_DIR / "node_modules" / "maplibre-gl").is_dir():
        pytest.skip(f"the JS packages are not installed: npm ci --prefix {JS_DIR}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Chromium for one test module. Not for the session: Playwright's sync API keeps an
    event loop running in the main thread while it is open, and tests after these that call
    ``asyncio.run`` (the gateway's) would fail with "cannot be called from a running event
    loop"."""
    _needs()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture
def browser(chromium: Any) -> Iterator[Any]:
    """One browser context per test (its own HTTP cache), closed after it."""
    context = chromium.new_context(viewport={"width": 1024, "height": 768})
    yield context
    context.close()


class Live:
    """A running stack and what the tests do with it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.enqueuer = RenderEnqueuer(RenderQueueTarget(stack.redis_url, stack.prefix))
        RenderQueue(self.enqueuer.client, stack.prefix).ensure_group()
        self.versions: dict[tuple[int, int, int], int] = {}

    def update(self, z: int, x: int, y: int, version: int | None = None) -> int:
        """A new release of a tile, through the render queue; its version."""
        v = version if version is not None else self.versions.get((z, x, y), 0) + 1
        self.versions[(z, x, y)] = v
        ts = int(time.time() * 1000)
        objects = ((f"tile:{WEB_MERCATOR_QUAD}/{z}/{x}/{y}", order_key(version_key(v), ts)),)
        u = TileUpdate(
            key=f"{z}:{quadkey(z, x, y)}", tms=WEB_MERCATOR_QUAD, z=z, x=x, y=y, version=v,
            objects=objects, hash=update_hash(WEB_MERCATOR_QUAD, z, x, y, objects), ts_ms=ts,
            oldest_ts_ms=ts, oldest_received_ms=float(ts), events=1, records=1, layers=None,
        )  # fmt: skip
        self.enqueuer.enqueue([u])
        return v

    def committed(self) -> dict[tuple[int, int, int], str]:
        with psycopg.connect(self.stack.ledger_dsn, autocommit=True) as conn:
            try:
                rows = conn.execute("SELECT z, x, y, version FROM render_tiles").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
        return {(r[0], r[1], r[2]): r[3] for r in rows}

    def wait_committed(self, timeout: float = 20) -> None:
        """Until the ledger has every version the test asked for."""
        want = {k: str(v) for k, v in self.versions.items()}
        wait_for(lambda: all(self.committed().get(k) == v for k, v in want.items()),
                 "the render worker to commit every update", timeout)  # fmt: skip

    def requests(self) -> list[dict[str, Any]]:
        log = self.stack.request_log
        if not log.exists():
            return []
        return [orjson.loads(line) for line in log.read_text().splitlines() if line]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def live_stack(tmp_path: Path) -> Iterator[Live]:
    _needs()
    config = StackConfig(
        feed=False, run_dir=tmp_path / "run", lon=LON, lat=LAT, zoom=ZOOM,
        postgres=os.environ.get("TILEPIPE_TEST_POSTGRES"), extra_static=[f"pages={PAGES}"],
    )  # fmt: skip
    with Stack(config) as stack:
        yield Live(stack)
