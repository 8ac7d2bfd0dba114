"""GeoJSON geometries in, checked shapely geometries out.

Everything a producer can get wrong about a geometry is caught here with a
stable reason code, so the dataflow dead-letters it and the ingress answers
422 for the same reasons: unparseable or wrongly nested GeoJSON, empty
geometries, NaN/inf or out-of-range coordinates, absurd vertex counts, and
invalid shapes (repaired with ``make_valid`` when the setting allows, within
a time and size budget: :data:`REPAIR_BUDGET_S` of wall clock in a worker
process that is killed when it overruns, see :mod:`tilepipe.repair`, and no
more vertices out than the vertex cap lets in).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from tilepipe.reasons import Reason
from tilepipe.repair import RepairOverBudget, make_valid_within

GEOJSON_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
     "GeometryCollection"}
)  # fmt: skip
MAX_COLLECTION_DEPTH = 4
# Wall-clock budget of one repair. What fits in it on the 2-core test machine:
# a 41-vertex star (0.67 s; 51 vertices take 1.36 s and are refused), 500
# nested squares (0.37 s; 1,000 are refused), a 20,000-vertex ring with a
# bowtie (0.1 s). A refusal costs the budget plus ~0.3 s to start the next
# worker (so the review's 301-vertex star: 1.3 s, was 225 s). Refused records
# are dead-lettered ``invalid_geometry`` after at most this long (plus ~5 ms of
# pipe and WKB), wherever the check runs: validate stage, ingress, job API.
REPAIR_BUDGET_S = 1.0


class GeometryError(ValueError):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _check_structure(obj: Any, depth: int = 0) -> None:
    if not isinstance(obj, dict):
        raise GeometryError(Reason.INVALID_GEOJSON, "geometry must be a GeoJSON object")
    kind = obj.get("type")
    if kind not in GEOJSON_TYPES:
        raise GeometryError(
            Reason.INVALID_GEOJSON,
            f"geometry type {kind!r} is not a GeoJSON geometry type"
            f" ({', '.join(sorted(GEOJSON_TYPES))})",
        )
    if kind == "GeometryCollection":
        if depth >= MAX_COLLECTION_DEPTH:
            raise GeometryError(
                Reason.INVALID_GEOJSON,
                f"GeometryCollections nested over {MAX_COLLECTION_DEPTH} deep",
            )
        members = obj.get("geometries")
        if not isinstance(members, list):
            raise GeometryError(
                Reason.INVALID_GEOJSON, "GeometryCollection needs a 'geometries' list"
            )
        for member in members:
            _check_structure(member, depth + 1)
    elif "coordinates" not in obj:
        raise GeometryError(Reason.INVALID_GEOJSON, f"{kind} has no 'coordinates'")
    else:
        _check_nesting(obj["coordinates"], _COORD_DEPTH[kind], kind)


# How many list levels sit above a number in each type's "coordinates".
_COORD_DEPTH = {
    "Point": 1,
    "MultiPoint": 2,
    "LineString": 2,
    "MultiLineString": 3,
    "Polygon": 3,
    "MultiPolygon": 4,
}


def _check_nesting(value: Any, depth: int, kind: str) -> None:
    """Exact nesting and numeric positions: ``shape()`` alone accepts too much
    (it reads ``Point [[1, 2]]`` as a point and ``"1"`` or ``true`` as numbers),
    so a producer's nesting bug would pass unnoticed."""
    stack = [(value, depth)]
    while stack:
        v, d = stack.pop()
        if not isinstance(v, list | tuple):
            raise GeometryError(
                Reason.INVALID_GEOJSON, f"{kind} coordinates are not nested correctly"
            )
        if d == 1:
            if not 2 <= len(v) <= 3 or not all(
                isinstance(c, int | float) and not isinstance(c, bool) for c in v
            ):
                raise GeometryError(
                    Reason.INVALID_GEOJSON,
                    f"{kind} positions must be 2 or 3 numbers, got {v!r:.60}",
                )
        else:
            stack.extend((item, d - 1) for item in v)


def from_geojson(obj: Any) -> BaseGeometry:
    """Parse a GeoJSON geometry object; raises :class:`GeometryError`."""
    _check_structure(obj)
    try:
        return shape(obj)
    except Exception as e:  # shapely raises several types for bad nesting
        raise GeometryError(
            Reason.INVALID_GEOJSON, f"{obj['type']} coordinates are not nested correctly ({e})"
        ) from None


def check_geometry(
    geom: BaseGeometry,
    max_vertices: int,
    repair: bool = False,
    repair_budget_s: float = REPAIR_BUDGET_S,
) -> BaseGeometry:
    """Refuse or repair what cannot be covered; returns the geometry to use.

    A repair that takes over ``repair_budget_s`` or whose result has more
    than ``max_vertices`` vertices is refused (``invalid_geometry``)."""
    if geom.is_empty:
        raise GeometryError(Reason.EMPTY_GEOMETRY, "geometry is empty")
    coords = shapely.get_coordinates(geom)
    if len(coords) > max_vertices:
        raise GeometryError(
            Reason.TOO_MANY_VERTICES,
            f"geometry has {len(coords)} vertices, over the {max_vertices} allowed",
        )
    if not np.isfinite(coords).all():
        raise GeometryError(Reason.INVALID_COORDINATES, "geometry has NaN or infinite coordinates")
    lon, lat = coords[:, 0], coords[:, 1]
    if (np.abs(lat) > 90).any() or (np.abs(lon) > 540).any():
        raise GeometryError(
            Reason.INVALID_COORDINATES,
            "coordinates out of range: latitudes must be within ±90 and longitudes within ±180"
            " (±540 across the antimeridian); is the geometry in EPSG:4326 lon/lat order?",
        )
    if not geom.is_valid:
        if not repair:
            reason = shapely.is_valid_reason(geom)
            raise GeometryError(Reason.INVALID_GEOMETRY, f"geometry is invalid: {reason}")
        reason = shapely.is_valid_reason(geom)
        try:
            geom = make_valid_within(geom, repair_budget_s)
        except (RepairOverBudget, shapely.errors.GEOSException) as e:
            raise GeometryError(
                Reason.INVALID_GEOMETRY,
                f"geometry is invalid ({reason:.120}) and could not be repaired within budget"
                f" ({e}); fix or simplify it at the source",
            ) from None
        if geom.is_empty:
            raise GeometryError(Reason.EMPTY_GEOMETRY, "geometry is empty once repaired")
        repaired = shapely.get_num_coordinates(geom)
        if repaired > max_vertices:
            raise GeometryError(
                Reason.INVALID_GEOMETRY,
                f"geometry is invalid ({reason:.120}) and its repair has {repaired} vertices,"
                f" over the {max_vertices} allowed; fix or simplify it at the source",
            )
    return geom
