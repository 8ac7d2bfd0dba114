"""Features and telemetry through the real parts: Kafka in, Redis out."""

from __future__ import annotations

import time

import pytest

from tests.support.events import dumps, feature_event, telemetry_event
from tests.support.job import counts, run_to_end
from tests.support.services import RedisSubscriber
from tilepipe.cover import cover_range
from tilepipe.geometry import from_geojson

pytestmark = pytest.mark.integration

# A boundary (a synthetic district outline around Berlin-Mitte).
BOUNDARY = {"type": "Polygon", "coordinates": [[
    [13.36, 52.50], [13.43, 52.49], [13.45, 52.53], [13.40, 52.545], [13.35, 52.53],
    [13.36, 52.50],
]]}  # fmt: skip


def test_a_boundary_change_broadcasts_every_covered_tile_once(
    kafka, redis_url, redis_client, channel
):
    topic = kafka.new_topic("features")
    now = int(time.time() * 1000)
    event = feature_event(
        event_id="b-1", version=7, source="admin", ts=now, feature_id="district-11",
        geometry=BOUNDARY, minzoom=8, maxzoom=15,
    )  # fmt: skip
    kafka.produce(topic, [dumps(event)])
    expected = cover_range(from_geojson(BOUNDARY), 8, 15, 0.0, 10_000, 5.0)
    assert expected.method == "exact" and len(expected.tiles) > 50
    with RedisSubscriber(redis_url, channel) as sub:
        done = run_to_end("--source", kafka.url(topic), "--sink", f"{redis_url}?channel={channel}",
                          "--dlq", "file:/dev/null")  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        got = sub.wait_for(len(expected.tiles))
        assert sub.settle(quiet=0.3) == got
    assert sorted((m["z"], m["x"], m["y"]) for m in got) == expected.tiles  # each exactly once
    assert {m["coverage"] for m in got} == {"exact"} and {m["version"] for m in got} == {7}
    assert counts(done.stderr.decode()) == {"in": 1, "broadcast": 1, "duplicate": 0, "stale": 0,
                                            "dead_letter": 0}  # fmt: skip


def test_a_telemetry_burst_is_coalesced(kafka, redis_url, redis_client, channel):
    topic = kafka.new_topic("telemetry")
    now = int(time.time() * 1000)
    readings = [
        dumps(
            telemetry_event(
                event_id=f"r{i}",
                version=i,
                source="gw",
                ts=now + i,
                sensor_id="pm25-42",
                lat=52.5163,
                lon=13.3777,
                pm25=10 + i % 7,
            )
        )
        for i in range(1, 1001)
    ]
    kafka.produce(topic, readings)
    with RedisSubscriber(redis_url, channel) as sub:
        done = run_to_end("--source", kafka.url(topic), "--sink", f"{redis_url}?channel={channel}",
                          "--dlq", "file:/dev/null", "--max-delay", "2s")  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        got = sub.settle(quiet=0.5)
    tiles = {(m["z"], m["x"], m["y"]) for m in got}
    assert len(got) == len(tiles)  # a thousand readings, one broadcast per tile
    assert {m["version"] for m in got} == {1000}
    assert {z for z, _, _ in tiles} == {10, 12, 14}
    assert all(m["h3"] and m["coverage"] == "h3" for m in got)
    assert counts(done.stderr.decode())["broadcast"] == 1000
