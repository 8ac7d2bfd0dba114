"""``tilepipe ingress`` as users run it: a subprocess on a free loopback port.

Plain Python (no pytest), so ``bench/`` uses it too::

    with IngressProcess(kafka.url(topic), secrets=f"k1:{key}") as ingress:  # 32+ bytes
        send_events(ingress.url, [event], secret=key.encode())
"""

from __future__ import annotations

import socket

from tests.support.process import ServiceProcess


class IngressProcess(ServiceProcess):
    """``python -m tilepipe ingress`` with its stderr (JSON log lines) in a file."""

    command = "ingress"

    def __init__(
        self,
        sink: str,
        *,
        secrets: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        scheme: str = "http",
    ) -> None:
        super().__init__(
            ("--sink", sink, *args),
            env={"TILEPIPE_HMAC_SECRETS": secrets, **(env or {})},
            scheme=scheme,
        )

    def ready(self) -> bool:
        if self.url.startswith("https:"):  # TLS: the test's own client checks the handshake
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        return super().ready()
