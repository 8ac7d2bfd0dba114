"""What a user would write without tilepipe, and the limits of the parts themselves.

The naive consumer is the loop most first versions look like: poll one
message, validate it with the pydantic model, ``await SET NX`` a
``tile:version`` key so a replay does not broadcast twice, ``await PUBLISH``.
It is correct for the happy path and costs two network round trips per event.

The ceilings are the fastest the parts go on this machine with no job in
between: ``assign`` + ``consume(1000)`` over a topic, and ``PUBLISH`` pipelined
1000 at a time.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import redis
import redis.asyncio as aredis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from tilepipe.wire import EVENT_ADAPTER


def _consumer(brokers: str, topic: str, partitions: list[int]) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "bench-unused",  # assign(): no group join, nothing committed
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return c


async def _naive(brokers: str, topic: str, n: int, redis_url: str, channel: str) -> float:
    consumer = _consumer(brokers, topic, [0])
    r = aredis.Redis.from_url(redis_url)
    done = 0
    t0 = time.perf_counter()
    try:
        while done < n:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            ev = EVENT_ADAPTER.validate_json(msg.value())
            key = f"bench-naive:{ev.z}/{ev.x}/{ev.y}"  # type: ignore[union-attr]
            if await r.set(f"{key}:{ev.version}", 1, nx=True, ex=600):
                body = {"type": "tile_updated", "z": ev.z, "x": ev.x, "y": ev.y,  # type: ignore[union-attr]
                        "version": ev.version, "ts": msg.timestamp()[1]}  # fmt: skip
                await r.publish(channel, orjson.dumps(body))
            done += 1
        return time.perf_counter() - t0
    finally:
        consumer.close()
        await r.aclose()


def naive_rate(brokers: str, topic: str, n: int, redis_url: str, channel: str) -> float:
    """Events per second of the naive loop over the first ``n`` events of ``topic``."""
    seconds = asyncio.run(_naive(brokers, topic, n, redis_url, channel))
    return n / seconds


def consume_rate(brokers: str, topic: str, partitions: list[int], n: int) -> float:
    """Messages per second that ``consume(1000)`` reads from the start of ``topic``."""
    consumer = _consumer(brokers, topic, partitions)
    got = 0
    try:
        # The first fetch includes connection set-up: start the clock at the first message.
        first: list = []
        deadline = time.monotonic() + 30
        while not first:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no message on {topic} within 30 s; was it pre-loaded?")
            first = [m for m in consumer.consume(1000, 1.0) if m.error() is None]
        got = len(first)
        t0 = time.perf_counter()
        while got < n:
            for m in consumer.consume(1000, 1.0):
                err = m.error()
                if err is None:
                    got += 1
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"consume {topic}: {err}")
        return (got - len(first)) / (time.perf_counter() - t0)
    finally:
        consumer.close()


def publish_rate(redis_url: str, channel: str, n: int, message: bytes, batch: int = 1000) -> float:
    """``PUBLISH`` per second, pipelined ``batch`` at a time (no transaction)."""
    r = redis.Redis.from_url(redis_url)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(batch, n - start)):
                pipe.publish(channel, message)
            pipe.execute()
        return n / (time.perf_counter() - t0)
    finally:
        r.close()


def publish_one_by_one_rate(redis_url: str, channel: str, n: int, message: bytes) -> float:
    r = redis.Redis.from_url(redis_url)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            r.publish(channel, message)
        return n / (time.perf_counter() - t0)
    finally:
        r.close()
