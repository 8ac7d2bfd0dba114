"""Kafka input: every partition of a topic, assigned (no consumer group).

Bytewax keeps each partition's next offset in its recovery store, so the job
resumes exactly where its last snapshot was; no offsets are committed to the
broker. Because there is no group, external lag exporters cannot see this
job: it exports ``tilepipe_kafka_consumer_lag`` itself. A :class:`LagMonitor`
thread asks the broker for each assigned partition's log-end offset every
``lag_interval`` and subtracts the job's position, so the gauge keeps moving
while the job is held back (a sink outage) or stuck, when it matters most.
With ``exit_at_end`` (backfills, tests) each partition ends when it reaches
the end of the log, and the job ends when all have.

An offset the broker no longer has (the job was down longer than the topic's
retention, or its recovery points into deleted segments) is never skipped over
silently: ``auto.offset.reset`` is ``error`` (librdkafka's default, ``largest``,
would resume at the log end and skip everything still retained), and the source
then says so in an ERROR line and ``tilepipe_kafka_offset_out_of_range_total``,
and resumes at the earliest offset still retained, reading all of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from tilepipe import health, metrics, shutdown
from tilepipe.connect import kafka_config
from tilepipe.records import RawRecord
from tilepipe.timeutil import now_ms

log = logging.getLogger(__name__)
# librdkafka logs through Python logging (JSON lines), not straight to stderr.
_IDLE_POLL = timedelta(milliseconds=5)


class LagMonitor(threading.Thread):
    """Refreshes the lag gauge of every partition this process reads, from the broker.

    One per process, with its own consumer that is never assigned and joins
    no group; it only asks for log-end offsets (``ListOffsets``). Positions
    are read from the partitions (a plain int, written by the worker thread).
    """

    _instance: LagMonitor | None = None
    _guard = threading.Lock()

    def __init__(self, config: dict[str, Any], interval_s: float) -> None:
        super().__init__(name="tilepipe-kafka-lag", daemon=True)
        self._config = config
        self._interval = interval_s
        self._parts: dict[tuple[str, int], _KafkaPartition] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()

    @classmethod
    def watch(cls, part: _KafkaPartition, config: dict[str, Any], interval_s: float) -> None:
        with cls._guard:
            if cls._instance is None or not cls._instance.is_alive():
                cls._instance = cls(config, interval_s)
                cls._instance.start()
            monitor = cls._instance
        with monitor._lock:
            monitor._parts[(part.topic, part.partition)] = part
        monitor.poke()

    @classmethod
    def forget(cls, part: _KafkaPartition) -> None:
        monitor = cls._instance
        if monitor is not None:
            with monitor._lock:
                monitor._parts.pop((part.topic, part.partition), None)

    def poke(self) -> None:
        self._wake.set()

    def run(self) -> None:
        consumer = Consumer({**self._config, "enable.partition.eof": "false"})
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                with self._lock:
                    parts = list(self._parts.values())
                for part in parts:
                    self._refresh(consumer, part)
        finally:
            consumer.close()

    def _refresh(self, consumer: Consumer, part: _KafkaPartition) -> None:
        try:
            tp = TopicPartition(part.topic, part.partition)
            low, high = consumer.get_watermark_offsets(
                tp, timeout=max(1.0, self._interval), cached=False
            )
        except Exception as e:  # the broker is away: keep the last value, say so once a while
            now = time.monotonic()
            if now - part.lag_error_logged_at > 60:
                part.lag_error_logged_at = now
                log.warning("Kafka lag %s[%d]: %s", part.topic, part.partition, e)
            return
        position = part.position
        if position == OFFSET_BEGINNING:
            lag = high - low  # nothing read yet: the whole retained log is ahead
        elif position < 0:
            lag = 0  # starting at the end: nothing is ahead until something is read
        else:
            lag = high - position
        part.lag_gauge.set(max(0, lag))


class _KafkaPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        exit_at_end: bool,
        lag_interval_s: float = 5.0,
    ) -> None:
        self._consumer = Consumer(config)
        self._tp = TopicPartition(topic, partition, offset)
        self._consumer.assign([self._tp])
        self.topic = topic
        self.partition = partition
        self._next_offset = offset
        self._batch_size = batch_size
        self._exit_at_end = exit_at_end
        self._at_end = False
        self._awake: datetime | None = None
        self.lag_gauge = metrics.CONSUMER_LAG.labels(topic, str(partition))
        self.lag_error_logged_at = 0.0
        self._errors_logged_at = 0.0
        LagMonitor.watch(self, config, lag_interval_s)
        health.HEALTH.source_assigned(f"kafka {topic}[{partition}] assigned")

    @property
    def position(self) -> int:
        """The next offset this job will read (or OFFSET_BEGINNING/OFFSET_END before any)."""
        return self._next_offset

    def next_batch(self) -> list[RawRecord]:
        if self._at_end:
            raise StopIteration
        if shutdown.requested.is_set():
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0)
        received = now_ms()
        batch: list[RawRecord] = []
        topic, partition = self.topic, self.partition
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._on_error(err)
                continue
            offset: int = msg.offset()  # type: ignore[assignment]  # set on consumed messages
            headers = msg.headers()
            batch.append(
                RawRecord(
                    msg.value(),
                    {"topic": topic, "partition": partition, "offset": offset},
                    received,
                    tuple(headers) if headers else (),  # type: ignore[arg-type]
                )
            )
            self._next_offset = offset + 1
        # Sleep a little when idle rather than spin; a full batch means more is waiting.
        self._awake = None if batch else datetime.now(timezone.utc) + _IDLE_POLL
        if batch:
            metrics.EVENTS_IN.inc(len(batch))
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            self._at_end = self._exit_at_end
            return
        if err.code() == KafkaError._AUTO_OFFSET_RESET:
            self._resume_from_earliest(err)
            return
        if err.fatal():
            raise RuntimeError(
                f"Kafka source {self.topic}[{self.partition}]: fatal error {err}; check the"
                " broker and the security settings (TILEPIPE_KAFKA_CONFIG)"
            )
        now = time.monotonic()
        if now - self._errors_logged_at > 10:
            self._errors_logged_at = now
            log.warning(
                "Kafka source %s[%d]: %s (librdkafka retries by itself)",
                self.topic, self.partition, err,
            )  # fmt: skip

    def _resume_from_earliest(self, err: KafkaError) -> None:
        """The position is out of the retained range: say what is lost, read what is left."""
        tp = TopicPartition(self.topic, self.partition)
        low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        position = self._next_offset
        lost = max(0, low - position) if position >= 0 else 0
        metrics.OFFSET_OUT_OF_RANGE.labels(self.topic, str(self.partition)).inc()
        log.error(
            "Kafka source %s[%d]: offset %d is out of range (the broker has %d..%d): %d"
            " records were deleted before this job read them; resuming at %d, the earliest"
            " retained (keep the topic's retention above the longest outage) [%s]",
            self.topic, self.partition, position, low, high - 1, lost, low, err,
        )  # fmt: skip
        self._next_offset = low
        self._consumer.assign([TopicPartition(self.topic, self.partition, low)])

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        LagMonitor.forget(self)
        if self._at_end:
            self.lag_gauge.set(0)
        self._consumer.close()


class KafkaTopicSource(FixedPartitionedSource[RawRecord, int]):
    def __init__(
        self,
        brokers: list[str],
        topic: str,
        *,
        start: str = "earliest",
        batch_size: int = 1000,
        exit_at_end: bool = False,
        extra_config: Mapping[str, str] | None = None,
        lag_interval_s: float = 5.0,
    ) -> None:
        self.brokers = brokers
        self.lag_interval_s = lag_interval_s
        self.exit_at_end = exit_at_end
        self.topic = topic
        self.start = start
        self.batch_size = batch_size
        self.extra_config = dict(extra_config or {})

    def _config(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            # Only assign() is used; the group id is never joined.
            "group.id": "tilepipe-unused",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true" if self.exit_at_end else "false",
            # How long the broker may hold a fetch when it has nothing new. Kafka
            # answers as soon as data arrives, but not every Kafka API broker does
            # (Tansu holds it the full time): librdkafka's 500 ms would then add up to
            # 500 ms to each event's latency. 50 ms costs an idle partition 20 cheap
            # requests a second. Override with TILEPIPE_KAFKA_CONFIG.
            "fetch.wait.max.ms": 50,
            # Out of range: report and resume at the earliest retained offset (_on_error),
            # never librdkafka's default of jumping to the end (review M8).
            "auto.offset.reset": "error",
        }
        return kafka_config(self.brokers, self.extra_config, defaults)

    def list_parts(self) -> list[str]:
        admin = AdminClient(kafka_config(self.brokers, self.extra_config))
        meta = admin.list_topics(self.topic, timeout=10)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise RuntimeError(
                f"Kafka topic {self.topic!r} not found on {','.join(self.brokers)}"
                + (f" ({topic.error})" if topic is not None and topic.error else "")
                + "; create it first (partitions fix the job's parallelism)"
            )
        return [str(p) for p in sorted(topic.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        if resume_state is not None:
            offset = resume_state
        else:
            offset = OFFSET_END if self.start == "latest" else OFFSET_BEGINNING
        return _KafkaPartition(
            self._config(),
            self.topic,
            int(for_part),
            offset,
            self.batch_size,
            self.exit_at_end,
            self.lag_interval_s,
        )
