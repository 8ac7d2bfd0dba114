"""A tilepipe service as users run it: ``python -m tilepipe COMMAND`` on a free loopback port.

:class:`ServiceProcess` is what the ingress, gateway and tile-server helpers share: the
subprocess with its log lines in a file (quoted in every error), readiness by polling
``/readyz``, one metric read from ``/metrics``, and SIGTERM or SIGKILL. A subclass says
which command and flags start it. Plain Python (no pytest), so ``bench/`` uses it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.support.services import free_port

STARTUP_TIMEOUT = 30.0
S = TypeVar("S", bound="ServiceProcess")


class ServiceProcess:
    """One service process; ``with`` waits until it is ready and stops it at the end."""

    #: The ``tilepipe`` subcommand, e.g. ``"ingress"``.
    command = ""

    def __init__(
        self,
        args: tuple[str, ...] = (),
        *,
        env: dict[str, str] | None = None,
        scheme: str = "http",
    ) -> None:
        self.args = args
        self.env = env or {}
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        fd, log = tempfile.mkstemp(prefix=f"{self.command}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "tilepipe", self.command,
               "--listen", f"127.0.0.1:{self.port}", *self.args]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )  # fmt: skip

    def __enter__(self: S) -> S:
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

    def ready(self) -> bool:
        """Whether the service is ready; by default ``/readyz`` answers 200."""
        return self.status("/readyz") == 200

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.command} exited with {self.proc.returncode}:\n{self.log()}"
                )
            with contextlib.suppress(OSError):
                if self.ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.command} not ready within {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent), e.g. ``metric("x_total", status="401")``."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        prefix = f"{name}{{{want}}} " if labels else f"{name} "
        for line in self.metrics().splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        """SIGKILL: a crash, no drain."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Killed and started again on the same port, then ready."""
        self.kill()
        self.start()
        self.wait_ready()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful drain) and the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)
