"""Producing to the raw topic from asyncio, answered only once the broker has acked.

confluent-kafka's ``Producer`` is asynchronous already: ``produce()`` only
queues a record, librdkafka batches queued records into broker requests
(``linger.ms``), and a delivery report comes back through ``poll()``. A
thread of ours calls ``poll()`` and hands each report to the event loop,
where it settles the future the request is awaiting. So a request makes no
broker round trip of its own: it queues its records and awaits their
reports, and concurrent requests share broker requests.

The producer is idempotent with ``acks=all``: an acknowledged record is on
every in-sync replica, and librdkafka's own retries never write it twice.
A record not acknowledged within ``produce_timeout`` is reported as failed
(``message.timeout.ms``), and the request answers 503. A producer that has
acknowledged nothing for longer than that when a delivery fails, or that hit
a fatal error, is replaced by a fresh one on the next request: a broker that
came back without the producer's idempotence state (storage lost) answers
"unknown producer id" to the old one forever, while librdkafka keeps bumping
the epoch locally. Records still queued in the old producer are failed (503,
the client repeats them), never silently dropped; one the broker did write
after all becomes a duplicate, which the dataflow drops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tilepipe.connect import kafka_config

log = logging.getLogger("tilepipe.ingress.producer")
# librdkafka logs through Python logging (JSON lines), not straight to stderr.


def _settle_all(batch: list[tuple[asyncio.Future[str | None], str | None]]) -> None:
    for fut, err in batch:
        if not fut.done():
            fut.set_result(err)


class OutRecord(NamedTuple):
    """One record for the raw topic."""

    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    timestamp_ms: int


class AsyncProducer:
    """Queue records to one topic and await the broker's acknowledgement of each."""

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        *,
        extra_config: Mapping[str, str] | None = None,
        produce_timeout_s: float = 5.0,
        linger_ms: float = 2.0,
    ) -> None:
        self.topic = topic
        self.produce_timeout_s = produce_timeout_s
        self._config = kafka_config(
            brokers,
            extra_config,
            {
                "acks": "all",
                "enable.idempotence": "true",
                "linger.ms": str(linger_ms),
                "message.timeout.ms": str(max(1, int(produce_timeout_s * 1000))),
                # Fail fast while the broker is away instead of piling up records.
                "queue.buffering.max.messages": "200000",
                "reconnect.backoff.max.ms": "1000",
            },
            error_cb=self._on_error,
        )
        self._producer = Producer(self._config)
        self._healthy_at = time.monotonic()  # creation, or the last acknowledgement
        self._replace_because: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # (future, error) of delivery reports not yet handed to the loop; appended by
        # librdkafka callbacks on whichever thread polls.
        self._reports: deque[tuple[asyncio.Future[str | None], str | None]] = deque()

    # -- lifecycle ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._serve_reports, name="kafka-poll", daemon=True)
        self._thread.start()

    def warm_up(self, timeout_s: float = 10.0) -> None:
        """Fetch the topic's metadata now, so the first request does not wait for it."""
        try:
            self._producer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as e:
            log.warning("could not fetch metadata of %r at startup: %s", self.topic, e)

    @property
    def alive(self) -> bool:
        """Whether delivery reports are being served (the poll thread runs)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for queued records; returns how many were left."""
        left = self._producer.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return left

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
            except Exception:  # a callback of ours misbehaved: keep serving the others
                log.exception("error while serving Kafka delivery reports")
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand the reports gathered by one ``poll()`` to the event loop in one wake-up."""
        reports = self._reports
        if not reports or self._loop is None:
            return
        batch = []
        while reports:
            batch.append(reports.popleft())
        self._loop.call_soon_threadsafe(_settle_all, batch)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._replace_because = f"fatal error: {err}"
            log.error("Kafka producer fatal error; it will be replaced: %s", err)
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("no Kafka broker is reachable: %s", err)

    def _delivered(self, err: KafkaError | None) -> None:
        """Every delivery report passes here (on the poll thread)."""
        now = time.monotonic()
        if err is None:
            self._healthy_at = now
        elif now - self._healthy_at > self.produce_timeout_s:
            self._replace_because = f"no acknowledgement for {now - self._healthy_at:.0f} s: {err}"

    def _replace_if_needed(self) -> None:
        because = self._replace_because
        if because is None:
            return
        old = self._producer
        self._producer = Producer(self._config)
        self._healthy_at = time.monotonic()
        self._replace_because = None
        log.warning("replaced the Kafka producer (%s)", because)

        def drain() -> None:  # fail whatever the old one still holds, then let it go
            old.purge()
            deadline = time.monotonic() + self.produce_timeout_s + 5
            while len(old) and time.monotonic() < deadline:
                old.poll(0.1)
                self._dispatch()
            self._dispatch()

        threading.Thread(target=drain, name="kafka-drain", daemon=True).start()

    # -- producing ------------------------------------------------------------------

    async def send(self, records: Sequence[OutRecord]) -> list[str | None]:
        """Produce ``records``; for each, ``None`` once acknowledged or why it was not.

        Never raises for a broker problem: every record gets its own answer.
        """
        loop = asyncio.get_running_loop()
        self._replace_if_needed()
        futures: list[asyncio.Future[str | None]] = []
        producer = self._producer
        reports = self._reports

        for rec in records:
            fut: asyncio.Future[str | None] = loop.create_future()
            futures.append(fut)

            def report(err: KafkaError | None, _msg: Message, fut: Any = fut) -> None:
                self._delivered(err)
                reports.append((fut, None if err is None else str(err)))

            try:
                producer.produce(
                    self.topic,
                    value=rec.value,
                    key=rec.key,
                    headers=rec.headers,
                    timestamp=rec.timestamp_ms,
                    on_delivery=report,
                )
            except BufferError:
                fut.set_result("the producer's local queue is full")
            except KafkaException as e:  # e.g. fatal: nothing was queued
                fut.set_result(str(e.args[0]) if e.args else repr(e))
        if not futures:
            return []
        # Reports come within message.timeout.ms; the margin covers librdkafka's timeout
        # scan. Past it we answer anyway, and a late acknowledgement costs one duplicate.
        await asyncio.wait(futures, timeout=self.produce_timeout_s + 5)
        return [f.result() if f.done() else "no delivery report in time" for f in futures]
