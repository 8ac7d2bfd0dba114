"""The ingress's settings, in one object built once and passed down.

Its own settings are ``TILEPIPE_INGRESS_<NAME>`` environment variables;
the ones it shares with the dataflow keep the dataflow's names, so one
ConfigMap and one Secret serve both: ``TILEPIPE_HMAC_SECRETS`` (or
``TILEPIPE_HMAC_SECRETS_FILE``, a mounted Secret), ``TILEPIPE_KAFKA_CONFIG``,
``TILEPIPE_MAX_RECORD_BYTES``, ``TILEPIPE_MAX_FUTURE``, the geometry limits and
``TILEPIPE_LOG_LEVEL``. ``tilepipe ingress`` flags override them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from tilepipe.config import Duration, RecordLimits, kafka_uri, secrets_from
from tilepipe.serving import Listen
from tilepipe.signing import parse_secrets
from tilepipe.store import DEFAULT_PREFIX


class IngressSettings(RecordLimits):
    """``TILEPIPE_INGRESS_<NAME>``; the record limits, HMAC keys, log level and Kafka client
    settings are the dataflow's, from :class:`~tilepipe.config.RecordLimits`."""

    model_config = SettingsConfigDict(env_prefix="TILEPIPE_INGRESS_")

    listen: Listen = "127.0.0.1:8080"
    """``HOST:PORT`` to serve HTTP on (``0.0.0.0:8080`` in a container, ``[::]:8080`` for IPv6)."""
    sink: str | None = None
    """``kafka://HOST:PORT[,HOST:PORT]/TOPIC``: the raw topic the dataflow reads."""

    # Authentication (the keys themselves: TILEPIPE_HMAC_SECRETS)
    hmac_secrets_file: Path | None = Field(
        default=None, validation_alias="TILEPIPE_HMAC_SECRETS_FILE"
    )
    """A file holding the same (commas or one per line), e.g. a mounted Kubernetes Secret."""
    signature_tolerance: Duration = timedelta(minutes=5)
    """How far ``X-Tilepipe-Timestamp`` may be from this server's clock (replay window)."""

    # Limits and validation (the same checks as the dataflow's)
    max_request_bytes: Annotated[int, Field(ge=1024)] = 8 << 20
    max_batch_records: Annotated[int, Field(ge=1)] = 10_000

    # Idempotency
    dedup_window: Duration = timedelta(minutes=10)
    """A repeated ``event_id`` within this long is answered 202 and not produced again."""
    dedup_max_entries: Annotated[int, Field(ge=1)] = 200_000
    """Bound on remembered ids (about 150 bytes each); the oldest go first when full."""

    # Kafka
    produce_timeout: Duration = timedelta(seconds=5)
    """How long a request waits for the broker's acknowledgement before answering 503."""
    linger: Duration = timedelta(milliseconds=2)
    """How long the producer waits to batch concurrent requests into one broker request."""
    retry_after: Annotated[int, Field(ge=1, le=3600)] = 5
    """Seconds in ``Retry-After`` when the broker is unavailable."""

    # The job API: on when the render ledger is set; the render workers' own variables
    render_ledger: SecretStr | None = Field(default=None, validation_alias="TILEPIPE_RENDER_LEDGER")
    """PostgreSQL DSN of the render job ledger; enables ``/v1/jobs``."""
    render_redis: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias="TILEPIPE_RENDER_REDIS"
    )
    """The render queue's Redis (the render workers' ``TILEPIPE_RENDER_REDIS``)."""
    render_prefix: str = Field(default=DEFAULT_PREFIX, validation_alias="TILEPIPE_RENDER_PREFIX")
    jobs_max_tiles: Annotated[int, Field(ge=1)] = 100_000
    """Tile budget of one region job; over it the cover falls back to a coarser zoom."""

    # Serving
    tls_certfile: Path | None = None
    """Serve HTTPS with this certificate chain (PEM) when running bare; in Kubernetes TLS
    ends at the edge and the pod serves plain HTTP."""
    tls_keyfile: Path | None = None
    tls_client_ca: Path | None = None
    """Require client certificates signed by this CA (mutual TLS)."""
    max_connections: Annotated[int, Field(ge=1)] = 1024
    """Answer 503 to connections beyond this many at once (uvicorn's limit_concurrency).
    Each costs a file descriptor and uvicorn's read buffer (64 KiB at most before it stops
    reading), so 1024 stay well inside the pod's 512 MiB; raise it with the fd limit."""
    body_timeout: Duration = timedelta(seconds=10)
    """The whole body must arrive within this long of the headers, else 408: a client
    trickling a large body cannot hold a connection and its buffer indefinitely."""
    max_unauthenticated_bytes: Annotated[int, Field(ge=1024)] = 64 << 20
    """Bytes all requests together may have buffered before their signature is checked;
    beyond it new body bytes are refused with 503 + Retry-After, so unsigned senders
    cannot fill the memory (a signed request's bytes stop counting once verified)."""
    metrics_listen: Listen | None = None
    """``HOST:PORT`` to serve ``/metrics`` on instead of ``listen`` (with the probes too), so
    a NetworkPolicy can admit Prometheus to the metrics and producers to the API apart."""
    shutdown_grace: Duration = timedelta(seconds=20)
    """On SIGTERM, how long in-flight requests get to finish (keep below the pod's grace)."""

    @field_validator("sink")
    @classmethod
    def _check_sink(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.startswith("kafka://"):
                raise ValueError(f"{v!r}: the ingress writes to Kafka: kafka://HOST:PORT/TOPIC")
            kafka_uri(v)
        return v

    @model_validator(mode="after")
    def _check_tls(self) -> IngressSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("TLS needs both tls_certfile and tls_keyfile")
        if self.tls_client_ca is not None and self.tls_certfile is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_certfile and tls_keyfile")
        return self

    def secrets_by_key(self) -> dict[str, bytes]:
        """The active secrets: the variable's and the file's together (file read now)."""
        out = dict(secrets_from(self.hmac_secrets) or {})
        if self.hmac_secrets_file is not None:
            try:
                text = self.hmac_secrets_file.read_text()
            except OSError as e:
                raise ValueError(f"cannot read hmac_secrets_file: {e.strerror}") from None
            for kid, secret in parse_secrets(text).items():
                if kid in out and out[kid] != secret:
                    raise ValueError(f"HMAC key id {kid!r} has two different secrets")
                out[kid] = secret
        return out
