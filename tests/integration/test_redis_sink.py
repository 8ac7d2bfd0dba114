"""The Redis broadcaster against a real Redis: compare-and-set + publish."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import redis

from operators.coalesce import coalesce
from sinks.redis import RedisBroadcaster, RedisTarget
from tests.support.services import RedisSubscriber
from tilepipe.records import TileEvent
from tilepipe.tiles import tile_key
from tilepipe.versions import version_key

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000


def update(version, ts=0, obj="", x=5, vkey=None, **kw):
    vkey = vkey or version_key(version)
    ev = TileEvent(tile_key(10, x, 7), "WebMercatorQuad", 10, x, 7, version, vkey,
                   T0 + ts, f"e-{obj}-{version}-{ts}", "test", None, 0.0, obj, **kw)  # fmt: skip
    return coalesce([ev])


@pytest.fixture
def broadcaster(redis_url, redis_client, channel):
    b = RedisBroadcaster(RedisTarget(redis_url, channel=channel, max_objects_per_tile=8))
    yield b
    b.close()


def test_only_newer_versions_are_published_and_stored(broadcaster, redis_url, channel):
    with RedisSubscriber(redis_url, channel) as sub:
        assert broadcaster.publish([update(2)]) == [1]
        assert broadcaster.publish([update(1), update(2), update(3)]) == [-1, 0, 1]
        assert broadcaster.publish([update("1.10"), update("1.9")]) == [-1, -1]
        assert broadcaster.publish([update("3.0.1"), update("3.0.10"), update("3.0.9")]) == [
            1,
            1,
            -1,
        ]
        got = sub.wait_for(4)
        assert sub.settle(quiet=0.2) == got
    assert [m["version"] for m in got] == [2, 3, "3.0.1", "3.0.10"]
    stored = broadcaster.client.hget("tilepipe:tile:WebMercatorQuad:10:5:7", "msg")
    assert json.loads(stored)["version"] == "3.0.10"
    assert int(broadcaster.client.hget("tilepipe:stats", "suppressed")) == 5


def test_equal_versions_tie_break_on_event_time(broadcaster):
    assert broadcaster.publish([update(4, ts=10)]) == [1]
    assert broadcaster.publish([update(4, ts=5), update(4, ts=10), update(4, ts=20)]) == [-1, 0, 1]


def test_objects_on_one_tile_are_independent(broadcaster):
    assert broadcaster.publish([update(9, obj="road")]) == [1]
    assert broadcaster.publish([update(2, obj="park")]) == [1]
    assert broadcaster.publish([update(8, obj="road"), update(2, obj="park")]) == [-1, 0]


def test_objects_per_tile_are_capped_oldest_first(broadcaster):
    key = "tilepipe:tile:WebMercatorQuad:10:5:7"
    for i in range(20):
        assert broadcaster.publish([update(1, ts=i, obj=f"o{i}")]) == [1]
    fields = {f.decode() for f in broadcaster.client.hkeys(key)}
    objects = sorted(int(f[3:]) for f in fields if f.startswith("o:o"))
    assert len(objects) <= 8 and objects[-1] == 19  # the newest are kept
    assert "msg" in fields


def test_a_batch_is_one_round_trip_of_chunks(redis_url, redis_client, channel):
    b = RedisBroadcaster(RedisTarget(redis_url, channel=channel, chunk=7))
    updates = [update(1, x=x) for x in range(50)]
    with RedisSubscriber(redis_url, channel) as sub:
        assert b.publish(updates) == [1] * 50
        assert len(sub.wait_for(50)) == 50
    b.close()


# -- hostile updates, refusals and transient errors (review C1, L4, M5, L11) -----------


class Letters:
    """A DLQ partition that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list = []

    def write_batch(self, items: list) -> None:
        self.items.extend(items)


def test_an_update_redis_or_orjson_refuses_is_one_dead_letter(redis_url, redis_client, channel):
    letters = Letters()
    b = RedisBroadcaster(RedisTarget(redis_url, channel=channel, chunk=2), dead_letters=letters)
    redis_client.set("tilepipe:tile:WebMercatorQuad:10:2:7", "not a hash")  # WRONGTYPE
    with RedisSubscriber(redis_url, channel) as sub:
        # x=1 and x=2 share a chunk: the script writes x=1, then fails on x=2's key.
        results = b.publish(
            [update(1, x=1), update(1, x=2), update(2**64, x=3, vkey=(1,)), update(1, x=4)]
        )
        got = sub.wait_for(2)
        assert sub.settle(quiet=0.3) == got
    b.close()
    # x=1 was written by the failed try and recognised by its write token on the
    # retry: published (once), not counted duplicate.
    assert results == [1, 2, 2, 1]
    assert sorted(m["x"] for m in got) == [1, 4]
    assert [d.reason for d in letters.items] == ["encode_failed", "sink_rejected"]
    assert "WRONGTYPE" in letters.items[1].error
    assert redis_client.hget("tilepipe:stats", "suppressed") is None


def test_transient_errors_are_retried_until_redis_takes_the_write(channel):
    """OOM (maxmemory reached) and BUSY (another client's slow script) hold the job back."""
    import threading

    from tests.support.services import RedisServer
    from tilepipe.retry import RetryPolicy

    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        b = RedisBroadcaster(
            RedisTarget(server.url, channel=channel), RetryPolicy(initial_s=0.02, max_s=0.1)
        )
        admin.config_set("maxmemory", "1")  # every write is refused: OOM
        threading.Timer(0.5, lambda: admin.config_set("maxmemory", "0")).start()
        assert b.publish([update(1, x=1), update(1, x=2)]) == [1, 1]

        admin.config_set("busy-reply-threshold", "50")
        spinner = redis.Redis.from_url(server.url)
        busy = threading.Thread(
            target=lambda: _ignore(lambda: spinner.eval("while true do end", 0)), daemon=True
        )
        busy.start()
        time.sleep(0.2)
        threading.Timer(0.5, lambda: redis.Redis.from_url(server.url).script_kill()).start()
        assert b.publish([update(2, x=1)]) == [1]
        busy.join(5)
        b.close()


def _ignore(call) -> None:
    with contextlib.suppress(redis.RedisError):  # SCRIPT KILL ends the script with an error
        call()


def test_a_forgotten_object_cannot_come_back_older(redis_url, redis_client, channel):
    """Review M5: past max_objects_per_tile the store forgot A, then published A's v3."""
    b = RedisBroadcaster(RedisTarget(redis_url, channel=channel, max_objects_per_tile=4))
    key = "tilepipe:tile:WebMercatorQuad:10:5:7"
    assert b.publish([update(5, ts=100, obj="A")]) == [1]
    for i, name in enumerate("BCDEF"):
        assert b.publish([update(1, ts=101 + i, obj=name)]) == [1]
    assert redis_client.hget(key, "o:A") is None  # trimmed
    assert b.publish([update(3, ts=50, obj="A")]) == [-1]
    assert json.loads(redis_client.hget(key, "msg"))["version"] == 1  # F's, not A's v3
    assert b.publish([update(1, ts=200, obj="G")]) == [1]  # a new object still goes out
    b.close()


def test_deep_zoom_tiles_can_expire(redis_url, redis_client, channel):
    b = RedisBroadcaster(RedisTarget(redis_url, channel=channel, tile_ttl_s=60, ttl_minzoom=10))
    shallow = coalesce([TileEvent(tile_key(9, 1, 1), "WebMercatorQuad", 9, 1, 1, 1, (1,), T0,
                                  "s", "test", None, 0.0)])  # fmt: skip
    assert b.publish([update(1), shallow]) == [1, 1]
    assert 0 < redis_client.ttl("tilepipe:tile:WebMercatorQuad:10:5:7") <= 60
    assert redis_client.ttl("tilepipe:tile:WebMercatorQuad:9:1:1") == -1  # never expires
    b.close()


def test_the_publish_mode_is_publish_or_spublish(redis_url):
    with pytest.raises(ValueError, match="not one of publish, spublish"):
        RedisTarget(redis_url, mode="set")  # type: ignore[arg-type]
