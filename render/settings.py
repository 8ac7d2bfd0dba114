"""The render worker's settings: ``TILEPIPE_RENDER_<NAME>`` environment variables.

``tilepipe render-worker`` flags override them. Durations take ``250ms``,
``2s``, ``5m`` like every tilepipe duration.
"""

from __future__ import annotations

import shlex
from datetime import timedelta
from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from render.jobs import TEMPLATE_FIELDS
from tilepipe.config import Duration, TilepipeSettings
from tilepipe.store import DEFAULT_PREFIX

_SAMPLE = {"tms": "WebMercatorQuad", "z": 0, "x": 0, "y": 0, "version": 1, "key": "0" * 32}


def check_template(template: str, what: str) -> str:
    """``template`` if every ``{field}`` in it is one a job fills in, else a ValueError
    saying which are (so a bad template stops the worker at startup, not every job)."""
    try:
        for version in (1, "4.2.0"):  # versions are integers or dotted strings
            template.format(**{**_SAMPLE, "version": version})
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        names = ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
        raise ValueError(
            f"{template!r}: {what} can fill in only {names}; write {{{{ and }}}} for literal"
            f" braces ({type(e).__name__}: {e})"
        ) from None
    return template


class RenderSettings(TilepipeSettings):
    model_config = SettingsConfigDict(env_prefix="TILEPIPE_RENDER_")

    redis: str = "redis://127.0.0.1:6379/0"
    """The queue's Redis (``redis[s]://HOST:PORT/DB``)."""
    prefix: str = DEFAULT_PREFIX
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
    """Longest one render attempt may take (command and http renderers; for http the
    whole fetch: connect, headers and body)."""
    http_concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    """Most tiles fetched from the upstream at once by this process (http renderer)."""
    max_tile_bytes: Annotated[int, Field(ge=1024)] = 16 << 20
    """Largest tile the http renderer accepts from the upstream (bigger: a failed attempt)."""
    store: str = "dir:./tiles"
    """``dir:PATH`` ({z}/{x}/{y}.{format}) or ``mbtiles:PATH``."""
    staging: str | None = None
    """Where a ``dir:`` store stages tiles before moving them in: outside the served tree,
    on the same filesystem (the move is a rename). ``{PATH}/../.{name}-staging`` by default
    (``dir:/srv/tilepipe/tiles`` stages in ``/srv/tilepipe/.tiles-staging``)."""
    workers: Annotated[int, Field(ge=1, le=256)] = 4
    """Worker threads in this process; run more processes (pods) to scale out."""
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
    sla: Duration = timedelta(minutes=2)
    """A job in progress longer than this is taken to be stalled and is reclaimed. Must
    exceed the longest render (``timeout``, or ``delay``) plus ``purge_timeout`` plus a
    margin of max(10 s, a quarter of the render): a render still running at its SLA is
    rendered twice."""
    dedup_ttl: Duration = timedelta(hours=6)
    """How long the queue's per-job dedup marker lives; the ledger refuses finished jobs
    for as long as it keeps them (``retention``)."""
    dead_max: Annotated[int, Field(ge=1)] = 10_000
    """Newest dead letters kept on ``{prefix}:render:dead`` (the ledger keeps all)."""
    retention: Duration = timedelta(days=30)
    """Ledger history and finished jobs older than this are deleted."""
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
        if v.startswith("http:"):
            url = v.removeprefix("http:")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{v!r}: use http:http(s)://HOST/{{z}}/{{x}}/{{y}}.png")
            check_template(url, "the http renderer's URL")
        elif v.startswith("command:"):
            try:
                argv = shlex.split(v.removeprefix("command:"))
            except ValueError as e:
                raise ValueError(f"{v!r}: the command does not parse ({e})") from None
            if not argv:
                raise ValueError(f"{v!r}: no program given (command:PROGRAM ARGS...)")
            for arg in argv:
                check_template(arg, "a command argument")
        elif v != "builtin":
            raise ValueError(f"{v!r}: use builtin, command:PROGRAM ARGS or http:URL")
        return v

    @field_validator("cache_key")
    @classmethod
    def _check_cache_key(cls, v: str | None) -> str | None:
        return check_template(v, "the cache key") if v else None

    @field_validator("sla")
    @classmethod
    def _check_sla(cls, v: timedelta, info: ValidationInfo) -> timedelta:
        render = max(info.data.get("timeout", timedelta(0)), info.data.get("delay", timedelta(0)))
        purge = info.data.get("purge_timeout", timedelta(0))
        need = render + purge + max(timedelta(seconds=10), render / 4)
        if v < need:
            raise ValueError(
                f"{v.total_seconds():g}s is too short: a job still rendering at its SLA is"
                f" reclaimed and rendered twice; with timeout/delay {render.total_seconds():g}s"
                f" and purge_timeout {purge.total_seconds():g}s it must be at least"
                f" {need.total_seconds():g}s (or lower the timeout)"
            )
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
        return check_template(v, "the purge URL")

    @field_validator("store")
    @classmethod
    def _check_store(cls, v: str) -> str:
        kind, _, path = v.partition(":")
        if kind not in ("dir", "mbtiles") or not path:
            raise ValueError(f"{v!r}: use dir:PATH or mbtiles:PATH")
        return v
