"""The dataflow's settings, in one object built once and passed down.

Every field can be set as a ``TILEPIPE_<NAME>`` environment variable (or in a
``.env`` file); ``tilepipe run`` flags override them. Durations accept
``250ms``, ``2s``, ``5m``, ``1h`` or plain seconds. Connectors are URIs:

- source: ``file:PATH`` (``-`` = stdin) | ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``
  | ``generator:?events=N&tiles=N&...``
- sink: ``file:PATH`` (``-`` = stdout) | ``redis[s]://HOST:PORT/DB?channel=NAME``
- dlq: ``file:PATH`` | ``kafka://HOST:PORT/TOPIC``
- render_queue: ``redis[s]://HOST:PORT/DB?prefix=NAME``: when set, updates become render
  jobs on that queue instead of being broadcast; render workers broadcast after the commit
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from tilepipe.config import (
    Duration,
    RecordLimits,
    redis_uri,
    require_scheme,
    secrets_from,
    strong_secrets,
)
from tilepipe.store import DEFAULT_PREFIX, PUBLISH_MODES


class Settings(RecordLimits):
    """The dataflow's settings: ``TILEPIPE_<NAME>``; the record limits, HMAC keys, log
    level and Kafka client settings come from :class:`~tilepipe.config.RecordLimits`."""

    model_config = SettingsConfigDict(env_prefix="TILEPIPE_")

    # Connectors
    source: str = "generator:"
    sink: str = "file:-"
    dlq: str = "file:/dev/stderr"
    kafka_start: Literal["earliest", "latest"] = "earliest"
    """Where a Kafka source starts on its first run (later runs resume from recovery)."""
    kafka_exit_at_end: bool = False
    """Stop when every partition reaches the end of its log (a backfill), instead of tailing."""
    kafka_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    kafka_lag_interval: Duration = timedelta(seconds=5)
    """How often each partition's log-end offset is asked of the broker for the lag gauge."""

    # Execution
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    """Worker processes (not threads) on this machine."""
    process_id: int | None = None
    addresses: str | None = None
    """``host:port;host:port``: the cluster's processes, for one process of many."""
    cluster_replicas: Annotated[int, Field(ge=1, le=256)] | None = None
    """A StatefulSet's replicas: with it, this process is one of a cluster of that size, its
    process id is its pod's ordinal and its peers are ``cluster_address`` for every ordinal."""
    cluster_service: str = "tilepipe-peers"
    """The headless Service that gives each pod of the StatefulSet a DNS name."""
    cluster_port: Annotated[int, Field(ge=1, le=65535)] = 2101
    """The port each process of a StatefulSet cluster listens on for its peers."""
    cluster_address: str = "{pod}.{service}:{port}"
    """A peer's address; ``{pod}``, ``{name}``, ``{ordinal}``, ``{service}``, ``{port}``."""
    pod_name: str | None = None
    """This pod's name (Downward API ``metadata.name``); the hostname when unset."""
    recovery_dir: Path | None = None
    recovery_partitions: Annotated[int, Field(ge=1)] = 4
    recovery_layout: Literal["shared", "per_pod"] = "shared"
    """``shared``: every process sees one recovery directory (one machine, or ReadWriteMany);
    ``per_pod``: each pod has its own volume and process 0's holds every partition."""
    snapshot_interval: Duration = timedelta(seconds=5)
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    progress_interval: Duration = timedelta(seconds=10)
    """How often a progress line (rates, lag, tiles tracked) is logged."""

    # Validation
    dlq_raw_limit: Annotated[int, Field(ge=64)] = 64 * 1024
    hmac_verify_secrets: SecretStr | None = None
    """Retired keys records on the topic may still be signed with (``keyid:secret,…``):
    accepted when verifying, never used to sign. Keep one for the topic's retention plus
    the longest lag or rewind after it leaves TILEPIPE_HMAC_SECRETS."""
    require_signatures: bool = False
    """Refuse to start without TILEPIPE_HMAC_SECRETS, so a missing Secret cannot turn
    verification off silently (on in k8s/configmap.yaml)."""
    signature_max_age: Duration = timedelta(days=7)
    """A record signed longer than this before it is read is dead-lettered as
    ``bad_signature`` (a replay); keep it at or above the raw topic's retention."""

    # Fan-out (features and telemetry)
    feature_minzoom: Annotated[int, Field(ge=0, le=30)] = 0
    """Zoom range for features that do not say theirs."""
    feature_maxzoom: Annotated[int, Field(ge=0, le=30)] = 14
    max_tiles_per_event: Annotated[int, Field(ge=1)] = 10_000
    """Tile budget of one event; beyond it the cover falls back to a coarser zoom."""
    cover_deadline: Duration = timedelta(milliseconds=250)
    """Time budget of one exact cover; beyond it the bounding box is used."""
    diff_expire: bool = True
    """With previous_geometry, dirty only where old and new differ."""
    h3_resolution: Annotated[int, Field(ge=0, le=15)] = 9
    telemetry_zooms: Annotated[list[int], NoDecode] = [10, 12, 14]
    """Zooms whose tiles a reading dirties: ``10,12,14``."""

    # Ordering and state
    allowed_lateness: Duration = timedelta(seconds=1)
    max_delay: Duration = timedelta(milliseconds=250)
    state_ttl: Duration = timedelta(minutes=5)
    max_recent_ids: Annotated[int, Field(ge=1)] = 64
    max_objects_per_tile: Annotated[int, Field(ge=1)] = 256

    # Broadcast
    redis_prefix: str = DEFAULT_PREFIX
    publish_mode: Literal["publish", "spublish"] = "publish"
    tile_ttl: Duration | None = None
    """Expire a stored tile (its versions and catch-up ``msg``) this long after its last
    publish, for tiles at ``tile_ttl_minzoom`` and deeper; unset: tiles never expire."""
    tile_ttl_minzoom: Annotated[int, Field(ge=0, le=30)] = 15

    # Rendering
    render_queue: str | None = None
    """``redis[s]://HOST:PORT/DB[?prefix=NAME]``: enqueue each update as a render job there
    instead of broadcasting it; ``tilepipe render-worker`` broadcasts after the commit."""
    render_deadline: Duration | None = None
    """A render job not started within this long after enqueueing degrades to invalidate-only."""

    @field_validator("telemetry_zooms", mode="before")
    @classmethod
    def _zoom_list(cls, v: object) -> object:
        if isinstance(v, str):
            try:
                return [int(p) for p in v.replace(" ", "").split(",") if p]
            except ValueError:
                raise ValueError(f"{v!r} is not a comma-separated list of zooms") from None
        return v

    @field_validator("telemetry_zooms")
    @classmethod
    def _zoom_range(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 <= z <= 30 for z in v):
            raise ValueError("telemetry zooms must be a non-empty list of zooms within 0..30")
        return sorted(set(v))

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str) -> str:
        require_scheme("source", v, ("file", "kafka", "generator"))
        return v

    @field_validator("sink")
    @classmethod
    def _check_sink(cls, v: str) -> str:
        require_scheme("sink", v, ("file", "redis", "rediss"))
        if not v.startswith("file:"):
            _check_mode(v)
        return v

    @field_validator("render_queue")
    @classmethod
    def _check_render_queue(cls, v: str | None) -> str | None:
        if v is not None and v.strip() == "":
            return None
        if v is not None:
            require_scheme("render_queue", v, ("redis", "rediss"))
        return v

    @field_validator("dlq")
    @classmethod
    def _check_dlq(cls, v: str) -> str:
        require_scheme("dlq", v, ("file", "kafka"))
        return v

    @field_validator("hmac_verify_secrets")
    @classmethod
    def _check_verify_secrets(cls, v: SecretStr | None) -> SecretStr | None:
        return strong_secrets(v, "TILEPIPE_HMAC_VERIFY_SECRETS")

    @field_validator("require_signatures")
    @classmethod
    def _check_required(cls, v: bool, info: ValidationInfo) -> bool:
        if v and secrets_from(info.data.get("hmac_secrets")) is None:
            raise ValueError(
                "signatures are required but TILEPIPE_HMAC_SECRETS is unset (is the"
                " tilepipe-hmac Secret there?); set the keys, or TILEPIPE_REQUIRE_SIGNATURES=false"
                " to run unauthenticated"
            )
        return v

    def secrets_by_key(self) -> dict[str, bytes] | None:
        """The keys records are verified with: the active ones, then the verify-only ones."""
        active = secrets_from(self.hmac_secrets)
        if active is None:
            return None
        retired = secrets_from(self.hmac_verify_secrets) or {}
        for kid, secret in retired.items():
            if active.get(kid, secret) != secret:
                raise ValueError(f"HMAC key id {kid!r} has two different secrets")
        return {**retired, **active}


def _check_mode(uri: str) -> None:
    mode = redis_uri(uri)[1].get("mode")
    if mode is not None and mode not in PUBLISH_MODES:
        raise ValueError(
            f"sink ?mode={mode[:32]!r} is not publish or spublish (the Redis command each"
            " update is broadcast with); fix the sink URL"
        )
