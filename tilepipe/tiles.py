"""Tile math for the OGC 2D-TMS ``WebMercatorQuad`` tile matrix set.

Pure functions, no I/O: tile bounds in EPSG:4326 and EPSG:3857, quadkeys and
the canonical tile key ``"{z}:{quadkey}"`` the dataflow partitions by. Bounds
follow the XYZ convention used by web maps (row 0 is the northernmost row),
which is also how 2D-TMS numbers ``WebMercatorQuad`` tiles.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

WEB_MERCATOR_QUAD = "WebMercatorQuad"
SUPPORTED_TMS = frozenset({WEB_MERCATOR_QUAD})
MAX_ZOOM = 30

EARTH_RADIUS_M = 6378137.0
ORIGIN_SHIFT_M = math.pi * EARTH_RADIUS_M  # half the 3857 world width
MAX_LATITUDE = 85.0511287798066  # atan(sinh(pi)) in degrees: the square world's edge


class TileId(NamedTuple):
    """One tile of ``WebMercatorQuad``: zoom, column, row (XYZ: row 0 is the northernmost).

    The one name for what travels as ``z, x, y``; it is a tuple, so it unpacks
    (``tile_key(*tile)``) and compares equal to a plain ``(z, x, y)``.
    """

    z: int
    x: int
    y: int


ZXY = tuple[int, int, int]
"""The plain tuple form of a :class:`TileId`, for bulk lists (a cover lists up to its
whole budget at once: 234,878 tiles took 16 ms to list as tuples and 71 ms as
``TileId``, measured; the country cover of ``python -m bench.cover`` takes 160 ms in all)."""


class Bounds(NamedTuple):
    """A ``(west, south, east, north)`` box; order as in GeoJSON ``bbox``."""

    west: float
    south: float
    east: float
    north: float


def tile_count(z: int) -> int:
    return 1 << z


def tile_bounds_lonlat(z: int, x: int, y: int) -> Bounds:
    """Bounds of tile ``z/x/y`` in EPSG:4326 degrees."""
    n = 1 << z
    west = x / n * 360.0 - 180.0
    east = (x + 1) / n * 360.0 - 180.0
    north = _row_edge_latitude(y, n)
    south = _row_edge_latitude(y + 1, n)
    return Bounds(west, south, east, north)


def tile_bounds_mercator(z: int, x: int, y: int) -> Bounds:
    """Bounds of tile ``z/x/y`` in EPSG:3857 metres."""
    size = 2 * ORIGIN_SHIFT_M / (1 << z)
    west = -ORIGIN_SHIFT_M + x * size
    north = ORIGIN_SHIFT_M - y * size
    return Bounds(west, north - size, west + size, north)


@functools.lru_cache(maxsize=1 << 16)
def _row_edge_latitude(row: int, n: int) -> float:
    # Cached: updates come in regions, so rows repeat, and atan(sinh()) is the costly part.
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / n))))


def _spread_bits(v: int) -> int:
    """Put a zero bit between each bit of a 32-bit ``v`` (Morton order)."""
    v = (v | (v << 16)) & 0x0000FFFF0000FFFF
    v = (v | (v << 8)) & 0x00FF00FF00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v << 2)) & 0x3333333333333333
    return (v | (v << 1)) & 0x5555555555555555


# Each byte of a Morton code is four quadkey digits.
_BYTE_DIGITS = tuple("".join(str((b >> shift) & 3) for shift in (6, 4, 2, 0)) for b in range(256))


def quadkey(z: int, x: int, y: int) -> str:
    """Bing-style quadkey; ``""`` for the z0 world tile.

    Digit ``i`` is ``xbit + 2 * ybit`` of bit ``z - i``: the Morton code of
    ``(x, y)`` written in base 4. Interleaving by masks and reading it a byte
    at a time is several times faster than a digit loop, and every tile event
    needs its key.
    """
    if z == 0:
        return ""
    morton = _spread_bits(x) | (_spread_bits(y) << 1)
    nbytes = (z + 3) >> 2
    digits = "".join(map(_BYTE_DIGITS.__getitem__, morton.to_bytes(nbytes, "big")))
    return digits[-z:]


def from_quadkey(qk: str) -> TileId:
    """Inverse of :func:`quadkey`."""
    if qk.strip("0123") != "":
        raise ValueError(f"quadkey {qk!r} has digits other than 0-3")
    x = y = 0
    z = len(qk)
    for i, digit in enumerate(qk):
        mask = 1 << (z - i - 1)
        d = int(digit)
        if d & 1:
            x |= mask
        if d & 2:
            y |= mask
    return TileId(z, x, y)


def tile_key(z: int, x: int, y: int) -> str:
    """The key the dataflow partitions and orders by: ``"{z}:{quadkey}"``.

    Quadkeys keep a tile's descendants under a common prefix, so keys of one
    area sort together; the zoom prefix keeps the z0 key non-empty.
    """
    return f"{z}:{quadkey(z, x, y)}"


def parse_tile_key(key: str) -> TileId:
    """Inverse of :func:`tile_key`."""
    z_text, qk = key.split(":", 1)
    tile = from_quadkey(qk)
    if tile.z != int(z_text):
        raise ValueError(f"tile key {key!r}: zoom {z_text} does not match quadkey length {tile.z}")
    return tile


def bbox_matches(z: int, x: int, y: int, bbox: tuple[float, ...]) -> bool:
    """Whether a producer-supplied ``bbox`` describes tile ``z/x/y`` (in degrees).

    The tolerance is 1e-6 degrees (about 10 cm), but never more than a
    thousandth of the tile, so a neighbour's bbox never matches at high zoom.
    """
    if len(bbox) != 4:
        raise ValueError(f"bbox needs 4 numbers (west, south, east, north), got {len(bbox)}")
    w, s, e, n = tile_bounds_lonlat(z, x, y)
    tol_x = min(1e-6, (e - w) * 1e-3)
    tol_y = min(1e-6, (n - s) * 1e-3)
    return (
        abs(bbox[0] - w) <= tol_x
        and abs(bbox[2] - e) <= tol_x
        and abs(bbox[1] - s) <= tol_y
        and abs(bbox[3] - n) <= tol_y
    )
