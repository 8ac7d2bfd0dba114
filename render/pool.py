"""A pool of render workers in one process: what ``tilepipe render-worker`` runs.

Each thread is one consumer of the queue with its own ledger connection and
store handle; they share the Redis client, the renderer and the circuit
breaker (a failing renderer is the process's problem, not one thread's).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable
from http.server import ThreadingHTTPServer

import redis

from render import metrics
from render.announce import CommitAnnouncer
from render.invalidate import CacheInvalidator, Purger
from render.jobs import RenderJob
from render.ledger import Ledger, LedgerError
from render.queue import RenderQueue
from render.renderers import build_renderer
from render.settings import RenderSettings
from render.stores import build_store
from render.worker import CircuitBreaker, RenderWorker, WorkerConfig, default_name
from tilepipe.errors import ConfigError, TilepipeError
from tilepipe.retry import RetryPolicy
from tilepipe.store import RedisTarget

log = logging.getLogger(__name__)


class WorkerDied(TilepipeError):
    """A worker thread ended on an error it could not handle; the process should restart."""


class RenderPool:
    def __init__(
        self,
        settings: RenderSettings,
        on_committed: Callable[[RenderJob, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_committed = on_committed
        self._metrics_server: ThreadingHTTPServer | None = None
        self.name = settings.worker_name or default_name()
        if settings.ledger is None:
            raise ConfigError(
                "no job ledger: set TILEPIPE_RENDER_LEDGER (or --ledger) to a PostgreSQL DSN"
            )
        self.dsn = settings.ledger.get_secret_value()
        try:
            self.renderer = build_renderer(
                settings.renderer,
                settings.format,
                settings.delay.total_seconds(),
                settings.timeout.total_seconds(),
                settings.http_concurrency,
                settings.max_tile_bytes,
            )
            build_store(settings.store, settings.format, settings.staging).close()
        except (ValueError, OSError) as e:
            raise ConfigError(str(e)) from None
        self.client = redis.Redis.from_url(
            settings.redis, socket_timeout=10, socket_connect_timeout=5
        )
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"the queue's Redis does not answer: {e}") from None
        self.queue = RenderQueue(
            self.client,
            settings.prefix,
            dedup_ttl_s=int(settings.dedup_ttl.total_seconds()),
            dead_max=settings.dead_max,
        )
        self.queue.ensure_group()
        try:
            ledger = Ledger(self.dsn)
        except LedgerError as e:
            raise ConfigError(str(e)) from None
        try:
            ledger.create_schema()
        finally:
            ledger.close()
        self.breaker = CircuitBreaker(
            settings.breaker_threshold, settings.breaker_cooldown.total_seconds()
        )
        purger = None
        if settings.purge_url:
            purger = Purger(settings.purge_url, settings.purge_timeout.total_seconds())
        self.invalidator = CacheInvalidator(self.client, settings.cache_key, purger)
        self.announcer: CommitAnnouncer | None = None
        if settings.broadcast and on_committed is None:
            target = RedisTarget.from_uri(settings.broadcast, prefix=settings.prefix)
            self.announcer = CommitAnnouncer(target)
            try:
                self.announcer.broadcaster.client.ping()
            except redis.RedisError as e:
                raise ConfigError(f"the broadcast Redis does not answer: {e}") from None
            self.on_committed = self.announcer
        self.workers: list[RenderWorker] = []

    def _worker(self, index: int) -> RenderWorker:
        s = self.settings
        config = WorkerConfig(
            name=f"{self.name}-{index}",
            sla_s=s.sla.total_seconds(),
            max_attempts=s.max_attempts,
            backoff=RetryPolicy(s.retry_initial.total_seconds(), s.retry_max.total_seconds()),
            poll_s=s.poll.total_seconds(),
            retention_s=s.retention.total_seconds(),
        )
        return RenderWorker(
            config,
            self.queue,
            Ledger(self.dsn),
            self.renderer,
            build_store(s.store, s.format, s.staging),
            self.breaker,
            self.invalidator,
            self.on_committed,
        )

    def serve_metrics(self) -> None:
        """``/metrics``, ``/healthz`` and ``/readyz`` (ready while the queue's Redis answers)."""
        from tilepipe import health

        port = self.settings.metrics_port
        assert port is not None
        metrics.watch(
            self.queue.depth,
            lambda: int(self.client.llen(self.queue.dead_key)),
            lambda: self.breaker.is_open,
        )
        health.HEALTH.source_assigned(f"render workers {self.name} on {self.queue.stream}")

        def ping() -> None:
            self.client.ping()

        health.HEALTH.add_check("redis", ping)
        self._metrics_server = health.serve(port)

    def run(self, stop: threading.Event) -> Counter[str]:
        """Run every worker until ``stop`` is set; each finishes its current job first."""
        if self.settings.metrics_port is not None:
            self.serve_metrics()
        self.workers = [self._worker(i) for i in range(self.settings.workers)]
        died: list[str] = []

        def run(w: RenderWorker) -> None:
            try:
                w.run(stop)
            except BaseException:
                # A worker must not vanish quietly: say why, and stop the others so the
                # process exits non-zero and is restarted.
                log.exception("%s: render worker died; stopping the pool", w.name)
                died.append(w.name)
                stop.set()

        threads = [
            threading.Thread(target=run, args=(w,), name=w.name, daemon=True) for w in self.workers
        ]
        log.info(
            "render workers started: %d threads as %s, renderer %s, store %s",
            len(threads), self.name, self.settings.renderer.split(" ")[0], self.settings.store,
        )  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        totals: Counter[str] = Counter()
        for w in self.workers:
            totals.update(w.outcomes)
            w.ledger.close()
            w.store.close()
        self.client.close()
        if self.announcer is not None:
            self.announcer.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("render workers stopped: %s", dict(totals))
        if died:
            raise WorkerDied(f"render worker(s) {', '.join(died)} died; see the log above")
        return totals


def run_pool(settings: RenderSettings) -> int:
    """``tilepipe render-worker``: run the pool until SIGTERM or SIGINT; the exit code.

    The first signal lets every thread finish the job in hand; a second exits at once.
    A thread that died on an error it could not handle stops the pool with exit code 1,
    so the orchestrator restarts the process.
    """
    pool = RenderPool(settings)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(130)  # a second signal: exit at once
        log.info("stopping: finishing the jobs in hand")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        pool.run(stop)
    except WorkerDied as e:
        print(f"tilepipe render-worker: {e}", file=sys.stderr)
        return 1
    return 0
