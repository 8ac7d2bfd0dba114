"""Stage 2's fast decoder for the record that dominates traffic: a valid tile event.

pydantic (:mod:`tilepipe.wire`) stays the schema of record and the source of
every error message. This path decodes with msgspec into a plain struct and
applies the same checks, through the same functions the pydantic validators
call; whatever it does not accept outright (another kind, any doubt, any
error) it returns ``None`` for, and the record goes through pydantic, which
decides. So it can only make valid tile events cheaper, never change what is
valid: ``tests/unit/test_fastpath.py`` holds the two paths to that.
"""

from __future__ import annotations

import msgspec

from tilepipe.records import TileEvent
from tilepipe.tiles import MAX_ZOOM, SUPPORTED_TMS, WEB_MERCATOR_QUAD, bbox_matches, tile_key
from tilepipe.timeutil import parse_event_time
from tilepipe.versions import version_key
from tilepipe.wire import MAX_ID_CHARS, MAX_LAYER_CHARS, MAX_LAYERS


class _TileWire(msgspec.Struct, frozen=True):
    kind: str
    event_id: str
    version: int | str
    source: str
    ts: int | float | str
    z: int
    x: int
    y: int
    tms: str = WEB_MERCATOR_QUAD
    layers: list[str] | None = None
    bbox: list[float] | None = None


_DECODER = msgspec.json.Decoder(_TileWire)


def fast_tile_event(body: bytes, received_ms: float) -> TileEvent | None:
    """The event if ``body`` is a valid tile event, else ``None`` (ask pydantic)."""
    try:
        w = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if w.kind != "tile" or w.tms not in SUPPORTED_TMS:
        return None
    if not (0 < len(w.event_id) <= MAX_ID_CHARS and 0 < len(w.source) <= MAX_ID_CHARS):
        return None
    z, x, y = w.z, w.x, w.y
    if not 0 <= z <= MAX_ZOOM or not (0 <= x < (1 << z) and 0 <= y < (1 << z)):
        return None
    layers = w.layers
    if layers is not None and (
        len(layers) > MAX_LAYERS or any(len(name) > MAX_LAYER_CHARS for name in layers)
    ):
        return None
    if w.bbox is not None and (len(w.bbox) != 4 or not bbox_matches(z, x, y, tuple(w.bbox))):
        return None
    try:
        vkey = version_key(w.version)
        ts_ms = parse_event_time(w.ts)
    except ValueError:
        return None
    return TileEvent(
        tile_key(z, x, y), w.tms, z, x, y, w.version, vkey, ts_ms, w.event_id, w.source,
        tuple(layers) if layers is not None else None, received_ms,
    )  # fmt: skip
