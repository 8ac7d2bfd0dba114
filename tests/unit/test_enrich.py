"""Fan-out of feature and telemetry events into tile events (stage 3)."""

from __future__ import annotations

import json
from collections import Counter

import h3
import pytest

from operators.enrich import EnrichConfig, expand, expand_batch
from operators.validate import ValidationConfig, validate_record
from tilepipe.records import DeadLetter, FanOutEvent, RawRecord, TileEvent
from tilepipe.wire import GeometryRules

NOW = 1_800_000_000_000
CFG = EnrichConfig(feature_minzoom=10, feature_maxzoom=14, max_tiles_per_event=100_000)


def record(**fields) -> FanOutEvent | TileEvent | DeadLetter:
    doc = {"event_id": "e1", "version": 3, "source": "osm", "ts": NOW, **fields}
    rec = RawRecord(json.dumps(doc).encode(), {"file": "t", "line": 1}, NOW)
    return validate_record(rec, ValidationConfig(geometry=GeometryRules(max_vertices=1000)))


def square(lon: float, lat: float, d: float) -> dict:
    ring = [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def feature(geometry: dict, **kw) -> FanOutEvent:
    ev = record(kind="feature", feature_id="lake-1", op="upsert", geometry=geometry, **kw)
    assert isinstance(ev, FanOutEvent), ev
    return ev


def tiles_of(events: list[TileEvent]) -> set[tuple[int, int, int]]:
    return {(e.z, e.x, e.y) for e in events}


def test_a_point_dirties_one_tile_per_zoom_and_counts_once():
    out = expand(feature({"type": "Point", "coordinates": [13.4, 52.52]}), CFG)
    assert sorted(e.z for e in out) == [10, 11, 12, 13, 14]
    z14 = next(e for e in out if e.z == 14)
    assert (z14.x, z14.y) == (8801, 5373)  # x = (13.4 + 180) / 360 * 2**14 = 8801.85
    assert sum(e.weight for e in out) == 1  # one input record, counted once
    assert {e.object_id for e in out} == {"feature:osm:lake-1"}
    assert {e.coverage for e in out} == {"exact"}
    assert all(e.version == 3 and e.event_id == "e1" for e in out)


def test_parents_are_derived_from_the_deepest_zoom():
    out = tiles_of(expand(feature(square(13.3, 52.45, 0.2)), CFG))
    for z in range(10, 14):
        assert {(z, x, y) for (zz, x, y) in out if zz == z} == {
            (z, x >> (14 - z), y >> (14 - z)) for (zz, x, y) in out if zz == 14
        }


def test_buffer_adds_neighbours_and_keeps_the_cover():
    point = {"type": "Point", "coordinates": [13.40335, 52.52]}  # just east of a tile edge
    plain = tiles_of(expand(feature(point), CFG))
    buffered = tiles_of(expand(feature(point, buffer=64), CFG))
    assert plain < buffered


def test_diff_expire_dirties_only_what_changed():
    big = square(13.0, 52.0, 0.5)
    moved = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.52, 52.0], [13.52, 52.5],
                                                 [13.0, 52.5], [13.0, 52.0]]]}  # fmt: skip
    whole = tiles_of(expand(feature(moved), CFG))
    diff = tiles_of(expand(feature(moved, previous_geometry=big), CFG))
    no_diff = tiles_of(
        expand(
            feature(moved, previous_geometry=big),
            EnrichConfig(**{**CFG.__dict__, "diff_expire": False}),
        )
    )
    assert diff and diff < whole  # only the strip along the moved edge
    assert no_diff == whole
    same = tiles_of(expand(feature(big, previous_geometry=big), CFG))
    assert same == tiles_of(expand(feature(big), CFG))  # unchanged shape: attributes changed


def test_over_budget_falls_back_to_a_coarser_zoom_and_says_so():
    cfg = EnrichConfig(feature_minzoom=0, feature_maxzoom=14, max_tiles_per_event=200)
    out = expand(feature(square(5.0, 45.0, 4.0)), cfg)
    assert isinstance(out, list) and 0 < len(out) <= 200
    assert {e.coverage for e in out} == {"zoom_capped"}
    assert max(e.z for e in out) < 14


def test_telemetry_dirties_the_tiles_under_its_h3_cell():
    ev = record(kind="telemetry", sensor_id="s-7", lat=52.52, lon=13.405, temperature=21.5)
    assert isinstance(ev, FanOutEvent)
    out = expand(ev, CFG)
    cell = h3.latlng_to_cell(52.52, 13.405, CFG.h3_resolution)
    assert {e.h3_cell for e in out} == {cell}
    assert set(Counter(e.z for e in out)) == set(CFG.telemetry_zooms)
    assert {e.object_id for e in out} == {"sensor:osm:s-7"} and sum(e.weight for e in out) == 1


@pytest.mark.parametrize(
    ("geometry", "reason"),
    [
        ({"type": "Polygon", "coordinates": []}, "empty_geometry"),
        ({"type": "Polygon", "coordinates": [1, 2]}, "invalid_geojson"),
        ({"type": "Hexagon", "coordinates": [1, 2]}, "invalid_geojson"),
        ({"type": "Point", "coordinates": [13.4, 152.5]}, "invalid_coordinates"),
        ({"type": "LineString", "coordinates": [[0, 0]] * 1001}, "too_many_vertices"),
        ("POINT (1 2)", "invalid_geojson"),
    ],
)
def test_bad_geometries_are_dead_lettered(geometry, reason):
    dead = record(kind="feature", feature_id="f", op="upsert", geometry=geometry)
    assert isinstance(dead, DeadLetter)
    assert dead.reason == reason and dead.field == "geometry"


def test_invalid_geometry_is_repaired_or_refused_per_setting():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    ok = record(kind="feature", feature_id="f", op="upsert", geometry=bowtie)
    assert isinstance(ok, FanOutEvent) and ok.model.geometry.is_valid
    strict = ValidationConfig(geometry=GeometryRules(repair=False))
    doc = {"event_id": "e", "version": 1, "source": "s", "ts": NOW, "kind": "feature",
           "feature_id": "f", "op": "upsert", "geometry": bowtie}  # fmt: skip
    dead = validate_record(RawRecord(json.dumps(doc).encode(), {}, NOW), strict)
    assert isinstance(dead, DeadLetter) and dead.reason == "invalid_geometry"


def test_batches_keep_tile_events_cheap_and_expand_the_rest():
    tile = record(kind="tile", z=3, x=1, y=2)
    point = feature({"type": "Point", "coordinates": [0.5, 0.5]})
    out = expand_batch([tile, point], CFG)
    assert out[0] is tile and len(out) == 1 + 5


def test_a_delete_dirties_where_the_feature_was():
    where = square(13.3, 52.45, 0.05)
    deleted = record(kind="feature", feature_id="lake-1", op="delete", geometry=where,
                     previous_geometry=square(10.0, 50.0, 0.05))  # fmt: skip
    assert isinstance(deleted, FanOutEvent)
    assert tiles_of(expand(deleted, CFG)) == tiles_of(expand(feature(where), CFG))
