"""What every tilepipe HTTP service (ingress, gateway) does the same way before uvicorn runs.

A service binds its listening socket itself, before it starts serving, so a port in use is
one :class:`~tilepipe.errors.ConfigError` line instead of a uvicorn traceback, and the
socket can be handed to uvicorn (and inherited by its workers). A SIGTERM drains and
exits 0 (:class:`DrainingServer`). uvicorn's log records carry
an ANSI-coloured copy of each message that would end up in the JSON log lines; the filter
drops it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Annotated

import uvicorn
from pydantic import AfterValidator

from tilepipe.errors import ConfigError


def host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); raises ``ValueError``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen[:64]!r} is not HOST:PORT (example: 0.0.0.0:8080)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_listen(listen: str) -> str:
    host_port(listen)
    return listen


Listen = Annotated[str, AfterValidator(_check_listen)]
"""A settings field holding ``HOST:PORT`` (or ``[V6]:PORT``), checked when settings are read."""


def bind(listen: str) -> socket.socket:
    """A TCP socket bound to ``HOST:PORT``, inheritable; :class:`ConfigError` if it cannot be."""
    host, port = host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {listen}: {e.strerror}; pick another --listen address"
        ) from None
    sock.set_inheritable(True)
    return sock


def drop_color_message(record: logging.LogRecord) -> bool:
    """A logging filter: drop uvicorn's ANSI copy of the message from the record."""
    record.__dict__.pop("color_message", None)
    return True


class DrainingServer(uvicorn.Server):
    """uvicorn that exits 0 after a drained SIGTERM, instead of re-raising the signal once
    in-flight requests have finished (which a supervisor would read as a crash)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            getattr(self, "_captured_signals", []).clear()
