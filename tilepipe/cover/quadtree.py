"""The exact cover at one zoom and over a zoom range: a quadtree descent.

Each level tests every candidate tile at once with prepared, vectorised
shapely predicates (:mod:`tilepipe.cover.projection`); a tile inside a polygon
is kept as a block (its descendants are counted and listed without tests), a
tile beyond the buffer is dropped with its subtree, only boundary tiles split.
A budget (:class:`TooMany`) and a deadline (:class:`Timeout`) stop it early;
what to do then is :mod:`tilepipe.cover.fallbacks`'.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import shapely

from tilepipe.cover.projection import Projected, Reach, per_box

TILE_PX = 256  # buffers are given in pixels of 256-px tiles

# Slack, in tiles, when turning a bounding box into a tile range: float
# rounding must never drop a tile that touches the box; the extra candidate
# tiles are tested like any other, so exactness is unaffected.
_RANGE_EPS = 1e-6
# Boxes tested per vectorised call: bounds memory and lets the clock be checked.
_CHUNK = 16_384
_CHILD_DX = np.array([0, 1, 0, 1], dtype=np.int64)
_CHILD_DY = np.array([0, 0, 1, 1], dtype=np.int64)


class TooMany(Exception):
    def __init__(self, lower_bound: int, level: int | None = None) -> None:
        super().__init__(lower_bound)
        self.lower_bound = lower_bound
        self.level = level  # with a per-level budget: the first level over it


class Timeout(Exception):
    """The exact cover ran past its deadline; the caller falls back."""


def _check_clock(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise Timeout


def buffer_units(buffer_px: float, zoom: int) -> float:
    return buffer_px / (TILE_PX * (1 << zoom))


def tile_range(
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
        x0, x1, y0, y1 = tile_range(bounds, level, b)
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= 4:
            return level
    return 0


def _fold_keys(xs: np.ndarray, ys: np.ndarray, level: int) -> np.ndarray:
    """One int64 per tile after folding x into the world: ``x << level | y``."""
    return (np.mod(xs, 1 << level) << level) | ys


def _decode(keys: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    return keys >> level, keys & ((1 << level) - 1)


@dataclass(frozen=True)
class Tiles:
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
    prj: Projected,
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
    that decide the cover (not pruning): see ``projection.TIE``.
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
        h = prj.hits(boxes, edges, per_box(b, sl), final)
        hit[sl] = h
        if want_inside and prj.area is not None and h.any():
            # Only a tile that touches can be inside; a covered tile is a block.
            inside[sl][h] = prj.inside(boxes[h], tuple(e[h] for e in edges))
    return hit, inside


def descend(
    prj: Projected,
    zoom: int,
    b: float,
    limit: int | None,
    deadline: float | None,
    budget: tuple[int, int] | None = None,
) -> Tiles:
    """Exact cover at ``zoom`` as blocks and leaves; see the module docstring.

    Raises :class:`TooMany` as soon as the cover surely exceeds ``limit``
    (each boundary tile has at least one distinct covered descendant) and
    :class:`Timeout` once ``deadline`` passes (checked before every level).

    With ``budget=(minzoom, max_tiles)`` it also counts the cover of every
    level from ``minzoom`` on the way down (that zoom's exact cover when
    ``b`` is 0, a lower bound of its buffered cover otherwise) and raises
    ``TooMany(level=l)`` at the first level where the running total passes
    ``max_tiles``: one descent finds how deep a capped cover can go.
    """
    level = _start_level(prj.bounds, zoom, b)
    first_level = level
    x0, x1, y0, y1 = tile_range(prj.bounds, level, b)
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
                        raise TooMany(running, above)
            if level >= budget[0]:
                running += blocked_here + len(np.unique(keys))
                if running > budget[1]:
                    raise TooMany(running, level)
        if level == zoom:
            return Tiles(zoom, blocks, np.unique(keys))
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
                raise TooMany(lower)
        if budget is not None:
            # Stop before evaluating a level that surely breaks the budget:
            # each boundary tile has at least one covered child.
            edges = len(np.unique(keys))
            first = max(level + 1, budget[0])
            lower = ((blocked_here * 4) << (2 * (first - level - 1))) + edges
            if running + lower > budget[1]:
                raise TooMany(running + lower, first)
        xs = np.repeat(xs * 2, 4) + np.tile(_CHILD_DX, len(xs))
        ys = np.repeat(ys * 2, 4) + np.tile(_CHILD_DY, len(ys))
        blocked_here *= 4
        level += 1


def _hits_folded(
    prj: Projected,
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
    # The extended columns that can be within b: as in tile_range, per tile.
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


def _parent_tiles(child: Tiles) -> Tiles:
    """The parents of a cover: a tile touches iff one of its children does."""
    k = child.zoom - 1
    xs, ys = _decode(child.leaves, child.zoom)
    parts = [((xs >> 1) << k) | (ys >> 1)]
    blocks = dict(child.blocks)
    single = blocks.pop(child.zoom, None)  # blocks of one child tile: parents are leaves
    if single is not None:
        bx, by = _decode(single, child.zoom)
        parts.append(((bx >> 1) << k) | (by >> 1))
    return Tiles(k, blocks, np.unique(np.concatenate(parts)))


@functools.lru_cache(maxsize=8)
def _ring_offsets(r: int) -> tuple[np.ndarray, np.ndarray]:
    span = np.arange(-r, r + 1, dtype=np.int64)
    dx, dy = (a.ravel() for a in np.meshgrid(span, span))
    keep = (dx != 0) | (dy != 0)
    return dx[keep], dy[keep]


def _ring(tiles: Tiles, r: int) -> np.ndarray:
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
    prj: Projected, chain: dict[int, Tiles], buffer_px: float, deadline: float | None
) -> dict[int, Tiles]:
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
            out[k] = Tiles(k, chain[k].blocks, np.union1d(chain[k].leaves, add))
    return out


def exact_levels(
    prj: Projected,
    minzoom: int,
    maxzoom: int,
    buffer_px: float,
    limit: int | None,
    deadline: float | None,
) -> dict[int, Tiles]:
    """Exact covers for minzoom..maxzoom: one quadtree, parents derived.

    Over ``limit`` (the total of all zooms) it raises :class:`TooMany`, with
    the first level whose running total is surely over it when the descent
    can tell (always without a buffer).
    """
    budget = None if limit is None else (minzoom, limit)
    top = descend(prj, maxzoom, buffer_units(buffer_px, maxzoom), None, deadline, budget)
    chain = {maxzoom: top}
    total = top.count()
    if limit is not None and total > limit:
        raise TooMany(total)
    cur = top
    for k in range(maxzoom - 1, minzoom - 1, -1):
        _check_clock(deadline)
        cur = _parent_tiles(cur)
        chain[k] = cur
        total += cur.count()  # with a buffer a lower bound: widening only adds
        if limit is not None and total > limit:
            raise TooMany(total)
    if buffer_px > 0 and len(chain) > 1:
        _check_clock(deadline)
        chain = _widen(prj, chain, buffer_px, deadline)
        total = sum(t.count() for t in chain.values())
        if limit is not None and total > limit:
            raise TooMany(total)
    return chain
