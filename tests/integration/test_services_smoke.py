"""The real-service fixtures work: Tansu round trips, Redis pub/sub, broker restarts."""

from __future__ import annotations

import json

import pytest
import redis

from tests.support.services import KafkaBroker, RedisSubscriber, redis_answers, start_redis

pytestmark = pytest.mark.integration


def test_kafka_round_trip_over_two_partitions(kafka: KafkaBroker) -> None:
    topic = kafka.new_topic("smoke", partitions=2)
    assert kafka.partitions(topic) == [0, 1]
    assert kafka.url(topic) == f"kafka://{kafka.bootstrap}/{topic}"
    values = [f"v{i}".encode() for i in range(10)]

    kafka.produce(topic, values, key=lambda v: v, headers=[("source", b"smoke")])
    got = kafka.consume_all(topic, expected=10, timeout=30)

    assert sorted(m.value() for m in got) == sorted(values)
    assert {m.partition() for m in got} == {0, 1}
    assert all(m.key() == m.value() and m.headers() == [("source", b"smoke")] for m in got)
    for p in (0, 1):  # each partition keeps the produce order
        in_p = [m.value() for m in got if m.partition() == p]
        assert in_p == [v for v in values if v in in_p]


def test_consume_all_fails_fast_and_says_what_it_read(kafka: KafkaBroker) -> None:
    topic = kafka.new_topic("smoke-short")
    kafka.produce(topic, [b"only"])
    with pytest.raises(AssertionError, match="read 1 of 2 messages"):
        kafka.consume_all(topic, expected=2, timeout=1)


def test_redis_subscriber_gets_json_in_order(
    redis_url: str, redis_client: redis.Redis, channel: str
) -> None:
    assert redis_client.dbsize() == 0
    sent = [{"n": i, "tile": f"15/{i}/7"} for i in range(3)]
    with RedisSubscriber(redis_url, channel) as sub:
        for msg in sent:
            assert redis_client.publish(channel, json.dumps(msg)) == 1  # already subscribed
        assert sub.wait_for(3, timeout=5) == sent
        assert sub.settle(quiet=0.2) == sent
        with pytest.raises(AssertionError, match="3 of 4 messages"):
            sub.wait_for(4, timeout=0.2)


def test_a_private_redis_server_starts_and_stops() -> None:
    with start_redis(use_existing=False) as url:
        assert ":6379/" not in url
        assert redis_answers(url)
    assert not redis_answers(url)


def test_broker_restart_keeps_the_address_and_loses_memory_storage(
    private_kafka: KafkaBroker,
) -> None:
    before = private_kafka.new_topic("smoke-before")
    private_kafka.produce(before, [b"lost"])
    bootstrap, pid = private_kafka.bootstrap, private_kafka.pid

    private_kafka.restart()

    assert private_kafka.bootstrap == bootstrap and private_kafka.pid != pid
    assert before not in private_kafka.admin().list_topics(timeout=5).topics
    after = private_kafka.new_topic("smoke-after", partitions=2)
    private_kafka.produce(after, [b"a", b"b", b"c"], key=b"k")
    assert [m.value() for m in private_kafka.consume_all(after, expected=3)] == [b"a", b"b", b"c"]
