"""Projection to normalised Web Mercator and the antimeridian rule, for the tile cover.

A checked geometry (EPSG:4326) becomes a :class:`Projected`: its parts
projected to ``u, v`` in [0, 1] (``v = 0`` north, as XYZ rows), lines and rings
that cross the antimeridian unwrapped into the extended ``u`` range, and each
homogeneous component (polygons, lines, points) prepared for the vectorised
box tests of :mod:`tilepipe.cover.quadtree`. The rules themselves are in the
package docstring (:mod:`tilepipe.cover`). Pure logic: shapely and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from tilepipe.geometry import REPAIR_BUDGET_S, GeometryError
from tilepipe.reasons import Reason
from tilepipe.repair import RepairOverBudget, union_within
from tilepipe.tiles import MAX_LATITUDE

Reach = float | np.ndarray  # a buffer in normalised units: one, or one per tested tile
# GEOS's dwithin and distance disagree at exact ties (distance == b) depending
# on the code path, so a parent could be pruned while its child is kept.
# Pruning keeps anything within b + TIE (~100 ulps of u; 0.4 nm on the
# ground); final answers decide that band with ``distance <= b``.
TIE = 1e-14


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


def per_box(b: Any, idx: Any) -> Any:
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
                ok = shapely.dwithin(sub_parts, sub_boxes, per_box(b, i_box))
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
class Projected:
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
            out[todo] = layer.hits(boxes[todo], sub_edges, per_box(b, todo))
        return out

    def hits(
        self, boxes: np.ndarray, edges: tuple[np.ndarray, ...], b: Reach, final: bool
    ) -> np.ndarray:
        """Whether each box is within ``b``. Pruning (``final=False``) keeps
        anything within ``b + TIE``; a final answer settles that thin band by
        ``distance <= b``."""
        if np.ndim(b) == 0 and b == 0:
            return self._any(boxes, edges, 0.0)  # intersects: exact, no band
        out = self._any(boxes, edges, b + TIE)
        if not final:
            return out
        near = np.flatnonzero(out)
        if len(near):
            sub_b = per_box(b, near)
            sub_edges = tuple(e[near] for e in edges)
            clear = self._any(boxes[near], sub_edges, np.maximum(sub_b - TIE, 0.0))
            tie = near[~clear]
            if len(tie):
                dists = [shapely.distance(layer.whole, boxes[tie]) for layer in self.layers]
                dist = np.min(dists, axis=0)
                out[tie] = dist <= per_box(b, tie)
        return out

    def inside(self, boxes: np.ndarray, edges: tuple[np.ndarray, ...]) -> np.ndarray:
        if self.area is None:
            return np.zeros(len(boxes), dtype=bool)
        return self.area.covers(boxes, edges)


class Unrepaired(Exception):
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
        raise Unrepaired(tuple(shapely.total_bounds(projected))) from None


def prepare(geom: BaseGeometry, repair_budget_s: float = REPAIR_BUDGET_S) -> Projected:
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
    return Projected(tuple(layers), area_layer, (umin, vmin, umax, vmax))
