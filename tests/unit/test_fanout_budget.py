"""Fan-out budgets that hold for any record and any batch (review H6).

Telemetry applied no tile budget (a reading at lat 90 was 21,504 tiles), the
"minzoom alone" path returned up to 100k tiles without a deadline, and a
source batch was expanded whole (303,495 tile events from 100 small records).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import h3
import pytest
import shapely
from shapely.geometry import box

from operators.enrich import MIN_TILES_PER_EVENT, EnrichConfig, expand, expand_batch
from operators.validate import ValidationConfig, validate_record
from tilepipe.cover import cover_range
from tilepipe.records import FanOutEvent, RawRecord, TileEvent
from tilepipe.tiles import MAX_LATITUDE

NOW = 1_800_000_000_000
CFG = EnrichConfig()  # the documented defaults: 10,000 tiles a record, z10/12/14 for telemetry


def record(**fields) -> FanOutEvent:
    doc = {"event_id": "e1", "version": 3, "source": "it", "ts": NOW, **fields}
    ev = validate_record(RawRecord(json.dumps(doc).encode(), {"line": 1}, NOW), ValidationConfig())
    assert isinstance(ev, FanOutEvent), ev
    return ev


def reading(lat: float, lon: float, sensor: str = "s") -> FanOutEvent:
    return record(kind="telemetry", sensor_id=sensor, lat=lat, lon=lon, t=1)


def box_feature(w: float, s: float, e: float, n: float, fid: str = "f", **kw) -> FanOutEvent:
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    return record(kind="feature", feature_id=fid, op="upsert", geometry=geometry, **kw)


@pytest.mark.parametrize(
    ("lat", "lon"), [(90.0, 13.0), (89.99, 13.0), (-90.0, 0.0), (85.06, 179.9)]
)
def test_polar_readings_dirty_the_edge_tiles_under_their_cell(lat: float, lon: float) -> None:
    out = expand(reading(lat, lon), CFG)
    assert isinstance(out, list) and out
    # A few tiles a zoom (the cell is ~0.02° wide there), on the edge row: not the
    # whole row (21,504 tiles at lat 90 before).
    per_zoom = Counter(e.z for e in out)
    assert set(per_zoom) == set(CFG.telemetry_zooms) and max(per_zoom.values()) <= 4, per_zoom
    assert all(min(e.y, (1 << e.z) - 1 - e.y) <= 1 for e in out)  # at the edge
    # The message still carries the reading's own cell.
    assert {e.h3_cell for e in out} == {h3.latlng_to_cell(lat, lon, CFG.h3_resolution)}
    assert sum(e.weight for e in out) == 1 and {e.coverage for e in out} == {"h3"}


def test_telemetry_on_the_map_is_unchanged() -> None:
    out = expand(reading(MAX_LATITUDE - 0.01, 13.0), CFG)
    assert isinstance(out, list) and {e.z for e in out} == {10, 12, 14}


def test_telemetry_is_held_to_the_per_event_budget() -> None:
    # A resolution-0 cell is ~1,000 km across: far over 10,000 tiles at z14.
    cfg = EnrichConfig(h3_resolution=0, max_tiles_per_event=500)
    out = expand(reading(52.5, 13.4), cfg)
    assert isinstance(out, list) and 0 < len(out) <= 500
    assert {e.coverage for e in out} == {"zoom_capped"}
    assert max(e.z for e in out) < 14


def test_minzoom_equal_to_maxzoom_at_high_zoom_is_held_to_the_budget() -> None:
    out = expand(box_feature(10, 45, 13.5, 48.5, minzoom=14, maxzoom=14), CFG)
    assert isinstance(out, list) and 0 < len(out) <= CFG.max_tiles_per_event  # was 37,280
    assert {e.coverage for e in out} == {"zoom_capped"} and {e.z for e in out} == {13}


def test_a_world_sized_shape_is_held_to_the_budget() -> None:
    out = expand(box_feature(-180, -85, 180, 85, minzoom=14, maxzoom=14), CFG)
    assert isinstance(out, list) and 0 < len(out) <= CFG.max_tiles_per_event
    assert {e.coverage for e in out} == {"zoom_capped"}


def test_a_batch_is_held_to_its_tile_budget_and_every_record_keeps_tiles() -> None:
    cfg = EnrichConfig(max_tiles_per_batch=20_000)
    # 40 boxes of ~3,000 tiles each at z0-z14 (the review's 100 -> 303k case, smaller).
    batch = [box_feature(i * 2.0, 45, i * 2.0 + 0.9, 45.6, f"f{i}") for i in range(40)]
    single = expand(batch[0], cfg)
    assert isinstance(single, list) and 2_000 < len(single) <= cfg.max_tiles_per_event
    out = expand_batch(batch, cfg)
    tiles = [e for e in out if isinstance(e, TileEvent)]
    assert len(tiles) <= cfg.max_tiles_per_batch + len(batch) * MIN_TILES_PER_EVENT
    assert len(tiles) < 40 * len(single) // 3
    by_object: dict[str, list[TileEvent]] = {}
    for e in tiles:
        by_object.setdefault(e.object_id or "", []).append(e)
    assert len(by_object) == 40  # nobody dropped
    assert all(sum(e.weight for e in evs) == 1 for evs in by_object.values())
    assert {e.coverage for e in by_object["feature:it:f0"]} == {"exact"}
    assert {e.coverage for e in by_object["feature:it:f39"]} == {"zoom_capped"}


def comb(teeth: int, vertical: bool) -> dict:
    """A valid polygon with thin teeth; a vertical and a horizontal one cross teeth² times."""
    pts: list[list[float]] = []
    for i in range(teeth):
        a, b = i / teeth * 0.1, i / teeth * 0.1 + 0.05 / teeth
        if vertical:
            pts += [[13 + a, 52], [13 + a, 52.1], [13 + b, 52.1], [13 + b, 52]]
        else:
            pts += [[13, 52 + a], [13.1, 52 + a], [13.1, 52 + b], [13, 52 + b]]
    pts += [[13.1, 51.99], [13, 51.99]] if vertical else [[12.99, 52.1], [12.99, 52]]
    return {"type": "Polygon", "coordinates": [[*pts, pts[0]]]}


def test_diff_expiry_is_held_to_the_cover_budget_and_falls_back_to_old_and_new() -> None:
    new, old = comb(800, True), comb(800, False)  # the symmetric difference took 71 s
    fan = record(kind="feature", feature_id="c", op="upsert", geometry=new,
                 previous_geometry=old, maxzoom=12)  # fmt: skip
    started = time.monotonic()
    out = expand(fan, CFG)
    assert time.monotonic() - started < 20  # a generous ceiling; the budget is 0.25 s
    # Old and new, and their union too costly: their bounding box, recorded as such.
    assert isinstance(out, list) and {e.coverage for e in out} == {"bbox"}
    m = fan.model
    both = cover_range(shapely.GeometryCollection([m.geometry, m.previous_geometry]), 0, 12)
    assert sorted((e.z, e.x, e.y) for e in out) == both.tiles


def test_diff_expiry_of_an_ordinary_edit_still_dirties_only_the_change() -> None:
    lake = box_feature(13.0, 52.0, 13.2, 52.2).model.geometry
    new = shapely.geometry.mapping(shapely.segmentize(lake, 0.0005))  # ~1,600 vertices
    old = shapely.geometry.mapping(shapely.segmentize(box(13.0, 52.0, 13.2, 52.25), 0.0005))
    fan = record(kind="feature", feature_id="l", op="upsert", geometry=new,
                 previous_geometry=old, maxzoom=14)  # fmt: skip
    out = expand(fan, CFG)
    assert isinstance(out, list) and {e.coverage for e in out} == {"exact"}
    changed = cover_range(box(13.0, 52.2, 13.2, 52.25), 0, 14)
    assert sorted((e.z, e.x, e.y) for e in out) == changed.tiles
