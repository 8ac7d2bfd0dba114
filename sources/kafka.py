"""Kafka input: every partition of a topic, assigned (no consumer group).

Bytewax keeps each partition's next offset in its recovery store, so the job
resumes exactly where its last snapshot was; no offsets are committed to the
broker. Because there is no group, external lag exporters cannot see this
job: each partition exports ``tilepipe_kafka_consumer_lag`` itself, from the
high watermark librdkafka caches with every fetch (no extra round trip).
With ``exit_at_end`` (backfills, tests) each partition ends when it reaches
the end of the log, and the job ends when all have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from tilepipe import metrics, shutdown
from tilepipe.records import RawRecord
from tilepipe.timeutil import now_ms

log = logging.getLogger(__name__)
# librdkafka logs through Python logging (JSON lines), not straight to stderr.
KAFKA_LOGGER = logging.getLogger("tilepipe.kafka")

_IDLE_POLL = timedelta(milliseconds=5)
_LAG_EVERY_S = 2.0


class _KafkaPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        exit_at_end: bool,
    ) -> None:
        self._consumer = Consumer(config)
        self._tp = TopicPartition(topic, partition, offset)
        self._consumer.assign([self._tp])
        self._topic = topic
        self._partition = partition
        self._next_offset = offset
        self._batch_size = batch_size
        self._exit_at_end = exit_at_end
        self._at_end = False
        self._awake: datetime | None = None
        self._lag_gauge = metrics.CONSUMER_LAG.labels(topic, str(partition))
        self._lag_at = 0.0
        self._errors_logged_at = 0.0

    def next_batch(self) -> list[RawRecord]:
        if self._at_end:
            raise StopIteration
        if shutdown.requested.is_set():
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0)
        received = now_ms()
        batch: list[RawRecord] = []
        topic, partition = self._topic, self._partition
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
        self._update_lag()
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            self._at_end = self._exit_at_end
            return
        if err.fatal():
            raise RuntimeError(
                f"Kafka source {self._topic}[{self._partition}]: fatal error {err}; check the"
                " broker and the security settings (TILEPIPE_KAFKA_CONFIG)"
            )
        now = time.monotonic()
        if now - self._errors_logged_at > 10:
            self._errors_logged_at = now
            log.warning(
                "Kafka source %s[%d]: %s (librdkafka retries by itself)",
                self._topic, self._partition, err,
            )  # fmt: skip

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < _LAG_EVERY_S:
            return
        self._lag_at = now
        try:
            _low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except Exception:  # no fetch response cached yet
            return
        if high >= 0 and self._next_offset >= 0:
            self._lag_gauge.set(max(0, high - self._next_offset))

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
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
    ) -> None:
        self.brokers = brokers
        self.exit_at_end = exit_at_end
        self.topic = topic
        self.start = start
        self.batch_size = batch_size
        self.extra_config = dict(extra_config or {})

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.brokers),
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
            "logger": KAFKA_LOGGER,
        }
        config.update(self.extra_config)
        return config

    def list_parts(self) -> list[str]:
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.brokers),
            **self.extra_config,
            "logger": KAFKA_LOGGER,
        }
        admin = AdminClient(config)
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
            self._config(), self.topic, int(for_part), offset, self.batch_size, self.exit_at_end
        )
