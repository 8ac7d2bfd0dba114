"""The gateway's settings, in one object built once and passed down.

Every field is a ``TILEPIPE_GATEWAY_<NAME>`` environment variable (or in a
``.env`` file); ``tilepipe gateway`` flags override them. ``redis`` takes the
same URI as the dataflow's Redis sink (``channel`` and ``prefix`` included), so
one value configures both ends. Durations take ``250ms``, ``2s``, ``5m``.
The log level is every service's ``TILEPIPE_LOG_LEVEL`` (:class:`tilepipe.config.SharedSettings`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from tilepipe.config import Duration, SharedSettings, redis_uri
from tilepipe.serving import Listen
from tilepipe.store import RedisTarget


class GatewaySettings(SharedSettings):
    """``TILEPIPE_GATEWAY_<NAME>``; the log level is every service's ``TILEPIPE_LOG_LEVEL``."""

    model_config = SettingsConfigDict(env_prefix="TILEPIPE_GATEWAY_")

    listen: Listen = "127.0.0.1:8090"
    """``HOST:PORT`` to serve WebSocket, SSE and the health endpoints on."""
    redis: str = "redis://127.0.0.1:6379/0?channel=tilepipe:tile_updated&prefix=tilepipe"
    """The dataflow's Redis sink URI: the channel it publishes on and the key prefix of the
    per-tile hashes (``{prefix}:tile:{tms}:{z}:{x}:{y}``, field ``msg``)."""

    # Limits
    max_connections: Annotated[int, Field(ge=1)] = 20_000
    """WebSocket and SSE sessions per process; beyond it 503 with ``Retry-After``."""
    retry_after: Annotated[int, Field(ge=1, le=3600)] = 5
    """Seconds in ``Retry-After`` (the client adds jitter)."""
    max_tiles: Annotated[int, Field(ge=1, le=100_000)] = 512
    """Tiles one session may track (a viewport plus a ring is a few dozen to a few hundred)."""
    area_level: Annotated[int, Field(ge=1, le=20)] = 12
    """Quadkey length at which area subscriptions are routed; deeper updates are checked
    against the bbox."""
    max_area_cells: Annotated[int, Field(ge=1)] = 4096
    """Routing cells one area may take (per zoom: its tiles down to ``area_level``)."""
    max_pending: Annotated[int, Field(ge=1)] = 1024
    """Pending area-tile updates one session holds before it is told to refresh its area."""
    max_batch: Annotated[int, Field(ge=1)] = 256
    """Messages per WebSocket batch frame."""

    # Slow clients
    slow_timeout: Duration = timedelta(seconds=10)
    """A client whose socket stays over ``write_buffer_high`` this long is closed (4008)."""
    write_buffer_high: Annotated[int, Field(ge=1024)] = 64 * 1024
    """Bytes buffered for a socket above which the writer waits (and the slow clock runs)."""
    socket_send_buffer: Annotated[int, Field(ge=0)] = 0
    """Each socket's kernel send buffer (``SO_SNDBUF``) in bytes; 0 leaves it to the kernel,
    which lets a client that stops reading pin up to ``tcp_wmem``'s maximum (4 MiB)."""
    close_grace: Duration = timedelta(seconds=2)
    """After a 4008 close frame, how long the client gets to read it before the socket is cut."""

    # Liveness
    keepalive: Duration = timedelta(seconds=15)
    """SSE comment keep-alive and WebSocket ping interval."""
    session_linger: Duration = timedelta(seconds=30)
    """An SSE session's state is kept this long after its stream ends, so EventSource's own
    reconnect (``Last-Event-ID``) finds it, changes made with POST included."""
    redis_retry_max: Duration = timedelta(seconds=5)
    """Longest wait between attempts to get the Redis subscription back."""
    resume_chunk: Annotated[int, Field(ge=1, le=10_000)] = 500
    """Tiles read per pipeline when resuming from the store."""

    # Auth (off unless a key is given)
    jwt_secret: SecretStr | None = None
    """HS256 shared secret; turns auth on."""
    jwt_public_key_file: Path | None = None
    """RS256/ES256 public key (PEM); turns auth on."""
    jwt_jwks_file: Path | None = None
    """A JWKS file (public keys chosen by the token's ``kid``); turns auth on."""
    jwt_audience: str | None = "tilepipe-gateway"
    """Required ``aud`` claim (empty: not checked)."""
    jwt_max_lifetime: Duration = timedelta(minutes=15)
    """Tokens valid longer than this (``exp - iat``, or ``exp - now``) are refused."""
    auth_timeout: Duration = timedelta(seconds=5)
    """How long a WebSocket may take to send its ``auth`` frame when auth is on."""
    allowed_origins: Annotated[list[str], NoDecode] = []
    """``https://maps.example.org,https://other``: WebSocket ``Origin`` values accepted;
    empty accepts any (local use). ``*`` accepts any explicitly."""
    sse_query_token: bool = False
    """Accept ``access_token=`` in the SSE URL (last resort: it lands in proxy logs)."""

    @field_validator("redis")
    @classmethod
    def _check_redis(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"{v!r}: the gateway reads Redis: redis[s]://HOST:PORT/DB?channel=NAME"
            )
        _, options = redis_uri(v)
        if options.get("mode", "publish") != "publish":
            raise ValueError("mode=spublish (sharded pub/sub) is not supported by the gateway yet")
        return v

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip().rstrip("/") for o in v.split(",") if o.strip()]
        return v

    @model_validator(mode="after")
    def _check_auth(self) -> GatewaySettings:
        keys = [self.jwt_secret, self.jwt_public_key_file, self.jwt_jwks_file]
        if sum(k is not None for k in keys) > 1:
            raise ValueError(
                "give one JWT key: jwt_secret (HS256), jwt_public_key_file or jwt_jwks_file"
            )
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        return self

    @property
    def auth_enabled(self) -> bool:
        return any(
            k is not None for k in (self.jwt_secret, self.jwt_public_key_file, self.jwt_jwks_file)
        )

    def redis_target(self) -> tuple[str, str, str]:
        """``(connection URL, channel, key prefix)`` from ``redis``, read as the sink reads it."""
        target = RedisTarget.from_uri(self.redis)
        return target.url, target.channel, target.prefix
