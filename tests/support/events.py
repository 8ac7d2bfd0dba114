"""Event factories: wire records and the in-memory ``TileEvent``s of the stage tests.

``tile_event``, ``feature_event`` and ``telemetry_event`` build the JSON records
a producer sends (``dumps`` / ``tile_record`` give their bytes); ``state_event``
builds a validated :class:`TileEvent` for the ordering, dedup and coalescing
tests. Every argument is a keyword, so ``tile_event(version=1, ts=0)`` means
the same in every module; the tile defaults are one ordinary tile at zoom 12. ``T0`` and
``W0`` are the explicit clocks of the tests that drive the stages by hand.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tilepipe.records import TileEvent
from tilepipe.tiles import tile_key
from tilepipe.versions import version_key

T0 = 1_800_000_000_000
"""Event-time origin of the hand-driven tests, epoch ms: ``state_event(ts=…)`` counts from it."""
W0 = T0 + 3_600_000.0
"""Their wall clock, ms: an hour after the event-time origin (the same epoch)."""
NOW_MS = int(time.time() * 1000)
"""When the test session started, epoch ms: ``tile_event``'s default ``ts``, one value for
the whole session so that two calls with the same arguments give the same record."""
TILE = (14, 8802, 5373)
"""The tile ``state_event`` is on unless told otherwise (z, x, y)."""


def tile_event(
    *,
    event_id: str = "e1",
    version: int | str = 1,
    x: int = 3,
    ts: int | str = NOW_MS,
    z: int = 12,
    y: int = 7,
    source: str = "test",
    **extra: Any,
) -> dict[str, Any]:
    """A ``kind: "tile"`` record as a producer sends it (``ts``: epoch ms or RFC 3339).

    ``extra`` adds or overrides wire fields (``layers``, ``bbox``, ``tms``, …).
    """
    return {"event_id": event_id, "kind": "tile", "version": version, "source": source,
            "ts": ts, "z": z, "x": x, "y": y, **extra}  # fmt: skip


def feature_event(
    *,
    geometry: Any,
    event_id: str = "f1",
    version: int | str = 1,
    feature_id: str = "a",
    op: str = "upsert",
    ts: int | str = NOW_MS,
    source: str = "test",
    **extra: Any,
) -> dict[str, Any]:
    """A ``kind: "feature"`` record; ``extra`` adds ``minzoom``, ``maxzoom``, ``buffer``, …"""
    return {"event_id": event_id, "kind": "feature", "version": version, "source": source,
            "ts": ts, "op": op, "feature_id": feature_id, "geometry": geometry,
            **extra}  # fmt: skip


def telemetry_event(
    *,
    lat: float,
    lon: float,
    event_id: str = "r1",
    version: int | str = 1,
    sensor_id: str = "s1",
    ts: int | str = NOW_MS,
    source: str = "test",
    **readings: Any,
) -> dict[str, Any]:
    """A ``kind: "telemetry"`` reading; ``readings`` are its own fields (``pm25=12``)."""
    return {"event_id": event_id, "kind": "telemetry", "version": version, "source": source,
            "ts": ts, "sensor_id": sensor_id, "lat": lat, "lon": lon, **readings}  # fmt: skip


def dumps(doc: Any) -> bytes:
    """``doc`` as the bytes of one Kafka message or JSONL line."""
    return json.dumps(doc).encode()


def tile_record(**fields: Any) -> bytes:
    """:func:`tile_event` as the bytes on the topic."""
    return dumps(tile_event(**fields))


def state_event(
    *,
    version: int | str,
    ts: int = 0,
    tile: tuple[int, int, int] = TILE,
    obj: str = "",
    event_id: str | None = None,
    received_ms: float = W0,
    layers: tuple[str, ...] | None = None,
    h3: str | None = None,
    coverage: str = "tile",
) -> TileEvent:
    """A validated event as stages 5-7 (ordering, the version gate, coalescing) take it.

    ``ts`` is event time in ms after :data:`T0`; ``obj`` is the upstream object
    (``""``: the tile itself). The default ``event_id`` is ``{obj}/{version}@{ts}``:
    unique per object, version and time, so only a test that means a redelivery
    repeats one.
    """
    z, x, y = tile
    return TileEvent(
        key=tile_key(z, x, y),
        tms="WebMercatorQuad",
        z=z,
        x=x,
        y=y,
        version=version,
        vkey=version_key(version),
        ts_ms=T0 + ts,
        event_id=event_id if event_id is not None else f"{obj}/{version}@{ts}",
        source="test",
        layers=layers,
        received_ms=received_ms,
        object_id=obj,
        coverage=coverage,
        h3_cell=h3,
    )
