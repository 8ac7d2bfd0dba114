"""What a cover returns: :class:`Cover`, its tiles listed in (z, x, y) order.

Below both the exact cover and the fallbacks, so each builds its answer the
same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tilepipe.cover.quadtree import Tiles
from tilepipe.tiles import ZXY

Method = Literal["exact", "bbox", "zoom_capped"]


@dataclass(frozen=True)
class Cover:
    """Tiles dirtied by a geometry over a zoom range.

    ``method`` says how they were found: ``"exact"`` (every zoom is the exact
    cover), ``"bbox"`` (the exact cover ran out of time; each zoom is the
    buffered bounding box of the geometry, a superset) or ``"zoom_capped"``
    (over budget: tiles stop at ``zoom`` < ``requested_maxzoom``, and every
    descendant of a listed ``zoom`` tile is dirty too).
    """

    tiles: list[ZXY]  # (z, x, y), sorted; plain tuples, not TileId: see tilepipe.tiles.ZXY
    method: Method
    zoom: int  # the deepest zoom actually covered
    requested_maxzoom: int


def listing(per_zoom: Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]) -> list[ZXY]:
    """``(z, x, y)`` of every zoom's ``(xs, ys)``, sorted."""
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


def exact_cover(levels: dict[int, Tiles], method: Method, requested: int) -> Cover:
    tiles = listing((z, t.arrays()) for z, t in levels.items())
    return Cover(tiles, method, max(levels), requested)
