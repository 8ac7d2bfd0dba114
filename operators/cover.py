"""Which map tiles a geometry touches: exact, fast tile covers for tile expiry.

When a feature changes, every tile that draws any part of it is dirty. This
module answers "which tiles?" for the ``feature`` fan-out in
:mod:`operators.enrich`. Pure logic (shapely + numpy): no Bytewax, no I/O.

Geometry model
    Input is EPSG:4326 (lon, lat). Vertices are projected to normalised Web
    Mercator ``u = (lon + 180) / 360``, ``v = (1 - asinh(tan(lat)) / pi) / 2``
    (``v = 0`` is the north edge: XYZ rows, as in :mod:`tilepipe.tiles`) and
    edges are straight lines in that plane, which is what a renderer draws.
    Latitudes are clamped to ±85.0511287798066, the edge of the square world.
    At zoom ``z`` tile ``(x, y)`` is the box ``[x, x+1] / 2^z by [y, y+1] / 2^z``.

Exact cover
    Tile ``(x, y)`` is in the cover at zoom ``z`` iff its *closed* box is within
    ``b = buffer_px / (256 · 2^z)`` of the projected geometry, polygon
    interiors included. Closed boxes mean a vertex on a tile edge or corner
    dirties every tile sharing it: expiring one tile too many costs a render,
    one too few shows stale data. The cover descends a quadtree: each level
    tests all candidate tiles at once with prepared, vectorised shapely
    predicates; a tile inside a polygon is kept as a block (its descendants are
    counted and listed without tests), a tile beyond the buffer is dropped with
    its subtree, and only boundary tiles are split. Work is proportional to the
    boundary, not the area, and a cover's size is known before it is listed
    (:func:`cover_count`), so a huge cover is refused cheaply.

Antimeridian rule
    Within one line or ring, an edge whose longitudes differ by more than 180°
    crosses the antimeridian the short way (179 → -179 is a 2° edge, not a
    358° one): later vertices are shifted by ±360° so consecutive vertices
    differ by at most 180°. The shifted geometry is covered in the extended
    ``u`` range (it may leave [0, 1]) and tiles are folded back with
    ``x mod 2^z``; longitudes slightly outside ±180 are accepted the same way.
    Two exceptions keep common GeoJSON meaning: an edge between two vertices
    that both lie exactly on ±180 is an edge along the world (``-180 → 180`` in
    a world box), not a crossing; and a ring that no longer closes once
    shifted goes round a pole, so it is closed over the pole on the side of
    its mean latitude (an Antarctica ring without explicit ±180 edges). Holes
    are shifted by whole turns to sit over their shell. Distances are measured
    in the plane of the copy a tile is tested in, so the seam is not a wall:
    a buffer or a vertex on the antimeridian reaches the tiles on both sides.

Several zooms, budgets and fallbacks
    :func:`cover_range` covers once at the deepest zoom and derives parents
    from it (``(x >> 1, y >> 1)``, like renderd's ``render_expired``), adding
    the tiles that only a lower zoom's wider pixel buffer reaches, so every
    zoom equals :func:`tile_cover` at that zoom. When the exact cover exceeds
    the tile budget or the time budget, it falls back and says so in
    :attr:`Cover.method` (``"bbox"`` or ``"zoom_capped"``); it never returns an
    empty cover for a non-empty geometry.

Geometries arrive checked (:mod:`tilepipe.geometry`); an empty one raises
:class:`tilepipe.geometry.GeometryError` here too.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from tilepipe.geometry import REPAIR_BUDGET_S, GeometryError
from tilepipe.reasons import Reason
from tilepipe.repair import RepairOverBudget, union_within
from tilepipe.tiles import MAX_LATITUDE, MAX_ZOOM

__all__ = [
    "DEFAULT_MAX_TILES",
    "Cover",
    "cover_count",
    "cover_range",
    "tile_cover",
]

TILE_PX = 256  # buffers are given in pixels of 256-px tiles
DEFAULT_MAX_TILES = 10_000

Method = Literal["exact", "bbox", "zoom_capped"]
Reach = float | np.ndarray  # a buffer in normalised units: one, or one per tested tile
Tile = tuple[int, int]
ZXY = tuple[int, int, int]

# Slack, in tiles, when turning a bounding box into a tile range: float
# rounding must never drop a tile that touches the box; the extra candidate
# tiles are tested like any other, so exactness is unaffected.
_RANGE_EPS = 1e-6
# GEOS's dwithin and distance disagree at exact ties (distance == b) depending
# on the code path, so a parent could be pruned while its child is kept.
# Pruning keeps anything within b + _TIE (~100 ulps of u; 0.4 nm on the
# ground); final answers decide that band with ``distance <= b``.
_TIE = 1e-14
# Boxes tested per vectorised call: bounds memory and lets the clock be checked.
_CHUNK = 16_384
_CHILD_DX = np.array([0, 1, 0, 1], dtype=np.int64)
_CHILD_DY = np.array([0, 0, 1, 1], dtype=np.int64)


@dataclass(frozen=True)
class Cover:
    """Tiles dirtied by a geometry over a zoom range.

    ``method`` says how they were found: ``"exact"`` (every zoom is the exact
    cover), ``"bbox"`` (the exact cover ran out of time; each zoom is the
    buffered bounding box of the geometry, a superset) or ``"zoom_capped"``
    (over budget: tiles stop at ``zoom`` < ``requested_maxzoom``, and every
    descendant of a listed ``zoom`` tile is dirty too).
    """

    tiles: list[ZXY]  # (z, x, y), sorted
    method: Method
    zoom: int  # the deepest zoom actually covered
    requested_maxzoom: int


# --------------------------------------------------------------------------
# Projection and the antimeridian
# --------------------------------------------------------------------------


# shapely type ids
_POINT, _LINE, _RING, _POLYGON, _MULTIPOINT, _MULTILINE, _MULTIPOLYGON, _COLLECTION = range(8)
# Where each type's parts go, keyed by its own or its Multi* type id.
_BUCKET = {
    _POINT: "points",
    _MULTIPOINT: "points",
    _LINE: "lines",
    _RING: "lines",
    _MULTILINE: "lines",
    _POLYGON: "polygons",
    _MULTIPOLYGON: "polygons",
}


def _at(b: Any, idx: Any) -> Any:
    """``b[idx]`` for a per-box array of buffers, ``b`` itself for one shared buffer."""
    return b[idx] if isinstance(b, np.ndarray) and b.ndim else b


def _project(lonlat: np.ndarray) -> np.ndarray:
    """(lon, lat) degrees → normalised Web Mercator (u, v), v = 0 north."""
    lon = lonlat[:, 0]
    lat = np.radians(np.clip(lonlat[:, 1], -MAX_LATITUDE, MAX_LATITUDE))
    u = (lon + 180.0) / 360.0
    v = (1.0 - np.arcsinh(np.tan(lat)) / np.pi) / 2.0
    # The clamp lands within an ulp of 0 and 1; keep rows inside the world.
    return np.column_stack([u, np.clip(v, 0.0, 1.0)])


def _unwrap_seq(xy: np.ndarray) -> np.ndarray:
    """Shift longitudes so consecutive vertices differ by ≤ 180° (see module doc)."""
    lon = xy[:, 0]
    step = np.diff(lon)
    jump = np.abs(step) > 180.0
    on_seam = np.abs(lon) == 180.0
    jump &= ~(on_seam[:-1] & on_seam[1:])  # -180 → 180 runs along the world, not across
    if not jump.any():
        return xy
    out = xy.copy()
    out[1:, 0] += np.cumsum(np.where(jump, -360.0 * np.round(step / 360.0), 0.0))
    return out


def _unwrap_ring(xy: np.ndarray) -> np.ndarray:
    out = _unwrap_seq(xy)
    if out is xy or out[-1, 0] == out[0, 0]:
        return out
    # Shifted, the ring no longer closes: it winds round a pole. Close it over
    # the pole on its side, so the polygon keeps the cap it was drawn around.
    pole = 90.0 if out[:, 1].mean() >= 0 else -90.0
    return np.vstack([out, [[out[-1, 0], pole], [out[0, 0], pole], out[0]]])


def _unwrap_polygon(poly: BaseGeometry) -> BaseGeometry:
    shell = _unwrap_ring(shapely.get_coordinates(poly.exterior))
    mid = (shell[:, 0].min() + shell[:, 0].max()) / 2.0
    holes = []
    for ring in poly.interiors:
        hole = _unwrap_ring(shapely.get_coordinates(ring))
        # Unwrapped independently, a hole may sit a whole turn away from its shell.
        turns = round((mid - (hole[:, 0].min() + hole[:, 0].max()) / 2.0) / 360.0)
        if turns:
            hole = hole + np.array([360.0 * turns, 0.0])
        holes.append(hole)
    return shapely.Polygon(shell, holes)


def _unwrap_geometry(geom: BaseGeometry) -> BaseGeometry:
    kind = shapely.get_type_id(geom)
    if geom.is_empty or kind in (_POINT, _MULTIPOINT):  # no edges to cross with
        return geom
    if kind in (_LINE, _RING):
        return shapely.linestrings(_unwrap_seq(shapely.get_coordinates(geom)))
    if kind == _POLYGON:
        return _unwrap_polygon(geom)
    parts = [_unwrap_geometry(p) for p in shapely.get_parts(geom)]
    if kind == _MULTILINE:
        return shapely.multilinestrings(parts)
    if kind == _MULTIPOLYGON:
        return shapely.multipolygons(parts)
    return shapely.geometrycollections(parts)


def _components(geom: BaseGeometry) -> dict[str, np.ndarray]:
    """Flatten into arrays of non-empty polygons, lines and points.

    Vectorised over parts: a MultiPoint of 100k points must not cost a
    Python loop per point.
    """
    found: dict[str, list[np.ndarray]] = {"polygons": [], "lines": [], "points": []}
    stack = [np.array([geom], dtype=object)]
    while stack:
        arr = stack.pop()
        kinds = shapely.get_type_id(arr)
        for kind, bucket in _BUCKET.items():
            sel = arr[kinds == kind]
            if not len(sel):
                continue
            found[bucket].append(shapely.get_parts(sel) if kind >= _MULTIPOINT else sel)
        members = arr[kinds == _COLLECTION]
        if len(members):
            stack.append(shapely.get_parts(members))
    out = {}
    for bucket, arrays in found.items():
        flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=object)
        out[bucket] = flat[~shapely.is_empty(flat)] if len(flat) else flat
    return out


# Above this many parts a component is searched through an STRtree: GEOS's
# prepared predicates on a multi-part geometry visit every part per test box
# (a 20k-point MultiPoint costs ~120 µs per box; through the tree ~2 µs).
_TREE_PARTS = 8


class _Layer:
    """One homogeneous component (polygons, lines or points), prepared.

    Either one prepared geometry, or, for many parts, the prepared parts under
    an STRtree: candidate pairs come from envelopes (boxes widened by the
    buffer), then the exact predicate runs on each pair.
    """

    def __init__(self, parts: np.ndarray, kind: str) -> None:
        arr = np.asarray(parts, dtype=object)
        self.is_points = kind == "points"
        self.tree: shapely.STRtree | None = None
        make = {"polygons": shapely.multipolygons, "lines": shapely.multilinestrings}
        self.whole = arr[0] if len(arr) == 1 else make.get(kind, shapely.multipoints)(arr)
        if len(arr) > _TREE_PARTS:
            shapely.prepare(arr)
            self.parts = arr
            self.tree = shapely.STRtree(arr)
        else:
            shapely.prepare(self.whole)
        self.bounds = shapely.total_bounds(arr)

    def _pairs(self, boxes: np.ndarray, edges: tuple[np.ndarray, ...], b: Reach) -> np.ndarray:
        assert self.tree is not None
        if np.any(b > 0):
            x0, y0, x1, y1 = edges
            boxes = shapely.box(x0 - b, y0 - b, x1 + b, y1 + b)
        return self.tree.query(boxes)  # [box index, part index], envelopes intersect

    def hits(self, boxes: np.ndarray, edges: tuple[np.ndarray, ...], b: Reach) -> np.ndarray:
        buffered = bool(np.any(b > 0))
        if self.tree is None:
            if buffered:
                return shapely.dwithin(self.whole, boxes, b)
            return shapely.intersects(self.whole, boxes)
        i_box, i_part = self._pairs(boxes, edges, b)
        if buffered or not self.is_points:  # a point's envelope test is exact
            sub_parts, sub_boxes = self.parts[i_part], boxes[i_box]
            if buffered:
                ok = shapely.dwithin(sub_parts, sub_boxes, _at(b, i_box))
            else:
                ok = shapely.intersects(sub_parts, sub_boxes)
            i_box = i_box[ok]
        out = np.zeros(len(boxes), dtype=bool)
        out[i_box] = True
        return out

    def covers(self, boxes: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
        if self.tree is None:
            return shapely.covers(self.whole, boxes)
        # The parts of a valid MultiPolygon meet at points at most, so a box
        # is covered by their union iff one part covers it.
        i_box, i_part = self._pairs(boxes, edges, 0.0)
        ok = shapely.covers(self.parts[i_part], boxes[i_box])
        out = np.zeros(len(boxes), dtype=bool)
        out[i_box[ok]] = True
        return out


@dataclass(frozen=True)
class _Projected:
    """A geometry in (extended) normalised Web Mercator, ready for tests.

    Kept as up to three homogeneous layers (polygons, lines, points): GEOS
    predicates are fastest and best defined on those, and the polygonal layer
    alone decides "tile fully inside".
    """

    layers: tuple[_Layer, ...]
    area: _Layer | None  # the polygonal layer (valid), or None
    bounds: tuple[float, float, float, float]  # u may leave [0, 1]

    def _any(self, boxes: np.ndarray, edges: tuple[np.ndarray, ...], b: Reach) -> np.ndarray:
        out = np.zeros(len(boxes), dtype=bool)
        for layer in self.layers:
            todo = np.flatnonzero(~out)
            if not len(todo):
                break
            sub_edges = tuple(e[todo] for e in edges)
            out[todo] = layer.hits(boxes[todo], sub_edges, _at(b, todo))
        return out

    def hits(
        self, boxes: np.ndarray, edges: tuple[np.ndarray, ...], b: Reach, final: bool
    ) -> np.ndarray:
        """Whether each box is within ``b``. Pruning (``final=False``) keeps
        anything within ``b + _TIE``; a final answer settles that thin band by
        ``distance <= b``."""
        if np.ndim(b) == 0 and b == 0:
            return self._any(boxes, edges, 0.0)  # intersects: exact, no band
        out = self._any(boxes, edges, b + _TIE)
        if not final:
            return out
        near = np.flatnonzero(out)
        if len(near):
            sub_b = _at(b, near)
            sub_edges = tuple(e[near] for e in edges)
            clear = self._any(boxes[near], sub_edges, np.maximum(sub_b - _TIE, 0.0))
            tie = near[~clear]
            if len(tie):
                dists = [shapely.distance(layer.whole, boxes[tie]) for layer in self.layers]
                dist = np.min(dists, axis=0)
                out[tie] = dist <= _at(b, tie)
        return out

    def inside(self, boxes: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
        if self.area is None:
            return np.zeros(len(boxes), dtype=bool)
        return self.area.covers(boxes, edges)


class _Unrepaired(Exception):
    """The projected area is invalid and its repair ran out of budget: only the
    geometry's bounds are known, so the caller covers its bounding box."""

    def __init__(self, bounds: tuple[float, float, float, float]) -> None:
        super().__init__("the projected area could not be repaired within the budget")
        self.bounds = bounds


def _repair_area(polys: np.ndarray, projected: BaseGeometry, budget_s: float) -> BaseGeometry:
    """The union of the repaired polygons, in the budgeted worker: overlapping
    members of a collection can be an overlay bomb (two valid interleaved combs
    of 800 teeth took over a minute here)."""
    try:
        return union_within(shapely.multipolygons(polys), budget_s)
    except RepairOverBudget:
        raise _Unrepaired(tuple(shapely.total_bounds(projected))) from None


def _prepare(geom: BaseGeometry, repair_budget_s: float = REPAIR_BUDGET_S) -> _Projected:
    if geom is None or geom.is_empty:
        raise GeometryError(Reason.EMPTY_GEOMETRY, "geometry is empty")
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise GeometryError(Reason.INVALID_COORDINATES, "geometry has NaN or infinite coordinates")
    lonlat = geom
    if len(coords) > 1 and (np.abs(np.diff(coords[:, 0])) > 180.0).any():
        lonlat = _unwrap_geometry(geom)  # rare: only when some jump exists
    projected = shapely.transform(lonlat, _project)
    parts = _components(projected)
    polys, lines, points = parts["polygons"], parts["lines"], parts["points"]

    area = None
    if len(polys):
        area = polys[0] if len(polys) == 1 else shapely.multipolygons(polys)
        if not area.is_valid:
            # Clamping at the poles, unwrapping, or overlapping members of a
            # collection can leave an invalid area, on which "covers" is
            # unreliable. Repair and union in the projected plane.
            fixed = _components(_repair_area(polys, projected, repair_budget_s))
            polys = fixed["polygons"]
            lines = np.concatenate([lines, fixed["lines"]])  # collapsed parts still touch
            points = np.concatenate([points, fixed["points"]])
            # A union's polygons are disjoint, so their MultiPolygon is valid.
            if len(polys):
                area = polys[0] if len(polys) == 1 else shapely.multipolygons(polys)
            else:
                area = None
    if len(lines):
        flat = shapely.length(lines) == 0  # collapsed (e.g. clamped at a pole): a point
        if flat.any():
            points = np.concatenate([points, shapely.get_point(lines[flat], 0)])
            lines = lines[~flat]

    layers: list[_Layer] = []
    area_layer = None
    if area is not None:
        area_layer = _Layer(shapely.get_parts(area), "polygons")
        layers.append(area_layer)
    if len(lines):
        layers.append(_Layer(lines, "lines"))
    if len(points):
        layers.append(_Layer(points, "points"))
    if not layers:  # cannot happen for finite non-empty input; never cover nothing
        layers.append(_Layer(shapely.points(shapely.get_coordinates(projected)), "points"))
    bounds = np.array([layer.bounds for layer in layers])
    umin, vmin = bounds[:, :2].min(axis=0)
    umax, vmax = bounds[:, 2:].max(axis=0)
    return _Projected(tuple(layers), area_layer, (umin, vmin, umax, vmax))


# --------------------------------------------------------------------------
# Quadtree cover at one zoom
# --------------------------------------------------------------------------


class _TooMany(Exception):
    def __init__(self, lower_bound: int, level: int | None = None) -> None:
        super().__init__(lower_bound)
        self.lower_bound = lower_bound
        self.level = level  # with a per-level budget: the first level over it


class _Timeout(Exception):
    """The exact cover ran past its deadline; the caller falls back."""


def _check_clock(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise _Timeout


def _buffer_units(buffer_px: float, zoom: int) -> float:
    return buffer_px / (TILE_PX * (1 << zoom))


def _tile_range(
    bounds: tuple[float, float, float, float], level: int, b: float
) -> tuple[int, int, int, int]:
    """Tiles whose closed box can be within ``b`` of ``bounds``: x0, x1, y0, y1.

    x is in the extended (unfolded) range; y is clipped to the world.
    """
    n = 1 << level
    umin, vmin, umax, vmax = bounds
    x0 = math.ceil((umin - b) * n - _RANGE_EPS) - 1
    x1 = math.floor((umax + b) * n + _RANGE_EPS)
    y0 = max(0, math.ceil((vmin - b) * n - _RANGE_EPS) - 1)
    y1 = min(n - 1, math.floor((vmax + b) * n + _RANGE_EPS))
    return x0, x1, y0, y1


def _start_level(bounds: tuple[float, float, float, float], zoom: int, b: float) -> int:
    """The deepest level at which the geometry's box meets at most 4 tiles.

    That is the smallest tile (or 2x2 block, when the box straddles an edge)
    holding the geometry: starting there skips levels that would only split.
    """
    for level in range(zoom, -1, -1):
        x0, x1, y0, y1 = _tile_range(bounds, level, b)
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= 4:
            return level
    return 0


def _fold_keys(xs: np.ndarray, ys: np.ndarray, level: int) -> np.ndarray:
    """One int64 per tile after folding x into the world: ``x << level | y``."""
    return (np.mod(xs, 1 << level) << level) | ys


def _decode(keys: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    return keys >> level, keys & ((1 << level) - 1)


@dataclass(frozen=True)
class _Tiles:
    """A cover at one zoom, not yet listed: blocks plus single tiles.

    ``blocks[l]`` holds keys of level-``l`` tiles (l ≤ zoom) all of whose
    descendants at ``zoom`` are in the cover; ``leaves`` holds keys of single
    tiles at ``zoom``. All are folded and pairwise disjoint.
    """

    zoom: int
    blocks: dict[int, np.ndarray]
    leaves: np.ndarray

    def count(self) -> int:
        return len(self.leaves) + sum(
            len(keys) << (2 * (self.zoom - level)) for level, keys in self.blocks.items()
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All tiles as (xs, ys); memory is proportional to :meth:`count`."""
        xs, ys = _decode(self.leaves, self.zoom)
        out_x, out_y = [xs], [ys]
        for level, keys in self.blocks.items():
            shift = self.zoom - level
            bx, by = _decode(keys, level)
            off = np.arange(1 << shift, dtype=np.int64)
            gx = (bx[:, None, None] << shift) + off[None, :, None]
            gy = (by[:, None, None] << shift) + off[None, None, :]
            gx, gy = np.broadcast_arrays(gx, gy)
            out_x.append(gx.ravel())
            out_y.append(gy.ravel())
        return np.concatenate(out_x), np.concatenate(out_y)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        inside = _member(keys, self.leaves)
        if self.blocks:
            xs, ys = _decode(keys, self.zoom)
            for level, bkeys in self.blocks.items():
                shift = self.zoom - level
                inside |= _member(((xs >> shift) << level) | (ys >> shift), bkeys)
        return inside


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted haystack, without its fixed cost on small arrays."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[idx] == keys


def _evaluate(
    prj: _Projected,
    xs: np.ndarray,
    ys: np.ndarray,
    level: int | np.ndarray,
    b: Reach,
    final: bool,
    want_inside: bool,
    deadline: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(within b, fully inside) for each tile, in chunks so the clock is checked.

    ``level`` and ``b`` are one value for all tiles or one per tile, so the
    rings of several zooms can be tested in one call. ``final`` marks answers
    that decide the cover (not pruning): see ``_TIE``.
    """
    hit = np.zeros(len(xs), dtype=bool)
    inside = np.zeros(len(xs), dtype=bool)
    for start in range(0, len(xs), _CHUNK):
        if start:
            _check_clock(deadline)
        sl = slice(start, start + _CHUNK)
        # Dyadic: tile edges are exact in float64.
        n = np.ldexp(1.0, level[sl]) if isinstance(level, np.ndarray) else float(1 << level)
        edges = (xs[sl] / n, ys[sl] / n, (xs[sl] + 1) / n, (ys[sl] + 1) / n)
        boxes = shapely.box(*edges)
        h = prj.hits(boxes, edges, _at(b, sl), final)
        hit[sl] = h
        if want_inside and prj.area is not None and h.any():
            # Only a tile that touches can be inside; a covered tile is a block.
            inside[sl][h] = prj.inside(boxes[h], tuple(e[h] for e in edges))
    return hit, inside


def _descend(
    prj: _Projected,
    zoom: int,
    b: float,
    limit: int | None,
    deadline: float | None,
    budget: tuple[int, int] | None = None,
) -> _Tiles:
    """Exact cover at ``zoom`` as blocks and leaves; see the module docstring.

    Raises :class:`_TooMany` as soon as the cover surely exceeds ``limit``
    (each boundary tile has at least one distinct covered descendant) and
    :class:`_Timeout` once ``deadline`` passes (checked before every level).

    With ``budget=(minzoom, max_tiles)`` it also counts the cover of every
    level from ``minzoom`` on the way down (that zoom's exact cover when
    ``b`` is 0, a lower bound of its buffered cover otherwise) and raises
    ``_TooMany(level=l)`` at the first level where the running total passes
    ``max_tiles``: one descent finds how deep a capped cover can go.
    """
    level = _start_level(prj.bounds, zoom, b)
    first_level = level
    x0, x1, y0, y1 = _tile_range(prj.bounds, level, b)
    gx, gy = np.meshgrid(
        np.arange(x0, x1 + 1, dtype=np.int64), np.arange(y0, y1 + 1, dtype=np.int64)
    )
    xs, ys = gx.ravel(), gy.ravel()
    blocks: dict[int, np.ndarray] = {}
    block_tiles = 0  # tiles at ``zoom`` under blocks
    blocked_here = 0  # tiles at ``level`` under blocks of coarser levels
    running = 0
    while True:
        _check_clock(deadline)
        hit, inside = _evaluate(prj, xs, ys, level, b, level == zoom, level < zoom, deadline)
        xs, ys, inside = xs[hit], ys[hit], inside[hit]
        keys = _fold_keys(xs, ys, level)
        if budget is not None:
            if level == first_level:
                # Levels above the start hold the ancestors of these tiles
                # (a handful each): count them without testing anything.
                for above in range(budget[0], level):
                    shift = level - above
                    ancestors = (np.mod(xs >> shift, 1 << above) << above) | (ys >> shift)
                    running += len(np.unique(ancestors))
                    if running > budget[1]:
                        raise _TooMany(running, above)
            if level >= budget[0]:
                running += blocked_here + len(np.unique(keys))
                if running > budget[1]:
                    raise _TooMany(running, level)
        if level == zoom:
            return _Tiles(zoom, blocks, np.unique(keys))
        if inside.any():
            bkeys = np.unique(keys[inside])
            blocks[level] = bkeys
            block_tiles += len(bkeys) << (2 * (zoom - level))
            blocked_here += len(bkeys)
            # Also drops other copies (x ± 2^level) of a covered tile: its
            # folded subtree is complete already.
            edge = ~np.isin(keys, bkeys)
            xs, ys, keys = xs[edge], ys[edge], keys[edge]
        if limit is not None and block_tiles + len(keys) > limit:
            lower = block_tiles + len(np.unique(keys))
            if lower > limit:
                raise _TooMany(lower)
        if budget is not None:
            # Stop before evaluating a level that surely breaks the budget:
            # each boundary tile has at least one covered child.
            edges = len(np.unique(keys))
            first = max(level + 1, budget[0])
            lower = ((blocked_here * 4) << (2 * (first - level - 1))) + edges
            if running + lower > budget[1]:
                raise _TooMany(running + lower, first)
        xs = np.repeat(xs * 2, 4) + np.tile(_CHILD_DX, len(xs))
        ys = np.repeat(ys * 2, 4) + np.tile(_CHILD_DY, len(ys))
        blocked_here *= 4
        level += 1


def _hits_folded(
    prj: _Projected,
    xs: np.ndarray,
    ys: np.ndarray,
    levels: np.ndarray,
    bs: np.ndarray,
    deadline: float | None,
) -> np.ndarray:
    """Within-``b`` test for folded tiles (per-tile level and buffer): each is
    tried in every copy (x + k·2^level) within reach of the extended geometry."""
    n = np.left_shift(1, levels)
    umin, _, umax, _ = prj.bounds
    # The extended columns that can be within b: as in _tile_range, per tile.
    x0 = np.ceil((umin - bs) * n - _RANGE_EPS).astype(np.int64) - 1
    x1 = np.floor((umax + bs) * n + _RANGE_EPS).astype(np.int64)
    out = np.zeros(len(xs), dtype=bool)
    for turn in range(int((x0 // n).min()), int((x1 // n).max()) + 1):
        ext = xs + turn * n
        todo = np.flatnonzero(~out & (ext >= x0) & (ext <= x1))
        if len(todo):
            out[todo], _ = _evaluate(
                prj, ext[todo], ys[todo], levels[todo], bs[todo], True, False, deadline
            )
    return out


def _parent_tiles(child: _Tiles) -> _Tiles:
    """The parents of a cover: a tile touches iff one of its children does."""
    k = child.zoom - 1
    xs, ys = _decode(child.leaves, child.zoom)
    parts = [((xs >> 1) << k) | (ys >> 1)]
    blocks = dict(child.blocks)
    single = blocks.pop(child.zoom, None)  # blocks of one child tile: parents are leaves
    if single is not None:
        bx, by = _decode(single, child.zoom)
        parts.append(((bx >> 1) << k) | (by >> 1))
    return _Tiles(k, blocks, np.unique(np.concatenate(parts)))


@functools.lru_cache(maxsize=8)
def _ring_offsets(r: int) -> tuple[np.ndarray, np.ndarray]:
    span = np.arange(-r, r + 1, dtype=np.int64)
    dx, dy = (a.ravel() for a in np.meshgrid(span, span))
    keep = (dx != 0) | (dy != 0)
    return dx[keep], dy[keep]


def _ring(tiles: _Tiles, r: int) -> np.ndarray:
    """Keys of tiles within ``r`` (Chebyshev) of a leaf and not in ``tiles``."""
    k = tiles.zoom
    n = 1 << k
    xs, ys = _decode(tiles.leaves, k)
    dx, dy = _ring_offsets(r)
    cx = np.mod(xs[:, None] + dx[None, :], n).ravel()  # x wraps round the world
    cy = (ys[:, None] + dy[None, :]).ravel()
    ok = (cy >= 0) & (cy < n)
    cand = np.unique((cx[ok] << k) | cy[ok])
    return cand[~tiles.contains(cand)]


def _widen(
    prj: _Projected, chain: dict[int, _Tiles], buffer_px: float, deadline: float | None
) -> dict[int, _Tiles]:
    """Add, at each derived zoom, the tiles only its wider buffer reaches.

    The pixel buffer is wider in ground units at lower zooms, so parents of
    the deepest buffered cover can miss tiles. ``chain[k]`` (the parents) holds
    the unbuffered cover at ``k`` and lies within the exact one; a missing tile
    is within ``r = ceil(buffer_px / 256)`` tiles (Chebyshev) of a tile that
    touches the geometry, and as every neighbour of a block tile touches the
    geometry too, within ``r`` of a leaf. So only those rings are tested, all
    zooms in one vectorised call.
    """
    top = max(chain)
    r = max(1, math.ceil(buffer_px / TILE_PX))
    found = [(k, _ring(tiles, r)) for k, tiles in chain.items() if k != top]
    keys = np.concatenate([cand for _, cand in found])
    if not len(keys):
        return chain
    zs = np.concatenate([np.full(len(cand), k, dtype=np.int64) for k, cand in found])
    xs, ys = keys >> zs, keys & (np.left_shift(1, zs) - 1)
    bs = buffer_px / (TILE_PX * np.ldexp(1.0, zs))
    hit = _hits_folded(prj, xs, ys, zs, bs, deadline)
    out = dict(chain)
    for k, _ in found:
        add = keys[hit & (zs == k)]
        if len(add):
            out[k] = _Tiles(k, chain[k].blocks, np.union1d(chain[k].leaves, add))
    return out


def _exact_levels(
    prj: _Projected,
    minzoom: int,
    maxzoom: int,
    buffer_px: float,
    limit: int | None,
    deadline: float | None,
) -> dict[int, _Tiles]:
    """Exact covers for minzoom..maxzoom: one quadtree, parents derived.

    Over ``limit`` (the total of all zooms) it raises :class:`_TooMany`, with
    the first level whose running total is surely over it when the descent
    can tell (always without a buffer).
    """
    budget = None if limit is None else (minzoom, limit)
    top = _descend(prj, maxzoom, _buffer_units(buffer_px, maxzoom), None, deadline, budget)
    chain = {maxzoom: top}
    total = top.count()
    if limit is not None and total > limit:
        raise _TooMany(total)
    cur = top
    for k in range(maxzoom - 1, minzoom - 1, -1):
        _check_clock(deadline)
        cur = _parent_tiles(cur)
        chain[k] = cur
        total += cur.count()  # with a buffer a lower bound: widening only adds
        if limit is not None and total > limit:
            raise _TooMany(total)
    if buffer_px > 0 and len(chain) > 1:
        _check_clock(deadline)
        chain = _widen(prj, chain, buffer_px, deadline)
        total = sum(t.count() for t in chain.values())
        if limit is not None and total > limit:
            raise _TooMany(total)
    return chain


# --------------------------------------------------------------------------
# Bounding-box covers (fallback)
# --------------------------------------------------------------------------


def _bbox_columns(prj: _Projected, zoom: int, buffer_px: float) -> tuple[np.ndarray, int, int]:
    """Folded columns and the row range of the buffered bounding box."""
    n = 1 << zoom
    x0, x1, y0, y1 = _tile_range(prj.bounds, zoom, _buffer_units(buffer_px, zoom))
    if x1 - x0 + 1 >= n:
        cols = np.arange(n, dtype=np.int64)
    else:
        cols = np.mod(np.arange(x0, x1 + 1, dtype=np.int64), n)
    return cols, y0, y1


def _bbox_count(prj: _Projected, zoom: int, buffer_px: float) -> int:
    cols, y0, y1 = _bbox_columns(prj, zoom, buffer_px)
    return len(cols) * (y1 - y0 + 1)


def _bbox_arrays(prj: _Projected, zoom: int, buffer_px: float) -> tuple[np.ndarray, np.ndarray]:
    cols, y0, y1 = _bbox_columns(prj, zoom, buffer_px)
    gx, gy = np.meshgrid(cols, np.arange(y0, y1 + 1, dtype=np.int64))
    return gx.ravel(), gy.ravel()


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _check_zoom(zoom: int, name: str = "zoom") -> None:
    if not isinstance(zoom, (int, np.integer)) or not 0 <= zoom <= MAX_ZOOM:
        raise ValueError(f"{name} must be an integer in 0..{MAX_ZOOM}, got {zoom!r}")


def _check_buffer(buffer_px: float) -> None:
    if not math.isfinite(buffer_px) or buffer_px < 0:
        raise ValueError(f"buffer_px must be a finite number >= 0, got {buffer_px!r}")


def _prepare_or_refuse(geom: BaseGeometry) -> _Projected:
    """:func:`_prepare` for the exact-only functions, which have no bbox to fall back to."""
    try:
        return _prepare(geom)
    except _Unrepaired as e:
        raise GeometryError(Reason.INVALID_GEOMETRY, str(e)) from None


def tile_cover(geom: BaseGeometry, zoom: int, buffer_px: float = 0.0) -> set[Tile]:
    """Exact cover of ``geom`` at ``zoom``: every ``(x, y)`` whose closed box is
    within ``buffer_px`` pixels (256-px tiles) of the geometry, interiors
    included, and no other tile. Raises :class:`GeometryError` for an empty
    or non-finite geometry."""
    _check_zoom(zoom)
    _check_buffer(buffer_px)
    tiles = _descend(_prepare_or_refuse(geom), zoom, _buffer_units(buffer_px, zoom), None, None)
    xs, ys = tiles.arrays()
    return set(zip(xs.tolist(), ys.tolist(), strict=True))


def cover_count(
    geom: BaseGeometry, zoom: int, buffer_px: float = 0.0, limit: int | None = None
) -> int:
    """Size of :func:`tile_cover` without listing it (blocks count 4^(z-l)).

    With ``limit``, stops as soon as the cover surely exceeds it and returns a
    lower bound that is > ``limit``: a huge cover is refused after little work.
    """
    _check_zoom(zoom)
    _check_buffer(buffer_px)
    try:
        prj = _prepare_or_refuse(geom)
        return _descend(prj, zoom, _buffer_units(buffer_px, zoom), limit, None).count()
    except _TooMany as e:
        return e.lower_bound


def _listing(per_zoom: Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]) -> list[ZXY]:
    zs, xs, ys = [], [], []
    for z, (x, y) in per_zoom:
        zs.append(np.full(len(x), z, dtype=np.int64))
        xs.append(x)
        ys.append(y)
    if not zs:
        return []
    z_all, x_all, y_all = np.concatenate(zs), np.concatenate(xs), np.concatenate(ys)
    order = np.lexsort((y_all, x_all, z_all))
    columns = (z_all[order].tolist(), x_all[order].tolist(), y_all[order].tolist())
    return list(zip(*columns, strict=True))


def _exact_cover(levels: dict[int, _Tiles], method: Method, requested: int) -> Cover:
    tiles = _listing((z, t.arrays()) for z, t in levels.items())
    return Cover(tiles, method, max(levels), requested)


def _bbox_cover(
    prj: _Projected, zooms: Sequence[int], buffer_px: float, method: Method, requested: int
) -> Cover:
    tiles = _listing((z, _bbox_arrays(prj, z, buffer_px)) for z in zooms)
    return Cover(tiles, method, max(zooms), requested)


def _coarser_than_minzoom(prj: _Projected, minzoom: int, buffer_px: float, max_tiles: int) -> int:
    """The deepest zoom below ``minzoom`` whose bbox cover fits ``max_tiles``
    (z0 is a single tile, so there is always one)."""
    for z in range(minzoom - 1, 0, -1):
        if _bbox_count(prj, z, buffer_px) <= max_tiles:
            return z
    return 0


def cover_range(
    geom: BaseGeometry,
    minzoom: int,
    maxzoom: int,
    buffer_px: float = 0.0,
    max_tiles: int = DEFAULT_MAX_TILES,
    deadline_s: float | None = None,
) -> Cover:
    """Tiles dirtied by ``geom`` at every zoom in ``minzoom..maxzoom``.

    Covers once at ``maxzoom`` and derives the parents, so each zoom equals
    :func:`tile_cover` at that zoom (``method="exact"``). ``max_tiles`` bounds
    the total over all zooms; ``deadline_s`` (seconds from the call, ``None``
    for no limit) bounds the exact computation, checked between quadtree
    levels and zooms; listing the result afterwards is not counted (about
    0.3 µs a tile, so ``max_tiles`` bounds it). Fallbacks, recorded in
    :attr:`Cover.method`:

    - out of time, and the buffered bounding box at every zoom fits
      ``max_tiles``: ``"bbox"`` (never used when exact was only too big: a
      bbox cover is never smaller than the exact one);
    - otherwise ``"zoom_capped"``: the deepest ``zoom`` whose cumulative
      cover from ``minzoom`` fits ``max_tiles``, covered exactly (by bbox
      once out of time); everything below the listed deepest tiles is dirty
      too.

    Never drops an event, never returns an empty cover for a non-empty
    geometry and never returns more than ``max_tiles``: if ``minzoom`` alone
    is over it, the deepest coarser zoom that fits is returned (exact, or its
    bbox once out of time; ``"zoom_capped"`` with ``zoom < minzoom``), so one
    record cannot fan out past its budget whatever its zooms (a box of 3.5° at
    ``minzoom = maxzoom = 14`` was 37,280 tiles against a 10,000 budget). The
    deadline holds on this path too.
    """
    _check_zoom(minzoom, "minzoom")
    _check_zoom(maxzoom, "maxzoom")
    if minzoom > maxzoom:
        raise ValueError(f"minzoom {minzoom} is above maxzoom {maxzoom}")
    _check_buffer(buffer_px)
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    if deadline_s is not None and not deadline_s >= 0:
        raise ValueError(f"deadline_s must be >= 0 or None, got {deadline_s!r}")
    deadline = None if deadline_s is None else time.perf_counter() + deadline_s
    timed_out = False
    try:
        prj = _prepare(geom, REPAIR_BUDGET_S if deadline_s is None else max(deadline_s, 0.01))
    except _Unrepaired as e:  # as if out of time: only the bounds are known
        prj = _Projected((), None, e.bounds)
        timed_out = True

    bound = maxzoom - 1  # the deepest zoom that may fit, once maxzoom did not
    try:
        if not timed_out:
            return _exact_cover(
                _exact_levels(prj, minzoom, maxzoom, buffer_px, max_tiles, deadline),
                "exact",
                maxzoom,
            )
    except _TooMany as e:
        if e.level is not None:  # the running total first broke the budget there
            bound = min(bound, e.level - 1)
    except _Timeout:
        timed_out = True

    if timed_out:
        zooms = range(minzoom, maxzoom + 1)
        if sum(_bbox_count(prj, z, buffer_px) for z in zooms) <= max_tiles:
            return _bbox_cover(prj, zooms, buffer_px, "bbox", maxzoom)
    else:
        # Too big: the deepest zoom that fits, trying down from the bound (the
        # first try fits without a buffer; with one, the descent's counts are
        # lower bounds and widening can push a zoom over).
        best: dict[int, _Tiles] | None = None
        z = bound
        while z >= minzoom:
            try:
                best = _exact_levels(prj, minzoom, z, buffer_px, max_tiles, deadline)
                break
            except _TooMany as e:
                z = z - 1 if e.level is None else min(z, e.level) - 1
            except _Timeout:
                timed_out = True
                break
        if best is not None:
            return _exact_cover(best, "zoom_capped", maxzoom)
        if not timed_out:
            # Even minzoom alone is over budget: the deepest coarser zoom that fits
            # (its tiles stand for their subtrees), never the event dropped.
            z = minzoom - 1
            while z >= 0:
                try:
                    levels = _exact_levels(prj, z, z, buffer_px, max_tiles, deadline)
                    return _exact_cover(levels, "zoom_capped", maxzoom)
                except _TooMany:
                    z -= 1
                except _Timeout:
                    break

    # Out of time: choose the zoom by bounding-box counts, which need no geometry work.
    total, deepest = 0, None
    for z in range(minzoom, maxzoom + 1):
        total += _bbox_count(prj, z, buffer_px)
        if total > max_tiles:
            break
        deepest = z
    if deepest is not None:
        return _bbox_cover(prj, range(minzoom, deepest + 1), buffer_px, "zoom_capped", maxzoom)
    z = _coarser_than_minzoom(prj, minzoom, buffer_px, max_tiles)
    return _bbox_cover(prj, [z], buffer_px, "zoom_capped", maxzoom)
