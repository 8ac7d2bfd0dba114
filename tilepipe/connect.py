"""Clients of Kafka and Redis as every tilepipe service makes them, and the start-up checks.

One place decides how a client is configured: the user's ``TILEPIPE_KAFKA_CONFIG`` (SASL,
SSL, …) goes on top of tilepipe's defaults, and librdkafka logs through the
``tilepipe.kafka`` logger (JSON lines like every other log line). :func:`check_kafka` and
:func:`check_redis` turn the usual mistakes (a broker or Redis that does not answer, a
missing topic) into one :class:`~tilepipe.errors.ConfigError` line before a service starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from tilepipe.config import redact_url
from tilepipe.errors import ConfigError

KAFKA_LOGGER = logging.getLogger("tilepipe.kafka")


def kafka_config(
    brokers: Sequence[str],
    extra: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    **callbacks: Any,
) -> dict[str, Any]:
    """A librdkafka configuration: tilepipe's ``defaults`` for this client, the user's
    ``extra`` on top, then the ``callbacks`` (``error_cb=…``) and the logger, which the
    client's own code depends on and the user cannot replace.
    """
    return {
        "bootstrap.servers": ",".join(brokers),
        **(defaults or {}),
        **(extra or {}),
        **callbacks,
        "logger": KAFKA_LOGGER,
    }


def check_kafka(
    name: str, brokers: Sequence[str], topic: str, extra: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`ConfigError` unless the brokers answer and ``topic`` exists there."""
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("tilepipe.kafka.preflight")
    quiet.propagate = False  # the one-line error below says it all
    quiet.addHandler(logging.NullHandler())
    config = kafka_config(brokers, extra)
    config["logger"] = quiet
    where = ",".join(brokers)
    try:
        meta = AdminClient(config).list_topics(timeout=5)
    except Exception as e:
        raise ConfigError(
            f"{name}: Kafka at {where} did not answer ({e}); is the broker running and the"
            " address right?"
        ) from None
    if topic not in meta.topics:
        raise ConfigError(
            f"{name}: topic {topic!r} does not exist on {where}; create it first"
            " (its partition count is the job's parallelism)"
        )


def redis_client(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A Redis client with bounded connect and command timeouts (redis-py has none)."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def check_redis(url: str, what: str = "sink") -> None:
    """Raise :class:`ConfigError` unless Redis at ``url`` answers a PING."""
    try:
        redis_client(url, timeout_s=3).ping()
    except redis.RedisError as e:
        raise ConfigError(
            f"{what}: Redis at {redact_url(url)} did not answer ({e}); is it running?"
        ) from None
