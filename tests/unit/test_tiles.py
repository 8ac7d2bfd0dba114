"""Tile math for WebMercatorQuad: bounds, quadkeys, tile keys, bbox checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilepipe.tiles import (
    EARTH_RADIUS_M,
    MAX_LATITUDE,
    MAX_ZOOM,
    ORIGIN_SHIFT_M,
    Bounds,
    TileId,
    bbox_matches,
    from_quadkey,
    parse_tile_key,
    quadkey,
    tile_bounds_lonlat,
    tile_bounds_mercator,
    tile_count,
    tile_key,
)

WORLD_M = 20037508.342789244
WORLD_LAT = 85.0511287798066


@st.composite
def tiles(draw, min_zoom: int = 0, max_zoom: int = MAX_ZOOM) -> tuple[int, int, int]:
    z = draw(st.integers(min_zoom, max_zoom))
    n = 1 << z
    return z, draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))


def lat_of_row(row: int, z: int) -> float:
    """Row edge latitude by an independent formula (2*atan(exp(y)) - pi/2)."""
    merc_y = math.pi * (1 - 2 * row / (1 << z))
    return math.degrees(2 * math.atan(math.exp(merc_y)) - math.pi / 2)


def mercator_to_lonlat(mx: float, my: float) -> tuple[float, float]:
    lon = math.degrees(mx / EARTH_RADIUS_M)
    lat = math.degrees(2 * math.atan(math.exp(my / EARTH_RADIUS_M)) - math.pi / 2)
    return lon, lat


# -- constants and known values -------------------------------------------------------


def test_constants() -> None:
    assert pytest.approx(WORLD_M, abs=1e-9) == ORIGIN_SHIFT_M
    assert math.degrees(math.atan(math.sinh(math.pi))) == pytest.approx(MAX_LATITUDE, abs=1e-12)
    assert MAX_ZOOM == 30
    assert [tile_count(z) for z in (0, 1, 2, 14, 30)] == [1, 2, 4, 16384, 1 << 30]


def test_world_tile_lonlat() -> None:
    b = tile_bounds_lonlat(0, 0, 0)
    assert isinstance(b, Bounds)
    assert b.west == -180.0
    assert b.east == 180.0
    assert b.north == pytest.approx(WORLD_LAT, abs=1e-12)
    assert b.south == pytest.approx(-WORLD_LAT, abs=1e-12)


def test_world_tile_mercator() -> None:
    b = tile_bounds_mercator(0, 0, 0)
    assert b == pytest.approx((-WORLD_M, -WORLD_M, WORLD_M, WORLD_M), abs=1e-6)


@pytest.mark.parametrize(
    ("x", "y", "lonlat", "merc"),
    [
        (0, 0, (-180.0, 0.0, 0.0, WORLD_LAT), (-WORLD_M, 0.0, 0.0, WORLD_M)),
        (1, 0, (0.0, 0.0, 180.0, WORLD_LAT), (0.0, 0.0, WORLD_M, WORLD_M)),
        (0, 1, (-180.0, -WORLD_LAT, 0.0, 0.0), (-WORLD_M, -WORLD_M, 0.0, 0.0)),
        (1, 1, (0.0, -WORLD_LAT, 180.0, 0.0), (0.0, -WORLD_M, WORLD_M, 0.0)),
    ],
)
def test_z1_tiles(x: int, y: int, lonlat: tuple, merc: tuple) -> None:
    # Row 0 is the northern row (XYZ / 2D-TMS convention).
    assert tile_bounds_lonlat(1, x, y) == pytest.approx(lonlat, abs=1e-9)
    assert tile_bounds_mercator(1, x, y) == pytest.approx(merc, abs=1e-6)


def test_berlin_z14_tile() -> None:
    b = tile_bounds_lonlat(14, 8802, 5373)
    assert b.west == 13.4033203125
    assert b.east == 13.42529296875
    assert b.north == pytest.approx(52.522905940278, abs=1e-9)
    assert b.south == pytest.approx(52.509534770327, abs=1e-9)
    assert b.north == pytest.approx(lat_of_row(5373, 14), abs=1e-9)
    assert b.south == pytest.approx(lat_of_row(5374, 14), abs=1e-9)
    # Berlin's Alexanderplatz (13.4132, 52.5219) lies in this tile.
    assert b.west < 13.4132 < b.east
    assert b.south < 52.5219 < b.north

    m = tile_bounds_mercator(14, 8802, 5373)
    size = 2 * WORLD_M / 16384
    assert m.west == pytest.approx(-WORLD_M + 8802 * size, abs=1e-6)
    assert m.west == pytest.approx(1492050.7921, abs=1e-3)
    assert m.north == pytest.approx(WORLD_M - 5373 * size, abs=1e-6)
    assert m.east - m.west == pytest.approx(size, abs=1e-6)
    assert m.north - m.south == pytest.approx(size, abs=1e-6)


def test_berlin_tile_key() -> None:
    assert quadkey(14, 8802, 5373) == "12021023322212"
    assert tile_key(14, 8802, 5373) == "14:12021023322212"


@pytest.mark.parametrize(
    ("z", "x", "y", "qk"),
    [
        (0, 0, 0, ""),
        (1, 0, 0, "0"),
        (1, 1, 0, "1"),
        (1, 0, 1, "2"),
        (1, 1, 1, "3"),
        (3, 3, 5, "213"),  # the example in Bing Maps' tile-system documentation
        (2, 3, 3, "33"),
    ],
)
def test_known_quadkeys(z: int, x: int, y: int, qk: str) -> None:
    assert quadkey(z, x, y) == qk
    assert from_quadkey(qk) == (z, x, y)
    assert tile_key(z, x, y) == f"{z}:{qk}"


def test_z0_key_is_not_empty() -> None:
    assert tile_key(0, 0, 0) == "0:"
    assert parse_tile_key("0:") == (0, 0, 0)


# -- properties ---------------------------------------------------------------------


@given(tiles())
def test_quadkey_round_trip(t: tuple[int, int, int]) -> None:
    z, x, y = t
    qk = quadkey(z, x, y)
    assert len(qk) == z
    assert set(qk) <= set("0123")
    assert from_quadkey(qk) == (z, x, y)


@given(st.text(alphabet="0123", max_size=MAX_ZOOM))
def test_from_quadkey_round_trip(qk: str) -> None:
    assert quadkey(*from_quadkey(qk)) == qk


@given(tiles())
def test_tile_key_round_trip(t: tuple[int, int, int]) -> None:
    key = tile_key(*t)
    assert key.startswith(f"{t[0]}:")
    assert parse_tile_key(key) == t


def test_parsed_tiles_are_tile_ids_by_name() -> None:
    tile = parse_tile_key(tile_key(14, 8800, 5373))
    assert isinstance(tile, TileId)
    assert (tile.z, tile.x, tile.y) == (14, 8800, 5373)
    assert tile == (14, 8800, 5373)  # still a tuple: unpacks and compares as one
    assert from_quadkey(quadkey(*tile)) == tile
    assert tile_bounds_lonlat(*tile) == tile_bounds_lonlat(14, 8800, 5373)


@given(tiles(max_zoom=MAX_ZOOM - 1))
def test_children_share_parent_prefix(t: tuple[int, int, int]) -> None:
    z, x, y = t
    parent = quadkey(z, x, y)
    kids = [quadkey(z + 1, 2 * x + dx, 2 * y + dy) for dy in (0, 1) for dx in (0, 1)]
    assert kids == [parent + d for d in "0123"]


@given(tiles(max_zoom=MAX_ZOOM - 1))
def test_children_partition_parent_bounds(t: tuple[int, int, int]) -> None:
    z, x, y = t
    p = tile_bounds_lonlat(z, x, y)
    nw = tile_bounds_lonlat(z + 1, 2 * x, 2 * y)
    se = tile_bounds_lonlat(z + 1, 2 * x + 1, 2 * y + 1)
    assert nw.west == p.west
    assert nw.north == pytest.approx(p.north, abs=1e-9)
    assert se.east == pytest.approx(p.east, abs=1e-9)
    assert se.south == pytest.approx(p.south, abs=1e-9)
    assert nw.east == pytest.approx(se.west, abs=1e-12)
    assert nw.south == pytest.approx(se.north, abs=1e-12)


@given(tiles(max_zoom=20))
def test_lonlat_bounds_well_formed(t: tuple[int, int, int]) -> None:
    z, x, y = t
    b = tile_bounds_lonlat(z, x, y)
    assert -180.0 <= b.west < b.east <= 180.0
    assert -WORLD_LAT - 1e-9 <= b.south < b.north <= WORLD_LAT + 1e-9
    assert b.east - b.west == pytest.approx(360.0 / (1 << z), rel=1e-9)
    assert b.north == pytest.approx(lat_of_row(y, z), abs=1e-9)
    assert b.south == pytest.approx(lat_of_row(y + 1, z), abs=1e-9)


@given(tiles(max_zoom=20))
def test_mercator_and_lonlat_bounds_agree(t: tuple[int, int, int]) -> None:
    z, x, y = t
    m = tile_bounds_mercator(z, x, y)
    g = tile_bounds_lonlat(z, x, y)
    west, south = mercator_to_lonlat(m.west, m.south)
    east, north = mercator_to_lonlat(m.east, m.north)
    assert (west, south, east, north) == pytest.approx(tuple(g), abs=1e-7)
    size = 2 * WORLD_M / (1 << z)
    assert m.east - m.west == pytest.approx(size, rel=1e-9)
    assert m.north - m.south == pytest.approx(size, rel=1e-9)


@given(tiles(min_zoom=1, max_zoom=20))
def test_neighbours_share_edges(t: tuple[int, int, int]) -> None:
    z, x, y = t
    n = 1 << z
    b = tile_bounds_lonlat(z, x, y)
    if x + 1 < n:
        assert tile_bounds_lonlat(z, x + 1, y).west == b.east
    if y + 1 < n:
        assert tile_bounds_lonlat(z, x, y + 1).north == b.south


# -- parse_tile_key rejects what it cannot have made ----------------------------------


@pytest.mark.parametrize("key", ["3:01", "1:", "0:0", "a:0", "12", ":", "2:0x"])
def test_parse_tile_key_rejects_malformed(key: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_key(key)


@pytest.mark.parametrize("key", ["1:4", "2:09"])
def test_parse_tile_key_rejects_non_quadkey_digits(key: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_key(key)


# -- bbox_matches ---------------------------------------------------------------------


@given(tiles())
def test_bbox_matches_own_bounds(t: tuple[int, int, int]) -> None:
    assert bbox_matches(*t, tuple(tile_bounds_lonlat(*t)))


def test_bbox_matches_berlin() -> None:
    exact = (13.4033203125, 52.50953477032728, 13.42529296875, 52.522905940278065)
    assert bbox_matches(14, 8802, 5373, exact)
    # A producer rounding to 7 decimals (~1 cm) still matches.
    assert bbox_matches(14, 8802, 5373, tuple(round(v, 7) for v in exact))
    # Off by 1e-5 degrees (~1 m) does not.
    assert not bbox_matches(14, 8802, 5373, (exact[0] + 1e-5, *exact[1:]))
    # Axis order matters: [minlat, minlon, ...] is wrong.
    assert not bbox_matches(14, 8802, 5373, (exact[1], exact[0], exact[3], exact[2]))


def test_bbox_matches_within_ten_centimetres_only() -> None:
    b = tile_bounds_lonlat(5, 10, 12)
    assert bbox_matches(5, 10, 12, (b.west + 5e-7, b.south, b.east, b.north))
    assert not bbox_matches(5, 10, 12, (b.west + 0.01, b.south, b.east, b.north))


@given(tiles(max_zoom=24))
def test_bbox_of_neighbour_does_not_match(t: tuple[int, int, int]) -> None:
    z, x, y = t
    n = 1 << z
    for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
        if 0 <= nx < n and 0 <= ny < n:
            assert not bbox_matches(z, x, y, tuple(tile_bounds_lonlat(z, nx, ny)))


@pytest.mark.parametrize(
    ("z", "x", "y", "nx", "ny"),
    [
        (25, 0, 1, 0, 0),  # top rows: row height ~9e-7 deg at 85 deg N
        (28, 7, 1, 7, 2),
        (29, 1 << 28, 1 << 28, (1 << 28) + 1, 1 << 28),  # at the equator, east neighbour
        (30, 1 << 29, 1 << 29, 1 << 29, (1 << 29) + 1),  # at the equator, south neighbour
    ],
)
def test_bbox_of_neighbour_does_not_match_at_high_zoom(
    z: int, x: int, y: int, nx: int, ny: int
) -> None:
    assert bbox_matches(z, x, y, tuple(tile_bounds_lonlat(z, x, y)))
    assert not bbox_matches(z, x, y, tuple(tile_bounds_lonlat(z, nx, ny)))


def test_bbox_matches_wrong_length_raises() -> None:
    # The wire model enforces four numbers; the function itself is strict about it.
    with pytest.raises(ValueError):
        bbox_matches(0, 0, 0, (-180.0, -WORLD_LAT, 180.0))


def test_bbox_with_nan_does_not_match() -> None:
    b = tile_bounds_lonlat(0, 0, 0)
    assert not bbox_matches(0, 0, 0, (math.nan, b.south, b.east, b.north))
