"""The Redis broadcaster against a real Redis: compare-and-set + publish."""

from __future__ import annotations

import json

import pytest

from operators.coalesce import coalesce
from sinks.redis import RedisBroadcaster, RedisTarget
from tests.support.services import RedisSubscriber
from tilepipe.records import TileEvent
from tilepipe.tiles import tile_key
from tilepipe.versions import version_key

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000


def update(version, ts=0, obj="", x=5, **kw):
    ev = TileEvent(tile_key(10, x, 7), "WebMercatorQuad", 10, x, 7, version, version_key(version),
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
