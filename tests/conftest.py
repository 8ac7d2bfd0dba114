"""Fixtures for the real services; see tests/support/services.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.services import KafkaBroker, start_kafka, start_redis


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    with start_kafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with start_redis() as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def channel() -> str:
    """Pub/sub ignores the database number: every test gets its own channel."""
    return f"tilepipe-test-{uuid.uuid4().hex[:8]}"
