"""Dead letters onto a Kafka topic, acknowledged before the batch completes.

Each batch is produced with ``acks=all`` and flushed; a record the broker did
not acknowledge is produced again (with back-off) until it is, so a DLQ
outage holds the job back instead of losing bad records.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from sinks.file import record_dead_letters
from sinks.retry import RetryPolicy, write_with_retry
from tilepipe.records import DeadLetter

log = logging.getLogger(__name__)
# librdkafka logs through Python logging (JSON lines), not straight to stderr.
KAFKA_LOGGER = logging.getLogger("tilepipe.kafka")


class DeliveryFailed(Exception):
    """Some records of a batch were not acknowledged by the broker."""


class KafkaProducerWriter:
    """Produce ``(key, value)`` pairs to one topic; returns once all are acked."""

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        extra_config: Mapping[str, str] | None = None,
        policy: RetryPolicy | None = None,
        flush_timeout_s: float = 10.0,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(brokers),
            "acks": "all",
            "enable.idempotence": "true",
            "linger.ms": "5",
            "message.timeout.ms": str(int(flush_timeout_s * 1000)),
            "logger": KAFKA_LOGGER,
        }
        config.update(extra_config or {})
        self.topic = topic
        self.policy = policy or RetryPolicy()
        self.flush_timeout_s = flush_timeout_s
        self._config = config
        self.producer = Producer(config)
        self._broken = False

    def _renew_if_broken(self) -> None:
        """Replace a producer that hit a fatal error: librdkafka will not send with it again.

        An idempotent producer's fatal errors (fenced, out-of-order sequence, e.g.
        after messages timed out while the broker hung) are final for that
        instance; a new one gets a new producer id and carries on.
        """
        if not self._broken:
            return
        log.warning("Kafka producer for %r hit a fatal error; starting a new one", self.topic)
        self.producer = Producer(self._config)
        self._broken = False

    def write(self, records: Sequence[tuple[bytes | None, bytes]], sink: str = "kafka") -> None:
        todo = list(records)

        def attempt() -> None:
            nonlocal todo
            self._renew_if_broken()
            failed: list[tuple[bytes | None, bytes]] = []
            errors: list[str] = []

            def report(err: Any, msg: Any, rec: tuple[bytes | None, bytes]) -> None:
                if err is not None:
                    failed.append(rec)
                    errors.append(str(err))
                    if err.fatal() or err.code() == KafkaError.PRODUCER_FENCED:
                        self._broken = True

            for rec in todo:
                while True:
                    try:
                        self.producer.produce(
                            self.topic,
                            key=rec[0],
                            value=rec[1],
                            on_delivery=functools.partial(report, rec=rec),
                        )
                        break
                    except BufferError:
                        self.producer.poll(0.1)
            # Wait for every record's verdict before deciding what to retry: a record
            # still queued when a flush times out reports later, and a failure reported
            # after this attempt ended would be lost. message.timeout.ms bounds the wait.
            try:
                while self.producer.flush(self.flush_timeout_s):
                    pass
            except KafkaException as e:  # a fatal error surfaced by the flush itself
                self._broken = self._broken or e.args[0].fatal()
                raise
            if failed:
                todo = failed
                raise DeliveryFailed(
                    f"{len(failed)} of the batch not acknowledged by topic {self.topic!r}"
                    + (f": {errors[0]}" if errors else "")
                )

        write_with_retry(sink, attempt, self.policy, (DeliveryFailed, KafkaException))

    def close(self) -> None:
        self.producer.flush(self.flush_timeout_s)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, writer: KafkaProducerWriter, raw_limit: int) -> None:
        self._w = writer
        self._raw_limit = raw_limit

    def write_batch(self, items: list[DeadLetter]) -> None:
        records = [
            (None, json.dumps(d.to_json_dict(self._raw_limit), separators=(",", ":")).encode())
            for d in items
        ]
        self._w.write(records, sink="dlq")
        record_dead_letters(items)

    def close(self) -> None:
        self._w.close()


class KafkaDeadLetterSink(DynamicSink[DeadLetter]):
    def __init__(
        self,
        brokers: list[str],
        topic: str,
        raw_limit: int,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        self.brokers = brokers
        self.topic = topic
        self.raw_limit = raw_limit
        self.extra_config = dict(extra_config or {})

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        writer = KafkaProducerWriter(self.brokers, self.topic, self.extra_config)
        return _DeadLetterPartition(writer, self.raw_limit)
