"""The Kafka source against Tansu: what it does when its offset is gone (review M8).

librdkafka's default ``auto.offset.reset`` is ``largest``: a position the broker
no longer has (the job was down longer than retention, or its recovery points
into deleted segments) silently resumed at the log end, skipping everything
still retained. The source now sets ``error`` and handles the resulting
``_AUTO_OFFSET_RESET`` itself.

Tansu cannot be made to report the condition: a fetch past the log end returns
nothing (no OFFSET_OUT_OF_RANGE), and its storage never deletes segments. So the
test hands the partition the exact error librdkafka delivers in that case and
checks, against the real broker, that the source says so and reads every
retained record from the earliest offset instead.
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from sources.kafka import KafkaTopicSource
from tilepipe.config import kafka_uri

pytestmark = pytest.mark.integration


def test_an_out_of_range_offset_is_reported_and_every_retained_record_read(kafka, caplog) -> None:
    topic = kafka.new_topic("offset-range")
    kafka.produce(topic, [b"r%d" % i for i in range(5)])
    brokers, name = kafka_uri(kafka.url(topic))
    source = KafkaTopicSource(brokers, name)
    assert source._config()["auto.offset.reset"] == "error"  # was unset: "largest"
    labels = {"topic": name, "partition": "0"}
    before = REGISTRY.get_sample_value("tilepipe_kafka_offset_out_of_range_total", labels) or 0
    # Resumed from a recovery offset the broker does not have.
    part = source.build_part("in", "0", resume_state=1_000_000)
    try:
        with caplog.at_level(logging.ERROR, logger="sources.kafka"):
            part._on_error(KafkaError(KafkaError._AUTO_OFFSET_RESET,
                                      "fetch failed: offset out of range"))  # fmt: skip
        values: list[bytes] = []
        deadline = time.monotonic() + 30  # a ceiling for a stuck source, not a timing
        while len(values) < 5 and time.monotonic() < deadline:
            values += [r.value for r in part.next_batch() if r.value is not None]
            time.sleep(0.05)
    finally:
        part.close()
    assert values == [b"r%d" % i for i in range(5)]
    [line] = [r for r in caplog.records if "out of range" in r.getMessage()]
    assert line.levelname == "ERROR" and "resuming at 0" in line.getMessage()
    after = REGISTRY.get_sample_value("tilepipe_kafka_offset_out_of_range_total", labels)
    assert after == before + 1
