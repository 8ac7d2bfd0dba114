"""The fallback ladder of :func:`tilepipe.cover.cover_range`, one named step a rung.

When the exact cover over ``minzoom..maxzoom`` is too big or too slow, the
rungs are tried in this order, and each says which it was in
:attr:`~tilepipe.cover.Cover.method`:

1. too big: :func:`capped_exact`, the deepest zoom at or above ``minzoom``
   whose exact cover fits the budget (``zoom_capped``);
2. too big even at ``minzoom``: :func:`coarser_exact`, the deepest zoom below
   ``minzoom`` that fits (``zoom_capped``, ``zoom < minzoom``);
3. out of time before anything was too big: :func:`out_of_time`, the buffered
   bounding box at every zoom if that fits (``bbox``: never used when exact
   was only too big, since a bbox is never smaller than the exact cover) ...
4. ... else, and whenever a rung above ran out of time, :func:`capped_by_bbox`:
   the zoom chosen by bounding-box counts, which need no geometry work
   (``zoom_capped``). It always answers: z0 is one tile.

Bounding boxes are counted before they are listed, so no rung lists more than
the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tilepipe.cover.projection import Projected
from tilepipe.cover.quadtree import TooMany, buffer_units, exact_levels, tile_range
from tilepipe.cover.result import Cover, Method, exact_cover, listing


def bbox_columns(prj: Projected, zoom: int, buffer_px: float) -> tuple[np.ndarray, int, int]:
    """Folded columns and the row range of the buffered bounding box."""
    n = 1 << zoom
    x0, x1, y0, y1 = tile_range(prj.bounds, zoom, buffer_units(buffer_px, zoom))
    if x1 - x0 + 1 >= n:
        cols = np.arange(n, dtype=np.int64)
    else:
        cols = np.mod(np.arange(x0, x1 + 1, dtype=np.int64), n)
    return cols, y0, y1


def bbox_count(prj: Projected, zoom: int, buffer_px: float) -> int:
    cols, y0, y1 = bbox_columns(prj, zoom, buffer_px)
    return len(cols) * (y1 - y0 + 1)


def bbox_arrays(prj: Projected, zoom: int, buffer_px: float) -> tuple[np.ndarray, np.ndarray]:
    cols, y0, y1 = bbox_columns(prj, zoom, buffer_px)
    gx, gy = np.meshgrid(cols, np.arange(y0, y1 + 1, dtype=np.int64))
    return gx.ravel(), gy.ravel()


def bbox_cover(
    prj: Projected, zooms: Sequence[int], buffer_px: float, method: Method, requested: int
) -> Cover:
    tiles = listing((z, bbox_arrays(prj, z, buffer_px)) for z in zooms)
    return Cover(tiles, method, max(zooms), requested)


def capped_exact(
    prj: Projected,
    minzoom: int,
    bound: int,
    buffer_px: float,
    max_tiles: int,
    deadline: float | None,
    requested: int,
) -> Cover | None:
    """Rung 1: the deepest zoom from ``bound`` up to ``minzoom`` whose exact cover from
    ``minzoom`` fits, or None. Raises :class:`~tilepipe.cover.quadtree.Timeout`.

    The first try fits without a buffer; with one, the descent's counts are lower
    bounds and widening can push a zoom over, so it goes on trying upwards.
    """
    z = bound
    while z >= minzoom:
        try:
            levels = exact_levels(prj, minzoom, z, buffer_px, max_tiles, deadline)
        except TooMany as e:
            z = z - 1 if e.level is None else min(z, e.level) - 1
        else:
            return exact_cover(levels, "zoom_capped", requested)
    return None


def coarser_exact(
    prj: Projected,
    minzoom: int,
    buffer_px: float,
    max_tiles: int,
    deadline: float | None,
    requested: int,
) -> Cover | None:
    """Rung 2: even ``minzoom`` alone is over budget, so the deepest coarser zoom that
    fits (its tiles stand for their subtrees), never the event dropped. Raises
    :class:`~tilepipe.cover.quadtree.Timeout`."""
    for z in range(minzoom - 1, -1, -1):
        try:
            levels = exact_levels(prj, z, z, buffer_px, max_tiles, deadline)
        except TooMany:
            continue
        return exact_cover(levels, "zoom_capped", requested)
    return None  # unreachable in practice: z0 is one tile


def out_of_time(
    prj: Projected, minzoom: int, maxzoom: int, buffer_px: float, max_tiles: int
) -> Cover:
    """Rung 3: the exact cover ran out of time (or the geometry could not be repaired
    in time: only its bounds are known). The bounding box at every zoom if it fits."""
    zooms = range(minzoom, maxzoom + 1)
    if sum(bbox_count(prj, z, buffer_px) for z in zooms) <= max_tiles:
        return bbox_cover(prj, zooms, buffer_px, "bbox", maxzoom)
    return capped_by_bbox(prj, minzoom, maxzoom, buffer_px, max_tiles)


def capped_by_bbox(
    prj: Projected, minzoom: int, maxzoom: int, buffer_px: float, max_tiles: int
) -> Cover:
    """Rung 4: out of time and over budget. The deepest zoom whose cumulative bbox count
    from ``minzoom`` fits; failing that, the deepest coarser zoom that fits alone."""
    total, deepest = 0, None
    for z in range(minzoom, maxzoom + 1):
        total += bbox_count(prj, z, buffer_px)
        if total > max_tiles:
            break
        deepest = z
    if deepest is not None:
        return bbox_cover(prj, range(minzoom, deepest + 1), buffer_px, "zoom_capped", maxzoom)
    z = _coarser_than_minzoom(prj, minzoom, buffer_px, max_tiles)
    return bbox_cover(prj, [z], buffer_px, "zoom_capped", maxzoom)


def _coarser_than_minzoom(prj: Projected, minzoom: int, buffer_px: float, max_tiles: int) -> int:
    """The deepest zoom below ``minzoom`` whose bbox cover fits ``max_tiles``
    (z0 is a single tile, so there is always one)."""
    for z in range(minzoom - 1, 0, -1):
        if bbox_count(prj, z, buffer_px) <= max_tiles:
            return z
    return 0
