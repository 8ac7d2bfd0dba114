"""Which map tiles a geometry touches: exact, fast tile covers for tile expiry.

When a feature changes, every tile that draws any part of it is dirty. This
module answers "which tiles?" for the ``feature`` fan-out in
:mod:`operators.enrich` (stage 3 in ``docs/ARCHITECTURE.md``), the ingress's job
API and the benches. Pure logic (shapely + numpy): no Bytewax, no I/O.

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

Modules, in import order: :mod:`~tilepipe.cover.projection` (projection and
the antimeridian), :mod:`~tilepipe.cover.quadtree` (the exact cover),
:mod:`~tilepipe.cover.result` (:class:`Cover`), :mod:`~tilepipe.cover.fallbacks`
(the ladder :func:`cover_range` falls down) and this one, the public API.
"""

from __future__ import annotations

import math
import time

import numpy as np
from shapely.geometry.base import BaseGeometry

from tilepipe.cover.fallbacks import capped_by_bbox, capped_exact, coarser_exact, out_of_time
from tilepipe.cover.projection import Projected, Unrepaired, prepare
from tilepipe.cover.quadtree import Timeout, TooMany, buffer_units, descend, exact_levels
from tilepipe.cover.result import Cover, Method, exact_cover
from tilepipe.geometry import REPAIR_BUDGET_S, GeometryError
from tilepipe.reasons import Reason
from tilepipe.tiles import MAX_ZOOM

__all__ = [
    "DEFAULT_MAX_TILES",
    "Cover",
    "Method",
    "cover_count",
    "cover_range",
    "tile_cover",
]

DEFAULT_MAX_TILES = 10_000
Tile = tuple[int, int]


def _check_zoom(zoom: int, name: str = "zoom") -> None:
    if not isinstance(zoom, (int, np.integer)) or not 0 <= zoom <= MAX_ZOOM:
        raise ValueError(f"{name} must be an integer in 0..{MAX_ZOOM}, got {zoom!r}")


def _check_buffer(buffer_px: float) -> None:
    if not math.isfinite(buffer_px) or buffer_px < 0:
        raise ValueError(f"buffer_px must be a finite number >= 0, got {buffer_px!r}")


def _prepare_or_refuse(geom: BaseGeometry) -> Projected:
    """:func:`prepare` for the exact-only functions, which have no bbox to fall back to."""
    try:
        return prepare(geom)
    except Unrepaired as e:
        raise GeometryError(Reason.INVALID_GEOMETRY, str(e)) from None


def tile_cover(geom: BaseGeometry, zoom: int, buffer_px: float = 0.0) -> set[Tile]:
    """Exact cover of ``geom`` at ``zoom``: every ``(x, y)`` whose closed box is
    within ``buffer_px`` pixels (256-px tiles) of the geometry, interiors
    included, and no other tile. Raises :class:`GeometryError` for an empty
    or non-finite geometry."""
    _check_zoom(zoom)
    _check_buffer(buffer_px)
    tiles = descend(_prepare_or_refuse(geom), zoom, buffer_units(buffer_px, zoom), None, None)
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
        return descend(prj, zoom, buffer_units(buffer_px, zoom), limit, None).count()
    except TooMany as e:
        return e.lower_bound


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
    try:
        prj = prepare(geom, REPAIR_BUDGET_S if deadline_s is None else max(deadline_s, 0.01))
    except Unrepaired as e:  # as if out of time: only the bounds are known
        return out_of_time(Projected((), None, e.bounds), minzoom, maxzoom, buffer_px, max_tiles)
    try:
        levels = exact_levels(prj, minzoom, maxzoom, buffer_px, max_tiles, deadline)
        return exact_cover(levels, "exact", maxzoom)
    except TooMany as e:
        # The deepest zoom that may fit: the running total first broke the budget at
        # e.level, when known.
        bound = maxzoom - 1 if e.level is None else min(maxzoom - 1, e.level - 1)
    except Timeout:
        return out_of_time(prj, minzoom, maxzoom, buffer_px, max_tiles)
    try:
        capped = capped_exact(prj, minzoom, bound, buffer_px, max_tiles, deadline, maxzoom)
        if capped is None:
            capped = coarser_exact(prj, minzoom, buffer_px, max_tiles, deadline, maxzoom)
    except Timeout:
        capped = None
    if capped is None:  # out of time on the way down: zooms by bounding-box counts
        capped = capped_by_bbox(prj, minzoom, maxzoom, buffer_px, max_tiles)
    return capped
