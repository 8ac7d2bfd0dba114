"""Dead letters onto a Kafka topic, acknowledged before the batch completes.

Each batch is produced with ``acks=all`` and flushed; a record the broker did
not acknowledge is produced again (with back-off) until it is, so a DLQ
outage holds the job back instead of losing bad records.

A record the broker or librdkafka refuses *for itself* (over
``message.max.bytes``, an invalid record: :data:`RECORD_ERRORS`) is not an
outage and is never retried as it is: that was review H4, a 1 MB dead letter
retried every 5 s for ever while the whole job waited behind it. The writer
asks the caller for a smaller replacement instead; the DLQ shrinks ``raw`` and
then sends a minimal letter, and only if even that is refused is the letter
dropped, with an error log line and ``tilepipe_dead_letters_dropped_total``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from sinks.file import encode_dead_letter, minimal_letter, record_dead_letters
from tilepipe import metrics
from tilepipe.records import DeadLetter
from tilepipe.retry import RetryPolicy, write_with_retry

log = logging.getLogger(__name__)
# librdkafka logs through Python logging (JSON lines), not straight to stderr.
KAFKA_LOGGER = logging.getLogger("tilepipe.kafka")


class DeliveryFailed(Exception):
    """Some records of a batch were not acknowledged by the broker."""


RECORD_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG,
     KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE}
)  # fmt: skip
"""Errors about the record itself: producing it again as it is can never succeed."""

Record = tuple[bytes | None, bytes]
Shrink = Callable[[Record, int], Record | None]
"""A smaller replacement for a record refused for itself (try 1, 2, ...), or None: drop it."""


def _refused_for_itself(err: Any) -> bool:
    return err is not None and not err.retriable() and err.code() in RECORD_ERRORS


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

    def write(
        self, records: Sequence[Record], sink: str = "kafka", shrink: Shrink | None = None
    ) -> None:
        todo = list(records)
        tries: dict[int, int] = {}  # id of a replacement -> how many times it was shrunk

        def replace(rec: Record, err: Any) -> Record | None:
            n = tries.pop(id(rec), 0) + 1
            smaller = shrink(rec, n) if shrink is not None else None
            if smaller is None:
                log.error("%s: dropping a record the broker refuses for itself (%s, %d bytes)",
                          sink, err, len(rec[1]))  # fmt: skip
                metrics.DEAD_LETTERS_DROPPED.inc()
            else:
                tries[id(smaller)] = n
            return smaller

        def attempt() -> None:
            nonlocal todo
            self._renew_if_broken()
            failed: list[Record] = []
            errors: list[str] = []

            def report(err: Any, msg: Any, rec: Record) -> None:
                if err is not None:
                    if _refused_for_itself(err):
                        smaller = replace(rec, err)
                        if smaller is not None:
                            failed.append(smaller)
                        return
                    failed.append(rec)
                    errors.append(str(err))
                    if err.fatal() or err.code() == KafkaError.PRODUCER_FENCED:
                        self._broken = True

            for first in todo:
                rec: Record | None = first
                while rec is not None:
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
                    except KafkaException as e:  # refused before it was queued
                        if not _refused_for_itself(e.args[0]):
                            raise
                        rec = replace(rec, e.args[0])
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
        letters = {}
        records: list[Record] = []
        for d in items:
            rec = (None, encode_dead_letter(d, self._raw_limit))
            letters[id(rec)] = d
            records.append(rec)

        def shrink(rec: Record, attempt: int) -> Record | None:
            d = letters.pop(id(rec), None)
            if d is None:
                return None
            if attempt == 1:  # a sixteenth of the raw limit, at most 4 KiB, still marked
                smaller = (None, encode_dead_letter(d, min(4096, self._raw_limit // 16)))
            elif attempt == 2:
                smaller = (None, minimal_letter(d, "the broker refused the letter's size"))
            else:
                return None
            letters[id(smaller)] = d
            return smaller

        self._w.write(records, sink="dlq", shrink=shrink)
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
