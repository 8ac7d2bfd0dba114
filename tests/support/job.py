"""Running ``tilepipe`` as users run it (a subprocess) and reading what it reports.

``tilepipe(...)`` runs any subcommand to its end; ``run_to_end(...)`` is
``tilepipe run --kafka-exit-at-end``; :class:`Job` is a ``tilepipe run`` left
running, with its ``/metrics`` to wait on; ``counts`` reads the summary line
that accounts for every record; ``key_of`` keys a record by its tile, as the
ingress does, for ``KafkaBroker.produce(..., key=key_of)``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.services import free_port
from tilepipe.tiles import tile_key

SUMMARY = re.compile(
    r"tilepipe: (\d+) records in: (\d+) broadcast, (\d+) duplicate, (\d+) stale,"
    r" (\d+) dead-lettered"
)
SUMMARY_LINE = re.compile(
    r"tilepipe: (\d+) records in: (\d+) broadcast, (\d+) duplicate, (\d+) stale,"
    r" (\d+) dead-lettered; ran [0-9.]+ s, \d+ records/s, peak RSS \d+ MiB$"
)
"""The whole summary line, as a user reads it (``SUMMARY`` matches only its counts)."""
QUIET = {"TILEPIPE_PROGRESS_INTERVAL": "3600"}
"""No progress lines: stderr holds what a test reads (logs, the summary)."""


def tilepipe(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """``python -m tilepipe ARGS`` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tilepipe", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **QUIET, **(env or {})},
    )


def run_to_end(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """``tilepipe run --kafka-exit-at-end ARGS``: a Kafka job that stops at the end of its topic."""
    return tilepipe("run", "--kafka-exit-at-end", *args, timeout=timeout)


def counts(stderr: str) -> dict[str, int]:
    """The summary line: ``in``, ``broadcast``, ``duplicate``, ``stale`` and ``dead_letter``."""
    m = SUMMARY.search(stderr)
    assert m, stderr[-3000:]
    keys = ("in", "broadcast", "duplicate", "stale", "dead_letter")
    return dict(zip(keys, map(int, m.groups()), strict=True))


def key_of(value: bytes) -> bytes | None:
    """The tile key of a tile record (``None`` for anything else, which then has no key)."""
    try:
        d = json.loads(value)
        return tile_key(d["z"], d["x"], d["y"]).encode()
    except Exception:
        return None


class Job:
    """``tilepipe run ARGS`` in a subprocess, serving ``/metrics`` on a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tilepipe",
                "run",
                *args,
                "--metrics-port",
                str(self.metrics_port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **QUIET, **(env or {})},
        )

    def metric(self, name: str, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        while True:
            try:
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
                ).read()
                for line in body.decode().splitlines():
                    if line.startswith(name + " ") or line.startswith(name + "{"):
                        return float(line.rsplit(" ", 1)[1])
                raise LookupError(name)
            except (OSError, LookupError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def wait_metric(
        self, name: str, predicate: Callable[[float], bool], timeout: float = 30
    ) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name)
            if predicate(value):
                return value
            assert time.monotonic() < deadline, f"{name} stayed at {value}"
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()

    def stop_when_done(self, timeout: float = 120) -> tuple[int, str, str]:
        """Wait for a job that ends by itself (file source, ``--kafka-exit-at-end``)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, out.decode(), err.decode()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


def summary(stderr: bytes) -> tuple[int, ...]:
    """(in, broadcast, duplicate, stale, dead-lettered) from the one summary line."""
    lines = [ln for ln in stderr.decode().splitlines() if ln.startswith("tilepipe: ")]
    assert len(lines) == 1, stderr.decode()[-2000:]
    m = SUMMARY_LINE.match(lines[0])
    assert m, lines[0]
    return tuple(int(g) for g in m.groups())


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    """``records`` (dicts, or lines as they are) one a line at ``path``."""
    with path.open("w") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")
    return path
