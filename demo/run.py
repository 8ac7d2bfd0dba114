"""``tilepipe demo``: start the stack, print the map's URL, run until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from demo.stack import Stack, StackConfig, StackError
from tilepipe.errors import ConfigError


def demo_command(args: argparse.Namespace) -> int:
    config = StackConfig(
        host=args.host,
        tiles_port=args.port,
        gateway_port=args.gateway_port,
        redis_url=args.redis,
        rate=args.rate,
        tiles=args.tiles,
        zoom=args.zoom,
        lon=args.lon,
        lat=args.lat,
    )
    stack = Stack(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
    except StackError as e:
        raise ConfigError(str(e)) from None
    try:
        print(
            f"tilepipe demo: open {stack.page_url}\n"
            f"  tiles and page  {stack.tiles_url}  (request log {stack.request_log})\n"
            f"  gateway         http://{config.host}:{stack.gateway_port}\n"
            f"  redis           {stack.redis_url}   ledger database {stack.ledger_dsn}\n"
            f"  logs            {stack.run_dir} (removed on exit)\n"
            f"  {config.rate:g} updates/s over {config.tiles} tiles at z{config.zoom};"
            " Ctrl-C stops everything",
            flush=True,
        )
        while not stop.wait(1.0):
            dead = [name for name, up in stack.running().items() if not up]
            if dead:
                # The run directory goes with the stack: show the log's end before it does.
                log = stack.run_dir / f"{dead[0]}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                print(f"tilepipe demo: {', '.join(dead)} stopped; its log ends:\n{tail}",
                      file=sys.stderr)  # fmt: skip
                return 1
        return 0
    finally:
        print("tilepipe demo: stopping", file=sys.stderr, flush=True)
        started = time.monotonic()
        stack.close()
        print(f"tilepipe demo: stopped in {time.monotonic() - started:.1f}s", file=sys.stderr)
