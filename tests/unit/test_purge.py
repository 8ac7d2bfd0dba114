"""HTTP PURGE invalidation against a real HTTP server on loopback: what is sent, how each
answer is counted, and that no answer (or none in time) ever raises into the job."""

from __future__ import annotations

import logging
import socket

import pytest
from pydantic import ValidationError

from render import metrics
from render.invalidate import CacheInvalidator, Purger
from render.jobs import RenderJob
from render.settings import RenderSettings
from tests.support.tileserver import TileServer

JOB = RenderJob("WebMercatorQuad", 14, 8800, 5373, 3)


def count(result: str) -> float:
    return metrics.PURGES.labels(result)._value.get()  # type: ignore[attr-defined, no-any-return]


def test_purge_sends_the_tile_url_and_counts_hit_then_miss() -> None:
    with TileServer(cached={"/14/8800/5373.png"}) as server:
        purger = Purger(server.url + "/{z}/{x}/{y}.png", timeout_s=2)
        invalidator = CacheInvalidator(None, None, purger)
        before = {r: count(r) for r in ("hit", "miss", "error")}
        assert invalidator.invalidate(JOB) == "purge hit"
        assert invalidator.invalidate(JOB) == "purge miss"  # Varnish dropped it the first time
        assert [(r.method, r.path, r.status) for r in server.sent("PURGE")] == [
            ("PURGE", "/14/8800/5373.png", 200), ("PURGE", "/14/8800/5373.png", 404),
        ]  # fmt: skip
    assert invalidator.purges == {"hit": 1, "miss": 1}
    assert count("hit") - before["hit"] == 1 and count("miss") - before["miss"] == 1
    assert count("error") == before["error"]


@pytest.mark.parametrize(("status", "result"), [(204, "hit"), (200, "hit"), (404, "miss"),
                                                (405, "error"), (503, "error")])  # fmt: skip
def test_each_answer_is_a_hit_a_miss_or_an_error(status: int, result: str) -> None:
    with TileServer(purge_status=status) as server:
        before = count(result)
        purger = Purger(server.url + "/{tms}/{z}/{x}/{y}", timeout_s=2)
        assert CacheInvalidator(None, None, purger).invalidate(JOB) == f"purge {result}"
        assert server.sent("PURGE")[0].path == "/WebMercatorQuad/14/8800/5373"
    assert count(result) == before + 1


def test_a_slow_or_absent_cache_is_an_error_logged_not_raised(caplog) -> None:
    with TileServer(purge_delay_s=1.0) as server:
        slow = Purger(server.url + "/{z}/{x}/{y}.png", timeout_s=0.2, log_every_s=60)
        with caplog.at_level(logging.WARNING, logger="render.invalidate"):
            assert slow.purge(JOB) == "error"
            assert slow.purge(JOB) == "error"  # counted; the second warning is held back
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert Purger(f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png", 1).purge(JOB) == "error"
    warnings = [r.getMessage() for r in caplog.records if r.name == "render.invalidate"]
    assert len(warnings) == 2  # one per Purger: the slow one's second error was held back
    assert "PURGE of WebMercatorQuad/14/8800/5373 failed: TimeoutError" in warnings[0]
    assert "Connection refused" in warnings[1]


def test_redis_cache_and_purge_together(redis_client) -> None:
    redis_client.set("tc:14:8800:5373", b"old")
    with TileServer() as server:
        invalidator = CacheInvalidator(
            redis_client, "tc:{z}:{x}:{y}", Purger(server.url + "/{z}/{x}/{y}.png", 2)
        )
        assert invalidator.invalidate(JOB) == "cache hit, purge miss"
    assert redis_client.get("tc:14:8800:5373") is None
    assert CacheInvalidator(None, None).invalidate(JOB) is None


def test_purge_url_setting_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("TILEPIPE_RENDER_PURGE_URL", "http://varnish/{z}/{x}/{y}.png")
    monkeypatch.setenv("TILEPIPE_RENDER_PURGE_TIMEOUT", "750ms")
    s = RenderSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.purge_url == "http://varnish/{z}/{x}/{y}.png"
    assert s.purge_timeout.total_seconds() == 0.75
    for bad in ("varnish/{z}/{x}/{y}.png", "http://varnish/{zoom}/{x}/{y}.png"):
        monkeypatch.setenv("TILEPIPE_RENDER_PURGE_URL", bad)
        with pytest.raises(ValidationError, match="purge_url"):
            RenderSettings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("TILEPIPE_RENDER_PURGE_URL", "")
    assert RenderSettings(_env_file=None).purge_url is None  # type: ignore[call-arg]
