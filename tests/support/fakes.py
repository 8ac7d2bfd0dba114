"""Stand-ins for the parts a test does not run: the ingress's Kafka producer, a DLQ partition.

Unit tests only drive the code in front of them with these; integration tests
keep the real broker, Redis and PostgreSQL (tests/support/services.py).
``SECRETS`` are the HMAC keys of the in-process ingress tests (``Ingress`` takes
them as parsed; only the command line insists on 32 bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ingress.app import Ingress
from ingress.producer import OutRecord
from ingress.settings import IngressSettings

SECRETS = {"k2026": b"old-secret", "k2027": b"new-secret"}


class FakeProducer:
    """Acknowledges everything, or fails what ``fail`` says; keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[OutRecord] = []
        self.fail: str | None = None
        self.delay = 0.0
        self.alive = True

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def warm_up(self, timeout_s: float) -> None:
        pass

    def close(self, timeout_s: float) -> int:
        return 0

    async def send(self, records: Sequence[OutRecord]) -> list[str | None]:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return [self.fail] * len(records)
        self.sent.extend(records)
        return [None] * len(records)


class Letters:
    """A DLQ partition that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def write_batch(self, items: list[Any]) -> None:
        self.items.extend(items)


def make_ingress(producer: FakeProducer, **settings: Any) -> Ingress:
    """An in-process ingress on ``producer`` with :data:`SECRETS` and these settings."""
    return Ingress(IngressSettings(sink="kafka://h:9092/raw", **settings), SECRETS, producer)
