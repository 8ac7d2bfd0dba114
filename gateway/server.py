"""Running the gateway: checks first, then uvicorn.

:func:`prepare` turns the usual mistakes (a Redis that does not answer, a
JWT key file that cannot be read, a port in use) into one line before
anything is served. :func:`serve` runs uvicorn with uvloop, httptools and the
sans-I/O ``websockets`` protocol (per-message compression off: it costs
~50 KiB per connection and the messages are ~300 bytes), wrapped by
``gateway.transport`` so slow sockets can be closed. SIGTERM ends every SSE
stream with ``bye`` and every WebSocket with close code 1012, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
from typing import Any

import redis
import uvicorn

from dataflows.settings import redact_url
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.transport import protocols
from ingress.server import _bind, _drop_color_message
from tilepipe.cli import UserError, settings_from_flags

log = logging.getLogger("tilepipe.gateway")

FLAGS = ("listen", "redis", "max_connections", "max_tiles", "log_level")


def prepare(settings: GatewaySettings) -> socket.socket:
    """Check Redis and the auth keys, bind the port; raises :class:`UserError`."""
    url, _, _ = settings.redis_target()
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3) as client:
            client.ping()
    except (redis.RedisError, OSError) as e:
        raise UserError(
            f"Redis at {redact_url(url)} does not answer ({e}); check --redis"
            " (TILEPIPE_GATEWAY_REDIS)"
        ) from None
    if settings.auth_enabled:
        from gateway.auth import Verifier

        try:
            Verifier(settings)
        except ValueError as e:
            raise UserError(str(e)) from None
    return _bind(settings.listen)


class _Server(uvicorn.Server):
    hub: Any = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.hub is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon_threadsafe(self.hub.stopping.set)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        with super().capture_signals():
            yield
            getattr(self, "_captured_signals", []).clear()  # a drained exit is code 0


def serve(settings: GatewaySettings) -> int:
    sock = prepare(settings)
    app = create_app(settings)
    http, ws = protocols(settings.write_buffer_high, settings.socket_send_buffer)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=http,
        ws=ws,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.keepalive.total_seconds(),
        # A client with a full buffer cannot answer a ping either; uvicorn's own timeout must
        # not beat the slow-client close, which tells the client why (4008) before cutting.
        ws_ping_timeout=(
            settings.keepalive + settings.slow_timeout + settings.close_grace
        ).total_seconds(),
        lifespan="on",
        log_config=None,
        access_log=False,  # an SSE URL may carry a token (sse_query_token)
        server_header=False,
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    server = _Server(config)
    server.hub = app.state.gateway.hub
    uv = logging.getLogger("uvicorn.error")
    uv.addFilter(_drop_color_message)
    # uvicorn logs two lines per WebSocket at INFO: noise at 20k connections.
    uv.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    url, channel, _ = settings.redis_target()
    log.info(
        "gateway listening on %s, subscribing to %s on %s",
        settings.listen, channel, redact_url(url),
        extra={"auth": settings.auth_enabled, "max_connections": settings.max_connections},
    )  # fmt: skip
    server.run(sockets=[sock])
    return 0 if server.started else 1


def gateway_command(args: argparse.Namespace) -> int:
    """``tilepipe gateway``: flags over ``TILEPIPE_GATEWAY_*`` variables over defaults."""
    from tilepipe.logs import setup_logging

    settings = settings_from_flags(GatewaySettings, args, FLAGS, "TILEPIPE_GATEWAY_")
    setup_logging(settings.log_level)
    return serve(settings)
