"""The render worker's settings: ``TILEPIPE_RENDER_<NAME>`` environment variables.

``tilepipe render-worker`` flags override them. Durations take ``250ms``,
``2s``, ``5m`` like every tilepipe duration.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dataflows.settings import Duration


class RenderSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TILEPIPE_RENDER_", env_file=".env", extra="ignore", validate_default=True
    )

    redis: str = "redis://127.0.0.1:6379/0"
    """The queue's Redis (``redis[s]://HOST:PORT/DB``)."""
    prefix: str = "tilepipe"
    """Key prefix: the queue is ``{prefix}:render:jobs``."""
    ledger: SecretStr | None = None
    """PostgreSQL DSN of the job ledger, e.g. ``postgresql://tilepipe@db/tilepipe``."""
    renderer: str = "builtin"
    """``builtin`` (a PNG showing tile and version), ``command:PROGRAM {z} {x} {y}`` or
    ``http:https://tiles.example/{z}/{x}/{y}.png`` (an upstream tile server)."""
    format: str = "png"
    """The tile format and file extension."""
    delay: Duration = timedelta(0)
    """Extra time the builtin renderer spends per tile (demos, benchmarks)."""
    timeout: Duration = timedelta(seconds=60)
    """Longest one render attempt may take (command and http renderers)."""
    http_concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    """Most tiles fetched from the upstream at once by this process (http renderer)."""
    store: str = "dir:./tiles"
    """``dir:PATH`` ({z}/{x}/{y}.{format}) or ``mbtiles:PATH``."""
    workers: Annotated[int, Field(ge=1, le=256)] = 4
    """Worker threads in this process; run more processes (pods) to scale out."""
    sla: Duration = timedelta(seconds=60)
    """A job in progress longer than this is taken to be stalled and is reclaimed."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    retry_initial: Duration = timedelta(seconds=1)
    retry_max: Duration = timedelta(minutes=5)
    breaker_threshold: Annotated[int, Field(ge=1)] = 5
    """Consecutive render failures that open the circuit (jobs then degrade)."""
    breaker_cooldown: Duration = timedelta(seconds=30)
    """How long the circuit stays open before one trial render."""
    cache_key: str | None = None
    """A Redis tile cache to invalidate, e.g. ``tilecache:{z}:{x}:{y}`` (``DEL`` after commit)."""
    purge_url: str | None = None
    """An HTTP cache to ``PURGE`` each tile from after its commit (and when a job only
    invalidates, DEGRADED or DEAD), e.g. ``http://varnish/{z}/{x}/{y}.png``; ``{tms}``,
    ``{z}``, ``{x}``, ``{y}`` and ``{version}`` are filled in. 200/204 counts as a hit, 404 a
    miss, anything else an error (logged and counted; the job still succeeds)."""
    purge_timeout: Duration = timedelta(seconds=5)
    """Longest one PURGE may take."""
    broadcast: str | None = None
    """``redis[s]://HOST:PORT/DB?channel=NAME``: after each commit, broadcast the job's
    ``tile_updated`` there (the dataflow's ``TILEPIPE_SINK`` when it renders first)."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port."""
    poll: Duration = timedelta(seconds=1)
    """How long a worker waits for a job before it looks for stalled and due jobs."""
    worker_name: str | None = None
    """This process's name in the consumer group and ledger; ``{hostname}-{pid}`` by default."""
    log_level: str = "INFO"

    @field_validator("renderer")
    @classmethod
    def _check_renderer(cls, v: str) -> str:
        if v != "builtin" and not v.startswith(("command:", "http:")):
            raise ValueError(f"{v!r}: use builtin, command:PROGRAM ARGS or http:URL")
        return v

    @field_validator("broadcast")
    @classmethod
    def _check_broadcast(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://")):
            raise ValueError(f"{v!r}: use redis://HOST:PORT/DB?channel=NAME")
        return v or None

    @field_validator("purge_url")
    @classmethod
    def _check_purge_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError(
                f"{v!r}: use an http(s) URL template such as http://cache/{{z}}/{{x}}/{{y}}.png"
            )
        try:
            v.format(tms="WebMercatorQuad", z=0, x=0, y=0, version=1)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"{v!r}: only {{tms}}, {{z}}, {{x}}, {{y}} and {{version}} can be filled in ({e})"
            ) from None
        return v

    @field_validator("store")
    @classmethod
    def _check_store(cls, v: str) -> str:
        kind, _, path = v.partition(":")
        if kind not in ("dir", "mbtiles") or not path:
            raise ValueError(f"{v!r}: use dir:PATH or mbtiles:PATH")
        return v
