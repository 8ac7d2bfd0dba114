"""The Kafka DLQ against a real broker (Tansu): a letter too large for it is shrunk, never
retried as it is.

Review H4: a 1 MB letter made ``produce()`` raise MSG_SIZE_TOO_LARGE (not
retriable), which the writer retried every 5 s for ever while the job waited
behind it. ``message.max.bytes`` is set to librdkafka's minimum, 1000 bytes,
so that ordinary letters hit the same refusal.
"""

from __future__ import annotations

import json

import pytest

from sinks.kafka import KafkaProducerWriter, _DeadLetterPartition
from tilepipe.metrics import Accounting
from tilepipe.records import DeadLetter
from tilepipe.retry import RetryPolicy

pytestmark = pytest.mark.integration


def letter(raw: bytes, n: int, error: str = "version is not numeric") -> DeadLetter:
    return DeadLetter("invalid_version", error, raw,
                      {"topic": "raw", "partition": 0, "offset": n}, 1.8e12, "version")  # fmt: skip


def test_a_letter_over_the_broker_limit_is_shrunk_then_minimal(kafka):
    topic = kafka.new_topic("dlq-size")
    # Bounded retries: before the fix this raised SinkGaveUp instead of hanging the test.
    writer = KafkaProducerWriter(
        [kafka.bootstrap], topic, {"message.max.bytes": "1000"}, RetryPolicy(max_attempts=3)
    )
    part = _DeadLetterPartition(writer, raw_limit=8192)  # shrunk: 512 bytes of raw
    before = Accounting.snapshot()
    small = letter(b'{"version": "x"}', 1)
    medium = letter(b'{"version": "' + b"v" * 2000 + b'"}', 2)  # with 512 B of raw it fits
    huge = letter(b'{"version": "' + b"v" * 900_000 + b'"}', 3, "e" * 5000)  # only minimal fits
    part.write_batch([small, medium, huge])
    part.close()
    assert Accounting.snapshot()["dead_letter"] - before["dead_letter"] == 3
    got = {d["origin"]["offset"]: d for d in
           (json.loads(m.value()) for m in kafka.consume_all(topic, 3))}  # fmt: skip
    assert sorted(got) == [1, 2, 3]
    assert got[1]["raw"] == '{"version": "x"}'
    assert got[2]["reason"] == "invalid_version" and got[2]["raw_truncated"] is True
    assert got[3]["raw_bytes"] == len(huge.raw) and got[3]["raw"] == ""
    assert got[3]["raw_omitted"] == "the broker refused the letter's size"
