"""The render-queue sink against a real Redis: per-update dead letters, transient retries."""

from __future__ import annotations

import threading

import pytest
import redis

from operators.coalesce import coalesce
from render.queue import RenderQueue
from sinks.render_queue import RenderEnqueuer, RenderQueueTarget
from tests.integration.test_redis_sink import Letters
from tests.support.services import RedisServer
from tilepipe.records import TileEvent, TileUpdate
from tilepipe.retry import RetryPolicy
from tilepipe.tiles import tile_key

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000


def update(x: int, version: int) -> TileUpdate:
    ev = TileEvent(tile_key(12, x, 9), "WebMercatorQuad", 12, x, 9, version, (1,), T0,
                   f"q{x}", "test", None, float(T0))  # fmt: skip
    return coalesce([ev])


def test_an_update_that_cannot_become_a_job_is_one_dead_letter():
    with RedisServer() as server:
        letters = Letters()
        e = RenderEnqueuer(RenderQueueTarget(server.url, prefix="rq"), dead_letters=letters)
        assert e.enqueue([update(1, 1), update(2, 2**64), update(3, 1)]) == [True, False, True]
        assert [d.reason for d in letters.items] == ["encode_failed"]
        assert RenderQueue(e.client, "rq").depth() == 2
        e.close()


def test_oom_is_retried_until_the_queue_takes_the_jobs():
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        e = RenderEnqueuer(
            RenderQueueTarget(server.url, prefix="rq"), RetryPolicy(initial_s=0.02, max_s=0.1)
        )
        admin.config_set("maxmemory", "1")
        threading.Timer(0.5, lambda: admin.config_set("maxmemory", "0")).start()
        assert e.enqueue([update(1, 1), update(2, 1)]) == [True, True]
        e.close()
