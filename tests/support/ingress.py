"""``tilepipe ingress`` as users run it: a subprocess on a free loopback port.

Plain Python (no pytest), so ``bench/`` uses it too::

    with IngressProcess(kafka.url(topic), secrets=f"k1:{key}") as ingress:  # 32+ bytes
        send_events(ingress.url, [event], secret=key.encode())
"""

from __future__ import annotations

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

from tests.support.services import free_port

STARTUP_TIMEOUT = 30.0


class IngressProcess:
    """``python -m tilepipe ingress`` with its stderr (JSON log lines) in a file."""

    def __init__(
        self,
        sink: str,
        *,
        secrets: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        scheme: str = "http",
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        fd, log = tempfile.mkstemp(prefix="ingress-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        cmd = [sys.executable, "-m", "tilepipe", "ingress", "--listen", f"127.0.0.1:{self.port}",
               "--sink", sink, *args]  # fmt: skip
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TILEPIPE_HMAC_SECRETS": secrets, **(env or {})},
            )

    def __enter__(self) -> IngressProcess:
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

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``/readyz`` answers 200 (plain HTTP only; TLS callers poll themselves)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingress exited with {self.proc.returncode}:\n{self.log()}")
            if self.url.startswith("https:"):
                import socket

                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    pass
            else:
                try:
                    with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                        if r.status == 200:
                            return
                except (OSError, urllib.error.HTTPError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingress not ready within {timeout:g}s:\n{self.log()}")
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

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful drain) and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
