"""The gateway's routing and conflation core: which sessions hear an update, and what they get.

Pure logic, no I/O, so unit tests and the benchmark drive it directly.

- :class:`Router` maps a tile to the sessions that track it and a quadkey cell
  to the sessions whose area covers it. One dict lookup each per update, never
  a channel per tile: an update costs O(1) plus the sessions it reaches.
- :class:`Session` is one client's state whatever its transport: the tiles it
  tracks (each with what it was last sent), its area, and its *conflation map*,
  the newest pending message per tile. A slow reader therefore holds at most
  one message per tile, never a queue that grows with the update rate.

Order. Messages reach a session in the order the single Redis subscription
delivers them, which is the order the sink published them in; the sink's
compare-and-set publishes only what advanced. So the live path never goes
backwards by itself. A state read (resume) is placed into that order by a
barrier (see ``gateway.hub``): a session's per-tile ``gen`` counts the live
messages it was offered, and a state read whose tile saw a live message since
the read was registered is dropped as redundant (the live one is at least as
new). The ``version`` field is *not* used to order a tile's messages: for
feature and sensor events it is the winning object's version, so a tile may
legitimately go from version 5 (feature A) to version 1 (feature B). It is
used, with the hash, to compare a stored message with what a client says it
already has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tilepipe.tiles import MAX_LATITUDE, MAX_ZOOM, quadkey
from tilepipe.versions import VersionKey, version_key

TileId = tuple[int, int, int]
"""``(z, x, y)`` in ``WebMercatorQuad``."""
Cell = tuple[int, str]
"""``(zoom of the updates it stands for, quadkey prefix)``; see :func:`area_cells`."""


class FrameError(ValueError):
    """A client request that cannot be applied; ``code`` goes into the error frame."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


# -- parsing what clients send ---------------------------------------------------------------


def check_tile(z: int, x: int, y: int) -> TileId:
    if not 0 <= z <= MAX_ZOOM or not (0 <= x < 1 << z and 0 <= y < 1 << z):
        raise FrameError("bad_tile", f"tile {z}/{x}/{y} does not exist: 0 <= x, y < 2^z, z <= 30")
    return (z, x, y)


@dataclass(frozen=True, slots=True)
class Have:
    """What a client says it already has of a tile: a version and maybe the message hash."""

    version: VersionKey | None = None
    hash: str | None = None

    def wants(self, version: VersionKey, hash_: str) -> bool:
        """Whether a stored message (``version``, ``hash_``) is news to this client.

        With the hash the answer is exact: the store holds only a tile's latest
        message, so a different hash is a newer message (for feature tiles
        possibly at a lower ``version``). With a version alone: strictly newer.
        """
        if self.hash is not None:
            return hash_ != self.hash
        return self.version is None or version > self.version


NOTHING = Have()


def parse_tile_spec(text: str) -> tuple[TileId, Have]:
    """``z/x/y[@version[:hash]]`` (the SSE ``tiles`` list and WS ``track`` keys)."""
    spec, _, have = text.strip().partition("@")
    parts = spec.split("/")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise FrameError(
            "bad_tile", f"{text!r} is not z/x/y[@version[:hash]] (e.g. 14/8805/5376@3)"
        )
    tile = check_tile(int(parts[0]), int(parts[1]), int(parts[2]))
    if not have:
        return tile, NOTHING
    version, _, hash_ = have.partition(":")
    return tile, Have(_version(version, text), hash_ or None)


def parse_have(value: Any, where: str) -> Have:
    """A WS ``track`` value: ``null``, a version, or ``{"version": V, "hash": H}``."""
    if value is None:
        return NOTHING
    if isinstance(value, dict):
        v, h = value.get("version"), value.get("hash")
        if h is not None and not isinstance(h, str):
            raise FrameError("bad_frame", f"{where}: hash must be a string")
        return Have(None if v is None else _version(v, where), h)
    return Have(_version(value, where), None)


def _version(value: Any, where: str) -> VersionKey:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    try:
        return version_key(value)
    except ValueError as e:
        raise FrameError("bad_version", f"{where}: {e}") from None


# -- areas as quadkey cells ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Area:
    """A bbox (degrees) and a zoom range; covers the tiles of those zooms it intersects."""

    west: float
    south: float
    east: float
    north: float
    minzoom: int
    maxzoom: int

    @classmethod
    def parse(cls, bbox: Any, minzoom: Any, maxzoom: Any) -> Area:
        try:
            w, s, e, n = (float(v) for v in bbox)
            lo, hi = int(minzoom), int(maxzoom)
        except (TypeError, ValueError):
            raise FrameError(
                "bad_area", "area needs bbox [west, south, east, north] and integer minzoom/maxzoom"
            ) from None
        if not all(map(math.isfinite, (w, s, e, n))) or not (
            -180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90
        ):
            raise FrameError(
                "bad_area", f"bbox {[w, s, e, n]} is not west,south,east,north degrees"
            )
        if w > e:
            raise FrameError(
                "bad_area", "bbox crosses the antimeridian (west > east): send two areas' tiles"
                " as one bbox per side, or track the tiles"
            )  # fmt: skip
        if not 0 <= lo <= hi <= MAX_ZOOM:
            raise FrameError("bad_area", f"zooms {lo}..{hi}: need 0 <= minzoom <= maxzoom <= 30")
        return cls(w, s, e, n, lo, hi)

    def tile_range(self, z: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` inclusive: the tiles of zoom ``z`` this area intersects."""
        n = 1 << z

        def col(lon: float) -> int:
            return min(n - 1, max(0, int((lon + 180.0) / 360.0 * n)))

        def row(lat: float) -> int:
            lat = max(-MAX_LATITUDE, min(MAX_LATITUDE, lat))
            r = math.radians(lat)
            return min(n - 1, max(0, int((1 - math.asinh(math.tan(r)) / math.pi) / 2 * n)))

        return col(self.west), row(self.north), col(self.east), row(self.south)

    def covers(self, z: int, x: int, y: int) -> bool:
        if not self.minzoom <= z <= self.maxzoom:
            return False
        x0, y0, x1, y1 = self.tile_range(z)
        return x0 <= x <= x1 and y0 <= y <= y1


def cell_of(z: int, qk: str, level: int) -> Cell:
    """The routing cell of an update at zoom ``z``: its quadkey cut at ``level``."""
    return (z, qk[:level] if z > level else qk)


def area_cells(area: Area, level: int, limit: int) -> set[Cell]:
    """The cells an area is routed by: per zoom, its tiles cut at ``level``.

    Up to ``level`` these are the area's tiles themselves (exact); deeper, the
    tiles of ``level`` under the area, and deliveries there are checked against
    the bbox. Raises :class:`FrameError` past ``limit`` cells.
    """
    cells: set[Cell] = set()
    for z in range(area.minzoom, area.maxzoom + 1):
        at = min(z, level)
        x0, y0, x1, y1 = area.tile_range(at)
        count = (x1 - x0 + 1) * (y1 - y0 + 1)
        if len(cells) + count > limit:
            raise FrameError(
                "area_too_large",
                f"the area needs more than {limit} cells (zoom {z}): narrow the bbox, raise"
                " minzoom, or track the visible tiles instead",
                limit=limit,
            )
        for x in range(x0, x1 + 1):
            for y in range(y0, y1 + 1):
                cells.add((z, quadkey(at, x, y)))
    return cells


# -- messages and sessions -------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One ``tile_updated`` from Redis: its bytes exactly as published, and what routing needs."""

    raw: bytes
    tile: TileId
    qk: str
    version: VersionKey
    hash: str
    layers: frozenset[str] | None
    received: float  # time.monotonic() when the gateway read it
    live: bool = True  # False: read from the store for a resume

    @classmethod
    def parse(cls, raw: bytes, received: float | None = None) -> Message:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for anything not a tile update."""
        doc = orjson.loads(raw)
        if doc.get("type") != "tile_updated":
            raise ValueError("not a tile_updated message")
        z, x, y = int(doc["z"]), int(doc["x"]), int(doc["y"])
        check_tile(z, x, y)
        layers = doc.get("layers")
        qk = doc.get("quadkey")
        return cls(
            raw,
            (z, x, y),
            qk if isinstance(qk, str) and len(qk) == z else quadkey(z, x, y),
            version_key(doc["version"]),
            str(doc.get("hash", "")),
            frozenset(layers) if isinstance(layers, list) else None,
            time.monotonic() if received is None else received,
        )


@dataclass(slots=True)
class Tracked:
    """A tracked tile of one session: what it was last given, and its live-message count."""

    have: Have
    gen: int = 0


@dataclass(eq=False, slots=True)
class Session:
    """One client's subscriptions and conflation map; the hub and transports drive it."""

    id: str
    max_tiles: int
    max_pending: int
    layers: frozenset[str] | None = None
    """Deliver only messages for these layers (or for all layers); ``None``: every message."""
    tiles: dict[TileId, Tracked] = field(default_factory=dict)
    area: Area | None = None
    cells: set[Cell] = field(default_factory=set)
    pending: dict[TileId, Message] = field(default_factory=dict)
    overflowed: bool = False
    """Area updates were dropped for the pending bound: the client must refresh its area."""
    notices: list[bytes] = field(default_factory=list)
    """Control frames (live, resync, error) to send before the next messages."""
    wake: Any = None  # set by the hub: a callable that schedules the writer
    delivered: int = 0

    def wants_layers(self, msg: Message) -> bool:
        return self.layers is None or msg.layers is None or not self.layers.isdisjoint(msg.layers)

    def offer(self, msg: Message) -> bool:
        """A live message for this session: conflate it into the pending map."""
        if not self.wants_layers(msg):
            return False
        sub = self.tiles.get(msg.tile)
        if sub is not None:
            sub.gen += 1
            if sub.have.hash == msg.hash:
                return False  # a re-broadcast of what the client has
            sub.have = Have(msg.version, msg.hash)
        elif msg.tile not in self.pending and len(self.pending) >= self.max_pending:
            # Only area tiles can grow the map past the tracked ones: drop them and say so.
            if not self.overflowed:
                self.overflowed = True
                self.notices.append(resync_frame("overflow"))
            return False
        self.pending[msg.tile] = msg
        if self.wake is not None:
            self.wake()
        return True

    def offer_state(self, msg: Message, gen: int) -> bool:
        """A stored message read for a resume; ``gen`` is the tile's count when it was asked."""
        sub = self.tiles.get(msg.tile)
        if sub is None or sub.gen != gen or not self.wants_layers(msg):
            return False  # untracked meanwhile, or a live message already superseded the read
        if not sub.have.wants(msg.version, msg.hash):
            return False
        sub.have = Have(msg.version, msg.hash)
        self.pending[msg.tile] = msg
        if self.wake is not None:
            self.wake()
        return True

    def take(self, limit: int) -> list[Message]:
        """Up to ``limit`` pending messages, oldest first; they leave the map."""
        if len(self.pending) <= limit:
            out = list(self.pending.values())
            self.pending.clear()
            return out
        keys = list(self.pending)[:limit]
        return [self.pending.pop(k) for k in keys]

    def note(self, frame: bytes) -> None:
        self.notices.append(frame)
        if self.wake is not None:
            self.wake()


class Router:
    """Tile → sessions and cell → sessions; the only index the fan-out reads."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.by_tile: dict[TileId, set[Session]] = {}
        self.by_cell: dict[Cell, set[Session]] = {}

    def track(self, s: Session, tiles: dict[TileId, Have]) -> dict[TileId, int]:
        """Add ``tiles`` to ``s`` (its cap checked first); returns each tile's ``gen`` now."""
        new = [t for t in tiles if t not in s.tiles]
        if len(s.tiles) + len(new) > s.max_tiles:
            raise FrameError(
                "too_many_tiles",
                f"a session tracks at most {s.max_tiles} tiles ({len(s.tiles)} now, {len(new)}"
                " more asked): untrack tiles that left the view first",
                limit=s.max_tiles,
            )
        gens = {}
        for t, have in tiles.items():
            sub = s.tiles.get(t)
            if sub is None:
                sub = s.tiles[t] = Tracked(have)
                self.by_tile.setdefault(t, set()).add(s)
            else:
                sub.have = have  # the client says what it has now
            gens[t] = sub.gen
        return gens

    def untrack(self, s: Session, tiles: Iterable[TileId]) -> None:
        for t in tiles:
            if s.tiles.pop(t, None) is not None:
                self._remove(self.by_tile, t, s)
            s.pending.pop(t, None)

    def set_area(self, s: Session, area: Area | None, cells: set[Cell]) -> None:
        for c in s.cells - cells:
            self._remove(self.by_cell, c, s)
        for c in cells - s.cells:
            self.by_cell.setdefault(c, set()).add(s)
        s.area, s.cells = area, cells

    def drop(self, s: Session) -> None:
        self.untrack(s, list(s.tiles))
        self.set_area(s, None, set())
        s.pending.clear()

    @staticmethod
    def _remove(index: dict[Any, set[Session]], key: Any, s: Session) -> None:
        group = index.get(key)
        if group is not None:
            group.discard(s)
            if not group:
                del index[key]

    def route(self, msg: Message) -> Iterator[Session]:
        """Every session that should hear ``msg``, each once."""
        tracked = self.by_tile.get(msg.tile, ())
        yield from tracked
        if not self.by_cell:
            return
        z, x, y = msg.tile
        for s in self.by_cell.get(cell_of(z, msg.qk, self.level), ()):
            if s not in tracked and (
                z <= self.level or (s.area is not None and s.area.covers(z, x, y))
            ):
                yield s


# -- frames the server sends -----------------------------------------------------------------


def batch_frame(messages: list[Message]) -> bytes:
    """One message as it is on Redis; several as ``{"type":"batch","messages":[...]}``."""
    if len(messages) == 1:
        return messages[0].raw
    return b'{"type":"batch","messages":[' + b",".join(m.raw for m in messages) + b"]}"


def resync_frame(reason: str, **extra: Any) -> bytes:
    return orjson.dumps({"type": "resync", "reason": reason, **extra})


def error_frame(code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"type": "error", "code": code, "message": message, **extra})
