"""``tilepipe demo`` as a newcomer runs it: one command, a URL, a map whose tiles change.

The whole pipeline this time, the dataflow included: the generator's events go through
the dataflow into the render queue, the worker renders and commits each tile and
announces it, the gateway pushes it, the page refetches it. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from demo.stack import free_port
from tests.browser.conftest import wait_for

pytestmark = pytest.mark.browser


def test_the_demo_shows_a_live_map_whose_tiles_change(browser: Any, tmp_path: Path) -> None:
    env = dict(os.environ)
    if os.environ.get("TILEPIPE_TEST_POSTGRES"):
        env["TILEPIPE_RENDER_LEDGER"] = os.environ["TILEPIPE_TEST_POSTGRES"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "tilepipe", "demo", "--port", str(free_port()),
         "--gateway-port", str(free_port()), "--rate", "20", "--tiles", "36"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        assert first.startswith("tilepipe demo: open http://"), first + demo.stderr.read()
        url = first.split("open ", 1)[1].strip()
        lines = [demo.stdout.readline() for _ in range(5)]
        log = Path(re.search(r"request log (\S+)\)", "".join(lines)).group(1))  # type: ignore[union-attr]
        dbname = re.search(r"dbname=(\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]

        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.body.dataset.status === 'live'", timeout=20_000)
        assert page.text_content("#status") == "live"
        # The panel counts updates as they arrive, and the map refetches changed tiles.
        page.wait_for_function("Number(document.getElementById('count').textContent) >= 10",
                               timeout=30_000)  # fmt: skip
        assert float(page.text_content("#rate") or 0) > 0
        assert len(page.query_selector_all("#last li")) == 8
        refetched = wait_for(
            lambda: [r for r in map(orjson.loads, log.read_text().splitlines())
                     if r["v"] not in (None, "1") and r["status"] == 200],
            "a tile refetched at a later version", 30,
        )  # fmt: skip
        assert refetched[0]["cache"] == "immutable"
        assert page.evaluate("window.tilepipeDemo.errors") == []
        page.close()
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
    assert "stopped in" in err
    # It cleaned up after itself: the ledger database is gone.
    base = (
        os.environ.get("TILEPIPE_TEST_POSTGRES") or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with psycopg.connect(base, autocommit=True) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    assert left is None


def test_the_demo_stops_and_shows_the_log_when_a_piece_dies() -> None:
    from tests.browser.conftest import _needs

    _needs()
    demo = subprocess.Popen(
        [sys.executable, "-m", "tilepipe", "demo", "--port", str(free_port()),
         "--gateway-port", str(free_port()), "--rate", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert demo.stdout is not None
    lines = [demo.stdout.readline() for _ in range(6)]
    run_dir = re.search(r"logs +(\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
    worker = next(
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and b"render-worker" in _cmdline(pid) and run_dir.encode() in _cmdline(pid)
    )
    os.kill(worker, signal.SIGKILL)
    _, err = demo.communicate(timeout=30)
    assert demo.returncode == 1
    assert "worker stopped; its log ends:" in err and "render workers started" in err


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
