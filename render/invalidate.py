"""Invalidating a tile in the caches in front of the store, after its commit.

A ``DEL`` of the Redis tile cache key (``TILEPIPE_RENDER_CACHE_KEY``) and/or an
HTTP ``PURGE`` (``TILEPIPE_RENDER_PURGE_URL``), each counted as a hit, a miss or
an error. Nothing here fails a job: the tile is already committed when it is
invalidated, and a cache entry that could not be dropped expires on its own.
The render worker (:mod:`render.worker`) calls it after each commit, and in
place of the render for a degraded or dead job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import redis

from render import metrics
from render.jobs import RenderJob

log = logging.getLogger(__name__)


class ThrottledWarning:
    """At most one warning per ``every_s``, saying how many were held back since the last."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._unlogged = 0

    def __call__(self, fmt: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._unlogged += 1
                return
            self._next = now + self.every_s
            unlogged, self._unlogged = self._unlogged, 0
        more = f" ({unlogged} more since the last warning)" if unlogged else ""
        log.warning(fmt + "%s", *args, more)


class Purger:
    """Sends ``PURGE`` for a tile to an HTTP cache (Varnish, nginx, a CDN) with a timeout.

    200 or 204 is a hit (the cache held the tile and dropped it), 404 a miss (it did not
    hold it); anything else, a timeout or a refused connection is an error: counted and
    logged (at most one warning per ``log_every_s``), never a failed job, since the tile
    is already committed and the cache entry expires on its own.
    """

    def __init__(self, template: str, timeout_s: float = 5.0, log_every_s: float = 10.0) -> None:
        self.template = template
        self.timeout_s = timeout_s
        self._warn = ThrottledWarning(log_every_s)

    def url(self, job: RenderJob) -> str:
        return purge_url(self.template, job)

    def purge(self, job: RenderJob) -> str:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url(job), method="PURGE")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                status = int(r.status)
        except urllib.error.HTTPError as e:
            status = int(e.code)
            e.close()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            self.warn_failed(job, f"{type(e).__name__}: {getattr(e, 'reason', e)}")
            return "error"
        if status in (200, 204):
            return "hit"
        if status == 404:
            return "miss"
        self.warn_failed(job, f"the cache answered {status}")
        return "error"

    def warn_failed(self, job: RenderJob, reason: str) -> None:
        self._warn("PURGE of %s failed: %s; the cached tile expires on its own", job.tile, reason)


def purge_url(template: str, job: RenderJob) -> str:
    """The purge URL template with the job's fields (:data:`render.jobs.TEMPLATE_FIELDS`)."""
    return template.format(**job.fields())


class CacheInvalidator:
    """Drops a tile from the caches in front of the store: ``DEL`` of a Redis tile cache key
    and/or ``PURGE`` to an HTTP cache. Each is counted: hit (it was cached), miss or error.
    Never raises: a cache that fails is logged (throttled) and counted, and the job it
    follows is still done (the tile is committed; the cache entry expires on its own).
    Thread-safe: the pool's workers share one."""

    def __init__(
        self, client: redis.Redis | None, key_template: str | None, purger: Purger | None = None
    ) -> None:
        self.client = client
        self.key_template = key_template
        self.purger = purger
        self.counts: Counter[str] = Counter()
        self.purges: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._warn = ThrottledWarning()

    @property
    def configured(self) -> bool:
        return (self.client is not None and bool(self.key_template)) or self.purger is not None

    def invalidate(self, job: RenderJob) -> str | None:
        """Invalidate ``job``'s tile everywhere configured; what happened, for the ledger
        (``"cache hit, purge miss"``), or None if no cache is configured."""
        done = []
        if self.client is not None and self.key_template:
            try:
                key = self.key_template.format(**job.fields())
                result = "hit" if self.client.delete(key) else "miss"
            except Exception as e:  # a worker thread must not die of a cache
                self._warn("DEL of the cache key of %s failed: %s: %s; the cached tile expires"
                           " on its own", job.tile, type(e).__name__, e)  # fmt: skip
                result = "error"
            with self._lock:
                self.counts[result] += 1
            metrics.CACHE_INVALIDATIONS.labels(result).inc()
            done.append(f"cache {result}")
        if self.purger is not None:
            try:
                result = self.purger.purge(job)
            except Exception as e:
                self.purger.warn_failed(job, f"{type(e).__name__}: {e}")
                result = "error"
            with self._lock:
                self.purges[result] += 1
            metrics.PURGES.labels(result).inc()
            done.append(f"purge {result}")
        return ", ".join(done) or None
