"""tilepipe.cover: exact tile covers against a brute force, fallbacks, hygiene.

The brute force is deliberately independent of the module: it projects with
its own function and tests every tile of the (extended, then folded) bounding
box range one by one with plain, unprepared shapely predicates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely import affinity
from shapely.geometry import (
    GeometryCollection,
    LineString,
    MultiLineString,
    MultiPoint,
    MultiPolygon,
    Point,
    Polygon,
    box,
)

from tilepipe.cover import Cover, cover_count, cover_range, tile_cover
from tilepipe.geometry import GeometryError, check_geometry, from_geojson
from tilepipe.tiles import tile_bounds_lonlat

MAX_LAT = 85.0511287798066
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mercator(coords: np.ndarray) -> np.ndarray:
    lat = np.radians(np.clip(coords[:, 1], -MAX_LAT, MAX_LAT))
    u = (coords[:, 0] + 180.0) / 360.0
    v = np.clip((1.0 - np.arcsinh(np.tan(lat)) / math.pi) / 2.0, 0.0, 1.0)
    return np.column_stack([u, v])


def brute(geom, z: int, buffer_px: float = 0.0) -> set[tuple[int, int]]:
    """Every tile of the bbox range, one predicate each (folded in x)."""
    g = shapely.transform(geom, mercator)
    n = 1 << z
    b = buffer_px / (256 * n)
    minx, miny, maxx, maxy = g.bounds
    xs = range(math.floor((minx - b) * n) - 1, math.floor((maxx + b) * n) + 2)
    ys = range(max(0, math.floor((miny - b) * n) - 1), min(n, math.floor((maxy + b) * n) + 2))
    out = set()
    for x in xs:
        for y in ys:
            tile = box(x / n, y / n, (x + 1) / n, (y + 1) / n)
            hit = g.intersects(tile) if b == 0 else g.distance(tile) <= b
            if hit:
                out.add((x % n, y))
    return out


def by_zoom(cover: Cover) -> dict[int, set[tuple[int, int]]]:
    out: dict[int, set[tuple[int, int]]] = {}
    for z, x, y in cover.tiles:
        out.setdefault(z, set()).add((x, y))
    return out


# --------------------------------------------------------------------------
# Random geometries in a small region, sized to the zoom
# --------------------------------------------------------------------------


@st.composite
def scenes(draw, max_zoom: int = 16, max_tiles_across: float = 10.0):
    """(geometry, zoom): vertices spread over up to ``max_tiles_across`` tiles."""
    z = draw(st.integers(0, max_zoom))
    tile_deg = 360.0 / (1 << z)
    extent = min(25.0, tile_deg * draw(st.floats(0.02, max_tiles_across)))
    lon0 = draw(st.floats(-150.0, 150.0))
    lat0 = draw(st.floats(-65.0, 65.0))
    snap = draw(st.booleans())  # put vertices on tile edges (exact in u) to hit ties

    def vertex():
        dx = draw(st.floats(-1.0, 1.0))
        dy = draw(st.floats(-1.0, 1.0))
        lon = lon0 + dx * extent
        if snap:
            lon = round((lon + 180.0) / tile_deg) * tile_deg - 180.0
        return (lon, lat0 + dy * extent / 2)

    kinds = ["point", "multipoint", "line", "lines", "hull", "holed", "blob", "mixed", "overlap"]
    kinds.append("grid")
    kind = draw(st.sampled_from(kinds))
    if kind == "point":
        geom = Point(vertex())
    elif kind == "multipoint":  # over 8 parts: searched through an STRtree
        geom = MultiPoint([vertex() for _ in range(draw(st.integers(1, 30)))])
    elif kind == "line":
        geom = LineString([vertex() for _ in range(draw(st.integers(2, 6)))])
    elif kind == "lines":
        count = draw(st.integers(2, 20))
        geom = MultiLineString([[vertex(), vertex()] for _ in range(count)])
    elif kind == "grid":  # a valid MultiPolygon of many parts, some with holes
        lon, lat = vertex()
        cell = extent / 4
        squares = []
        for i in range(draw(st.integers(1, 5))):
            for j in range(draw(st.integers(2, 4))):
                x, y = lon + i * cell, lat + j * cell / 2
                sq = box(x, y, x + cell * 0.7, y + cell * 0.35)
                if (i + j) % 3 == 0:
                    sq = sq.difference(affinity.scale(sq, 0.5, 0.5))
                squares.append(sq)
        geom = MultiPolygon(squares)
    else:
        hull = MultiPoint([vertex() for _ in range(draw(st.integers(3, 8)))]).convex_hull
        assume(isinstance(hull, Polygon) and hull.area > 0)
        if kind == "hull":
            geom = hull
        elif kind == "holed":
            hole = affinity.scale(hull, 0.5, 0.5, origin="centroid")
            geom = Polygon(hull.exterior.coords, [hole.exterior.coords])
        elif kind == "blob":  # non-convex: a buffered line
            line = LineString([vertex() for _ in range(3)])
            geom = line.buffer(extent / 6, quad_segs=3)
        elif kind == "mixed":
            geom = GeometryCollection([hull, LineString([vertex(), vertex()]), Point(vertex())])
        else:  # members may overlap: the cover must union them, not trip on it
            other = MultiPoint([vertex() for _ in range(4)]).convex_hull
            geom = GeometryCollection([hull, other])
    assume(geom.is_valid and not geom.is_empty)
    return geom, z


def wrap(geom, z: int):
    """Move a scene onto the antimeridian by whole tiles; also return it written
    the GeoJSON way, longitudes wrapped into [-180, 180)."""
    tile_deg = 360.0 / (1 << z)
    lon0 = (geom.bounds[0] + geom.bounds[2]) / 2
    moved = affinity.translate(geom, round((180.0 - lon0) / tile_deg) * tile_deg)

    def wrap_lon(c: np.ndarray) -> np.ndarray:
        return np.column_stack([np.where(c[:, 0] >= 180.0, c[:, 0] - 360.0, c[:, 0]), c[:, 1]])

    # lon and lon - 360 round differently: a vertex a few ulps from a column
    # edge may land on either side of it, in the input or in the oracle.
    col = (shapely.get_coordinates(moved)[:, 0] + 180.0) / 360.0 * (1 << z)
    off_edge = np.abs(col - np.round(col))
    assume(np.all((off_edge == 0) | (off_edge > 1e-9)))
    return moved, shapely.transform(moved, wrap_lon)


buffers = st.one_of(st.just(0.0), st.floats(0.0, 300.0), st.sampled_from([256.0, 257.0, 1.0]))


@PROPS
@given(scenes())
def test_exact_cover_equals_brute_force(scene) -> None:
    geom, z = scene
    assert tile_cover(geom, z) == brute(geom, z)


@PROPS
@given(scenes(max_tiles_across=6.0), buffers)
def test_buffered_cover_equals_brute_force_and_grows(scene, buffer_px: float) -> None:
    geom, z = scene
    got = tile_cover(geom, z, buffer_px)
    assert got == brute(geom, z, buffer_px)
    assert got >= tile_cover(geom, z)
    assert cover_count(geom, z, buffer_px) == len(got)


@PROPS
@given(scenes(max_zoom=14, max_tiles_across=4.0), buffers, st.integers(0, 5))
def test_cover_range_derives_every_zoom_exactly(scene, buffer_px: float, depth: int) -> None:
    geom, maxzoom = scene
    minzoom = max(0, maxzoom - depth)
    cover = cover_range(geom, minzoom, maxzoom, buffer_px, max_tiles=10**7)
    assert cover.method == "exact"
    assert (cover.zoom, cover.requested_maxzoom) == (maxzoom, maxzoom)
    assert cover.tiles == sorted(set(cover.tiles))
    got = by_zoom(cover)
    for z in range(minzoom, maxzoom + 1):  # derived parents == direct covers
        assert got[z] == tile_cover(geom, z, buffer_px), z


@PROPS
@given(scenes(max_zoom=14, max_tiles_across=6.0), buffers)
def test_wrapped_geometry_covers_like_its_unwrapped_self(scene, buffer_px: float) -> None:
    moved, wrapped = wrap(*scene)
    z = scene[1]
    assert tile_cover(wrapped, z, buffer_px) == brute(moved, z, buffer_px)


# --------------------------------------------------------------------------
# Edges, corners, holes, poles, antimeridian
# --------------------------------------------------------------------------


@pytest.mark.parametrize("z", [1, 2, 7, 16, 24])
def test_point_on_tile_corner_covers_the_four_tiles(z: int) -> None:
    h = 1 << (z - 1)
    expected = {(h - 1, h - 1), (h, h - 1), (h - 1, h), (h, h)}
    assert tile_cover(Point(0.0, 0.0), z) == expected
    cover = cover_range(Point(0.0, 0.0), z, z)
    assert by_zoom(cover)[z] == expected


def test_point_on_a_column_edge_covers_both_columns() -> None:
    z = 9
    lon = 37 * 360.0 / (1 << z) - 180.0  # west edge of column 37
    assert {x for x, _ in tile_cover(Point(lon, 12.3), z)} == {36, 37}


def test_tile_inside_a_hole_is_not_covered() -> None:
    geom = Polygon(box(0, 40, 10, 50).exterior.coords, [box(2, 42, 8, 48).exterior.coords])
    z = 8
    got = tile_cover(geom, z)
    assert got == brute(geom, z)
    inside_hole = [
        (x, y)
        for x in range(128, 136)
        for y in range(80, 100)
        if box(*tile_bounds_lonlat(z, x, y)).within(box(2, 42, 8, 48))
    ]
    assert inside_hole
    assert not got & set(inside_hole)
    # ... and the hole's ring of boundary tiles is covered
    assert got & {(x, y) for x in range(128, 136) for y in range(80, 100)}


def test_polygon_interior_is_covered_without_listing_errors() -> None:
    geom = box(-20, -20, 20, 20)
    z = 10
    assert tile_cover(geom, z) == brute(geom, z)
    assert cover_count(geom, z) == len(tile_cover(geom, z))


@pytest.mark.parametrize("z", [0, 3, 5, 9])
def test_pole_latitudes_are_clamped(z: int) -> None:
    n = 1 << z
    col = int((10 + 180) / 360 * n)
    assert tile_cover(Point(10, 89.9), z) == {(col, 0)}
    assert tile_cover(Point(10, -90), z) == {(col, n - 1)}
    # A line that collapses to one projected point at the clamp still covers.
    assert tile_cover(LineString([(10, 87), (10, 89)]), z) == {(col, 0)}
    cap = box(-10, 86, 10, 90)  # flattened onto the north edge
    assert tile_cover(cap, z) == brute(cap, z) != set()


def test_world_box_is_the_whole_world_not_a_sliver() -> None:
    world = box(-180, -MAX_LAT, 180, MAX_LAT)
    assert tile_cover(world, 3) == {(x, y) for x in range(8) for y in range(8)}
    assert cover_count(world, 12) == 4**12


@pytest.mark.parametrize("z", [0, 2, 4, 8, 12])
@pytest.mark.parametrize("buffer_px", [0.0, 40.0])
def test_line_across_the_antimeridian(z: int, buffer_px: float) -> None:
    crossing = LineString([(179.0, 10.0), (-179.0, 12.0)])
    by_hand = LineString([(179.0, 10.0), (181.0, 12.0)])  # unwrapped by hand; brute folds x
    got = tile_cover(crossing, z, buffer_px)
    assert got == brute(by_hand, z, buffer_px)
    n = 1 << z
    if z >= 4:  # the short way (2° of 360), not the long way round
        assert all(x <= 1 + n // 180 or x >= n - 2 - n // 180 for x, _ in got)


@pytest.mark.parametrize("z", [2, 6, 10])
def test_polygon_across_the_antimeridian_with_a_hole_over_the_seam(z: int) -> None:
    # Fiji-style: shell written with 179 → -179 jumps, hole written east of the seam.
    shell = [(177, -20), (179, -20), (-179, -20), (-177, -20), (-177, -15), (177, -15), (177, -20)]
    hole = [(-178.5, -18.5), (-177.5, -18.5), (-177.5, -16.5), (-178.5, -16.5), (-178.5, -18.5)]
    crossing = Polygon(shell, [hole])
    split = MultiPolygon(
        [box(177, -20, 180, -15), box(-180, -20, -177, -15).difference(Polygon(hole))]
    )
    got = tile_cover(crossing, z)
    assert got == brute(split, z)
    if z == 10:
        col = int((-178 + 180) / 360 * 1024)
        hole_tiles = [
            (x, y)
            for x in range(col - 2, col + 3)
            for y in range(540, 580)
            if box(*tile_bounds_lonlat(z, x, y)).within(Polygon(hole))
        ]
        assert hole_tiles and not got & set(hole_tiles)
    cover = cover_range(crossing, max(0, z - 3), z, max_tiles=10**6)
    assert by_zoom(cover)[z] == got


def test_longitudes_slightly_outside_180_fold_back() -> None:
    assert tile_cover(Point(180.5, 10), 6) == tile_cover(Point(-179.5, 10), 6)
    line = LineString([(179.5, 0.5), (181.0, 1.5)])
    assert tile_cover(line, 9) == tile_cover(LineString([(179.5, 0.5), (-179.0, 1.5)]), 9)
    # Split at the seam, the west part is drawn from -180: the same tiles.
    split = MultiLineString([[(179.5, 0.5), (180.0, 0.5)], [(-180.0, 0.5), (-179.0, 0.5)]])
    assert tile_cover(LineString([(179.5, 0.5), (181.0, 0.5)]), 9) == brute(split, 9)


def test_ring_round_a_pole_is_closed_over_that_pole() -> None:
    ring = [(-170, -70), (-90, -72), (0, -70), (90, -72), (170, -70), (-170, -70)]
    got = tile_cover(Polygon(ring), 3)
    assert {(x, 7) for x in range(8)} <= got  # the cap round the South Pole
    assert all(y >= 5 for _, y in got)


def test_buffer_across_the_seam_reaches_the_other_side() -> None:
    z = 8
    east_edge = Point(179.99, 0.5)
    got = tile_cover(east_edge, z, buffer_px=100)
    assert (0, 127) in got or (0, 128) in got
    assert got == brute(east_edge, z, 100)


def test_a_tile_exactly_at_buffer_distance_is_kept_through_the_quadtree() -> None:
    # GEOS's dwithin and distance disagree at distance == b on some code paths;
    # a parent pruned on such a tie used to lose its child (10 parts: STRtree).
    parts = [[(-172.5, 0), (168.75, 12.5)]] + [[(168.75, 0), (168.75, 6.25)]] * 5
    parts += [[(168.75, 0), (-166.25, 0)]] * 4
    by_hand = [[(lon + 360 if lon < 0 else lon, lat) for lon, lat in p] for p in parts]
    got = tile_cover(MultiLineString(parts), 5, 256)
    assert (29, 14) in got
    assert got == brute(MultiLineString(by_hand), 5, 256)


# --------------------------------------------------------------------------
# Budgets and fallbacks
# --------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenes(max_zoom=12, max_tiles_across=8.0),
    st.integers(1, 300),
    st.integers(0, 4),
    st.sampled_from([0.0, 0.0, 20.0, 300.0]),
)
def test_tile_budget_caps_the_zoom(scene, max_tiles: int, depth: int, buffer_px: float) -> None:
    geom, maxzoom = scene
    minzoom = max(0, maxzoom - depth)
    cover = cover_range(geom, minzoom, maxzoom, buffer_px, max_tiles)
    assert cover.tiles and len(cover.tiles) <= max_tiles  # whatever the zooms
    got = by_zoom(cover)
    assert max(got) == cover.zoom
    exact = {z: tile_cover(geom, z, buffer_px) for z in range(maxzoom + 1)}
    for z in got:
        assert got[z] == exact[z]  # exact at every zoom it lists
    if sum(len(exact[z]) for z in range(minzoom, maxzoom + 1)) <= max_tiles:
        assert cover.method == "exact" and cover.zoom == maxzoom and min(got) == minzoom
        return
    assert cover.method == "zoom_capped"
    if len(exact[minzoom]) > max_tiles:  # minzoom alone is over: the deepest coarser zoom
        assert set(got) == {cover.zoom} and cover.zoom < minzoom
        assert len(exact[cover.zoom + 1]) > max_tiles
    else:  # the deepest zoom that fits
        assert min(got) == minzoom
        assert sum(len(exact[z]) for z in range(minzoom, cover.zoom + 2)) > max_tiles


def test_minzoom_alone_over_budget_goes_to_the_deepest_coarser_zoom_that_fits() -> None:
    geom = box(0, 40, 10, 50)
    assert len(tile_cover(geom, 8)) > 5
    cover = cover_range(geom, 8, 10, max_tiles=5)
    assert (cover.method, cover.requested_maxzoom) == ("zoom_capped", 10)
    assert cover.zoom < 8 and len(cover.tiles) <= 5
    assert by_zoom(cover) == {cover.zoom: tile_cover(geom, cover.zoom)}
    assert len(tile_cover(geom, cover.zoom + 1)) > 5


def test_minzoom_equal_to_maxzoom_at_high_zoom_stays_within_budget() -> None:
    # The review's box: 37,280 tiles at z14 alone, returned whole against 10,000.
    geom = box(10, 45, 13.5, 48.5)
    cover = cover_range(geom, 14, 14, max_tiles=10_000, deadline_s=2.0)
    assert cover.method == "zoom_capped" and cover.zoom == 13 and len(cover.tiles) <= 10_000
    assert by_zoom(cover) == {13: tile_cover(geom, 13)}


@pytest.mark.parametrize("deadline_s", [None, 0.0])
def test_world_sized_shapes_stay_within_budget(deadline_s) -> None:
    world = box(-180, -MAX_LAT, 180, MAX_LAT)
    for minzoom, maxzoom in ((10, 12), (14, 14), (0, 14)):
        cover = cover_range(world, minzoom, maxzoom, max_tiles=100, deadline_s=deadline_s)
        assert cover.method == "zoom_capped" and len(cover.tiles) <= 100
        assert cover.zoom == 3  # z3 is 64 tiles, z0-z3 85, z4 alone 256


def test_deadline_zero_falls_back_to_bbox_when_it_fits() -> None:
    geom = Polygon([(0, 40), (10, 41), (5, 50)])
    cover = cover_range(geom, 4, 9, max_tiles=10**6, deadline_s=0.0)
    assert cover.method == "bbox" and cover.zoom == 9
    got = by_zoom(cover)
    for z in range(4, 10):
        assert got[z] >= tile_cover(geom, z)
    assert len(got[9]) > len(tile_cover(geom, 9))  # a triangle's box is bigger


def test_deadline_zero_over_budget_caps_the_zoom_by_bbox() -> None:
    geom = Polygon([(0, 40), (10, 41), (5, 50)])
    cover = cover_range(geom, 4, 12, max_tiles=2_000, deadline_s=0.0)
    assert cover.method == "zoom_capped" and 4 <= cover.zoom < 12
    assert 0 < len(cover.tiles) <= 2_000
    got = by_zoom(cover)
    assert sorted(got) == list(range(4, cover.zoom + 1))
    for z, tiles in got.items():
        assert tiles >= tile_cover(geom, z)


def test_deadline_zero_and_minzoom_over_budget_still_returns_tiles() -> None:
    cover = cover_range(box(0, 40, 10, 50), 9, 12, max_tiles=10, deadline_s=0.0)
    assert cover.method == "zoom_capped" and cover.zoom < 9 and 0 < len(cover.tiles) <= 10


def test_cover_count_stops_early_with_a_limit() -> None:
    geom = box(-60, -60, 60, 60)
    exact = cover_count(geom, 14)
    bounded = cover_count(geom, 14, limit=1_000)
    assert 1_000 < bounded <= exact


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((Point(0, 0), 5, 4), "minzoom"),
        ((Point(0, 0), 0, 31), "maxzoom"),
        ((Point(0, 0), 0, 3, -1.0), "buffer_px"),
        ((Point(0, 0), 0, 3, 0.0, 0), "max_tiles"),
    ],
)
def test_cover_range_rejects_bad_arguments(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cover_range(*args)


def test_covering_an_empty_or_non_finite_geometry_raises() -> None:
    with pytest.raises(GeometryError) as e:
        tile_cover(Point(), 3)
    assert e.value.reason == "empty_geometry"
    with pytest.raises(GeometryError) as e:
        cover_range(LineString([(0, 0), (math.inf, 1)]), 0, 3)
    assert e.value.reason == "invalid_coordinates"


# --------------------------------------------------------------------------
# Geometry hygiene
# --------------------------------------------------------------------------


def reason(fn, *args, **kwargs) -> str:
    with pytest.raises(GeometryError) as e:
        fn(*args, **kwargs)
    return e.value.reason


def test_check_geometry_reasons() -> None:
    assert reason(check_geometry, Point(), 10) == "empty_geometry"
    with np.errstate(invalid="ignore"):
        nan_line = LineString([(0, 0), (1, math.nan)])
    assert reason(check_geometry, nan_line, 10) == "invalid_coordinates"
    assert reason(check_geometry, Point(math.inf, 0), 10) == "invalid_coordinates"
    assert reason(check_geometry, LineString([(i, 0) for i in range(11)]), 10) == (
        "too_many_vertices"
    )
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    assert reason(check_geometry, bowtie, 10) == "invalid_geometry"
    repaired = check_geometry(bowtie, 10, repair=True)
    assert repaired.is_valid and repaired.area > 0


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "Feature", "geometry": None},
        {"type": "Circle", "coordinates": [0, 0]},
        {"type": "Point"},
        {"type": "Point", "coordinates": [[1, 2]]},
        {"type": "Point", "coordinates": ["1", "2"]},
        {"type": "Point", "coordinates": [True, 2]},
        {"type": "Point", "coordinates": [1, 2, 3, 4]},
        {"type": "LineString", "coordinates": [[0, 0]]},
        {"type": "LineString", "coordinates": [0, 0]},
        {"type": "Polygon", "coordinates": [[0, 0], [1, 0], [1, 1], [0, 0]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0]]]},
        {"type": "MultiPolygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        {"type": "GeometryCollection"},
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [[0]]}]},
        "POINT (0 0)",
    ],
)
def test_from_geojson_rejects_bad_geojson(obj) -> None:
    assert reason(from_geojson, obj) == "invalid_geojson"


def nested(depth: int) -> dict:
    obj: dict = {"type": "Point", "coordinates": [1, 2]}
    for _ in range(depth):
        obj = {"type": "GeometryCollection", "geometries": [obj]}
    return obj


def test_from_geojson_limits_collection_nesting() -> None:
    assert from_geojson(nested(4)).geom_type == "GeometryCollection"
    assert reason(from_geojson, nested(5)) == "invalid_geojson"
    assert reason(from_geojson, nested(5000)) == "invalid_geojson"


def test_from_geojson_parses_every_type() -> None:
    ring = [[0, 0], [1, 0], [1, 1], [0, 0]]
    objs = {
        "Point": [1.5, 2],
        "MultiPoint": [[1, 2], [3, 4]],
        "LineString": [[0, 0], [1, 1]],
        "MultiLineString": [[[0, 0], [1, 1]]],
        "Polygon": [ring],
        "MultiPolygon": [[ring]],
    }
    for kind, coords in objs.items():
        assert from_geojson({"type": kind, "coordinates": coords}).geom_type == kind
    gc = from_geojson(
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 0, 5]}]}
    )
    assert gc.geom_type == "GeometryCollection"
