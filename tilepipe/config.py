"""How every tilepipe service is configured: one settings base, shared blocks, URI parsing.

Each service's settings is a pydantic-settings model built once at start and passed down
(:class:`dataflows.settings.Settings`, :class:`ingress.settings.IngressSettings`,
:class:`render.settings.RenderSettings`, :class:`gateway.settings.GatewaySettings`). They
all derive from :class:`TilepipeSettings`, so they read the environment (and a ``.env``
file) the same way, and a command's flags go on top through :func:`settings_from_flags`,
which takes every flag whose name is a field: there is no list of flags to keep in step.

A setting more than one service reads is declared once, in a block here, under the same
``TILEPIPE_<NAME>`` variable in every service, so one ConfigMap and one Secret serve them
all: :class:`SharedSettings` (log level, Kafka client settings) and
:class:`ValidationSettings` (the record limits, geometry rules and HMAC keys that the ingress
and the dataflow must agree on, since the ingress rejects exactly what the dataflow would
dead-letter).

Durations accept ``250ms``, ``2s``, ``5m``, ``1h`` or plain seconds.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tilepipe.errors import ConfigError
from tilepipe.signing import check_strength, parse_secrets
from tilepipe.wire import GeometryRules

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> object:
    """``"250ms"``, ``"2s"``, ``"5m"``, ``"1h"`` or a number of seconds → :class:`timedelta`."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{value[:32]!r} is not a duration (examples: 250ms, 2s, 5m, 1h)")
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class TilepipeSettings(BaseSettings):
    """The base of every service's settings: environment, ``.env`` file, validated defaults.

    A subclass sets its ``env_prefix`` (``TILEPIPE_``, ``TILEPIPE_INGRESS_``, …); fields of
    the shared blocks carry their own variable names, which the prefix does not change.
    ``populate_by_name`` keeps every field settable by its name as a keyword argument.
    """

    model_config = SettingsConfigDict(
        env_prefix="TILEPIPE_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        info = cls.model_fields[field]
        if isinstance(info.validation_alias, str):
            return info.validation_alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


S = TypeVar("S", bound=TilepipeSettings)


def settings_from_flags(cls: type[S], args: argparse.Namespace | None = None) -> S:
    """``cls`` from the environment, with every flag of ``args`` that names a field on top.

    A flag left unset (``None``) does not override. A bad value is one :class:`ConfigError`
    line naming the setting, its flag and its variable, with pydantic's message only: the
    input itself may be a secret, so it is never echoed.
    """
    given = vars(args) if args is not None else {}
    overrides = {k: v for k, v in given.items() if k in cls.model_fields and v is not None}
    try:
        return cls(**overrides)
    except ValidationError as e:
        where, msg = first_error(e)
        field = next((f for f in cls.model_fields if cls.env_name(f) == where), where)
        hint = cls.env_name(field) if field in cls.model_fields else f"TILEPIPE_{field.upper()}"
        if field in given:
            hint = f"flag --{field.replace('_', '-')} or {hint}"
        raise ConfigError(f"invalid setting {field}: {msg} ({hint})") from None


class SharedSettings(TilepipeSettings):
    """What every service reads under the same variable: one ConfigMap serves them all."""

    log_level: str = Field(default="INFO", validation_alias="TILEPIPE_LOG_LEVEL")
    """``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``; logs are JSON lines on stderr."""
    kafka_config: dict[str, str] = Field(default={}, validation_alias="TILEPIPE_KAFKA_CONFIG")
    """Extra librdkafka settings for every Kafka client, as JSON (SASL, SSL, …)."""


class RecordLimits(SharedSettings):
    """The checks a record must pass, which the ingress and the dataflow must agree on.

    The ingress rejects exactly what the dataflow would dead-letter, so both read these
    from the same variables (and one Secret holds the HMAC keys of both).
    """

    max_record_bytes: Annotated[int, Field(ge=64)] = Field(
        default=1 << 20, validation_alias="TILEPIPE_MAX_RECORD_BYTES"
    )
    """Larger records are dead-lettered (``too_large``) without being read whole."""
    max_future: Duration = Field(
        default=timedelta(minutes=5), validation_alias="TILEPIPE_MAX_FUTURE"
    )
    """Events dated further ahead than this are dead-lettered (``future_event``)."""
    max_vertices: Annotated[int, Field(ge=1)] = Field(
        default=100_000, validation_alias="TILEPIPE_MAX_VERTICES"
    )
    """A geometry with more vertices is dead-lettered (``too_many_vertices``)."""
    geometry_repair: bool = Field(default=True, validation_alias="TILEPIPE_GEOMETRY_REPAIR")
    """Repair invalid geometries with make_valid, within its budget (else dead-letter them)."""
    max_zoom: Annotated[int, Field(ge=0, le=30)] = Field(
        default=20, validation_alias="TILEPIPE_MAX_ZOOM"
    )
    """The deepest zoom an event may ask for."""
    hmac_secrets: SecretStr | None = Field(default=None, validation_alias="TILEPIPE_HMAC_SECRETS")
    """``keyid:secret[,keyid:secret]``, each at least 32 bytes: the active keys. The dataflow
    then requires a valid signature on every record; the ingress on every request."""

    @field_validator("hmac_secrets")
    @classmethod
    def _check_secrets(cls, v: SecretStr | None) -> SecretStr | None:
        return strong_secrets(v, "TILEPIPE_HMAC_SECRETS")

    def geometry_rules(self) -> GeometryRules:
        return GeometryRules(
            max_vertices=self.max_vertices, repair=self.geometry_repair, max_zoom=self.max_zoom
        )

    @property
    def max_future_ms(self) -> int:
        return int(self.max_future.total_seconds() * 1000)


def strong_secrets(value: SecretStr | None, setting: str) -> SecretStr | None:
    """``value`` if it parses as ``keyid:secret,…`` of strong keys, else ``ValueError``:
    a mistake, a placeholder or a short key stops a service before it starts."""
    if value is not None and value.get_secret_value().strip():
        check_strength(parse_secrets(value.get_secret_value()), setting)
    return value


def secrets_from(value: SecretStr | None) -> dict[str, bytes] | None:
    """``keyid:secret[,keyid:secret]`` as secrets by key id; ``None`` when unset or blank."""
    if value is None or not value.get_secret_value().strip():
        return None
    return parse_secrets(value.get_secret_value())


def require_scheme(name: str, uri: str, allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``uri``'s scheme is one of ``allowed``."""
    allowed = tuple(allowed)
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme not in allowed:
        raise ValueError(
            f"{name} {uri[:64]!r}: unknown scheme {scheme[:16]!r}; use one of "
            + ", ".join(f"{s}:" for s in allowed)
        )


def kafka_uri(uri: str) -> tuple[list[str], str]:
    """``kafka://h1:p1,h2:p2/topic`` → (brokers, topic)."""
    parts = urlsplit(uri)
    topic = parts.path.lstrip("/")
    if not parts.netloc or not topic or "/" in topic:
        raise ValueError(f"{uri!r}: expected kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    return parts.netloc.split(","), topic


#: The query options tilepipe reads from a ``redis://`` URI; the rest go to redis-py.
REDIS_OPTIONS = frozenset({"channel", "prefix", "mode"})


def redis_uri(uri: str) -> tuple[str, dict[str, str]]:
    """``redis://host:port/db?channel=x`` → (connection URL without our options, options)."""
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    options = {k: v for k, v in query.items() if k in REDIS_OPTIONS}
    rest = "&".join(f"{k}={v}" for k, v in query.items() if k not in REDIS_OPTIONS)
    url = parts._replace(query=rest).geturl()
    return url, options


def redact_url(url: str) -> str:
    """``url`` without its user and password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def first_error(e: ValidationError) -> tuple[str, str]:
    """(where, message) of a validation error's first problem, without the input."""
    first = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return where, str(first["msg"]).removeprefix("Value error, ")


__all__ = [
    "REDIS_OPTIONS",
    "Duration",
    "RecordLimits",
    "SharedSettings",
    "TilepipeSettings",
    "first_error",
    "kafka_uri",
    "parse_duration",
    "redact_url",
    "redis_uri",
    "require_scheme",
    "secrets_from",
    "settings_from_flags",
    "strong_secrets",
]
