"""Stage 3: enrich and expand events into per-tile events.

A ``tile`` event already names its tile (validation computed its key and
event time). Kinds that do not know tiles expand here:

- ``feature``: the tiles its geometry touches, covered once at ``maxzoom``
  and derived upwards to ``minzoom`` (:mod:`operators.cover`), under a
  per-event tile budget with a recorded fallback (exact → bbox → coarser
  zoom). With ``previous_geometry`` both places are dirty; with diff expiry
  only the symmetric difference of old and new is (a small edit to a big lake
  dirties the tiles around the edit, not the lake). When old and new are the
  same shape, the whole feature is dirty (its attributes may have changed).
- ``telemetry``: the reading's H3 cell at the configured resolution; the
  tiles that cell touches at each configured zoom are dirty.

Every fanned-out tile event carries the upstream object (``feature:`` or
``sensor:`` plus source and id), so versions of different objects on one tile
never suppress each other, and exactly one tile event per record carries the
record's accounting weight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import bytewax.operators as op
import h3
import shapely
from bytewax.dataflow import Stream, operator
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from operators.cover import Cover, cover_range, tile_cover
from tilepipe import metrics
from tilepipe.records import DeadLetter, FanOutEvent, TileEvent
from tilepipe.tiles import tile_key
from tilepipe.wire import FeatureEventIn, TelemetryEventIn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrichConfig:
    feature_minzoom: int = 0
    feature_maxzoom: int = 14
    max_tiles_per_event: int = 10_000
    cover_deadline_s: float = 0.25
    diff_expire: bool = True
    h3_resolution: int = 9
    telemetry_zooms: tuple[int, ...] = (10, 12, 14)


def dirty_geometry(model: FeatureEventIn, diff_expire: bool) -> BaseGeometry:
    """The part of the map a feature mutation changes."""
    new, old = model.geometry, model.previous_geometry
    if old is None or model.op == "delete":
        return new
    if diff_expire:
        try:
            changed = shapely.symmetric_difference(new, old)
        except shapely.errors.GEOSException:
            log.warning("diff expiry failed for feature %s; covering old and new", model.feature_id)
        else:
            # The same shape again: only attributes can have changed, so all of it is dirty.
            return new if changed.is_empty else changed
    return shapely.GeometryCollection([new, old])


def _events(
    fan: FanOutEvent, tiles: Iterable[tuple[int, int, int]], object_id: str, coverage: str,
    h3_cell: str | None = None,
) -> list[TileEvent]:  # fmt: skip
    m = fan.model
    layers = tuple(m.layers) if m.layers is not None else None
    out = [
        TileEvent(
            tile_key(z, x, y),
            m.tms,
            z,
            x,
            y,
            m.version,
            fan.vkey,
            fan.ts_ms,
            m.event_id,
            m.source,
            layers,
            fan.received_ms,
            object_id,
            coverage,
            h3_cell,
            0,
        )
        for z, x, y in tiles
    ]
    if out:
        out[0] = out[0]._replace(weight=1)
    return out


def expand_feature(fan: FanOutEvent, cfg: EnrichConfig) -> list[TileEvent]:
    m: FeatureEventIn = fan.model
    minzoom = cfg.feature_minzoom if m.minzoom is None else m.minzoom
    maxzoom = cfg.feature_maxzoom if m.maxzoom is None else m.maxzoom
    minzoom = min(minzoom, maxzoom)
    cover: Cover = cover_range(
        dirty_geometry(m, cfg.diff_expire),
        minzoom,
        maxzoom,
        m.buffer,
        cfg.max_tiles_per_event,
        cfg.cover_deadline_s,
    )
    metrics.FANOUT_TILES.observe(len(cover.tiles))
    metrics.COVERS.labels(cover.method).inc()
    if cover.method != "exact":
        log.info(
            "feature %s covered by %s down to z%d (asked z%d)",
            m.feature_id, cover.method, cover.zoom, cover.requested_maxzoom,
            extra={"event_id": m.event_id},
        )  # fmt: skip
    return _events(fan, cover.tiles, f"feature:{m.source}:{m.feature_id}", cover.method)


def expand_telemetry(fan: FanOutEvent, cfg: EnrichConfig) -> list[TileEvent]:
    m: TelemetryEventIn = fan.model
    cell = h3.latlng_to_cell(m.lat, m.lon, cfg.h3_resolution)
    hexagon = Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(cell)])
    tiles = sorted((z, x, y) for z in cfg.telemetry_zooms for x, y in tile_cover(hexagon, z))
    metrics.FANOUT_TILES.observe(len(tiles))
    return _events(fan, tiles, f"sensor:{m.source}:{m.sensor_id}", "h3", cell)


def expand(event: TileEvent | FanOutEvent, cfg: EnrichConfig) -> list[TileEvent] | DeadLetter:
    """The tile events an event stands for, or a dead letter if it cannot be expanded."""
    if isinstance(event, TileEvent):
        return [event]
    try:
        if isinstance(event.model, FeatureEventIn):
            return expand_feature(event, cfg)
        return expand_telemetry(event, cfg)
    except Exception as e:  # never lose a record to a bug or a GEOS surprise
        log.exception("enrich: could not expand event %s", event.model.event_id)
        rec = event.record
        return DeadLetter(
            "expansion_failed",
            f"{type(e).__name__}: {e}",
            rec.value or b"",
            rec.origin,
            rec.received_ms,
        )


def expand_batch(
    batch: list[TileEvent | FanOutEvent], cfg: EnrichConfig
) -> list[TileEvent | DeadLetter]:
    out: list[TileEvent | DeadLetter] = []
    for event in batch:
        if isinstance(event, TileEvent):  # the common case, kept cheap
            out.append(event)
            continue
        result = expand(event, cfg)
        if isinstance(result, DeadLetter):
            out.append(result)
        else:
            out.extend(result)
    return out


@dataclass(frozen=True)
class Expanded:
    oks: Stream[TileEvent]
    errs: Stream[DeadLetter]


@operator
def enrich(step_id: str, up: Stream[TileEvent | FanOutEvent], *, config: EnrichConfig) -> Expanded:
    """Expand every event into the tile events it stands for.

    ```python
    expanded = enrich("enrich", validated.oks, config=EnrichConfig(feature_maxzoom=16))
    tiles, failed = expanded.oks, expanded.errs
    ```

    :arg config: zoom range defaults, tile budget, diff expiry, H3 settings.
    :returns: ``oks`` (one :class:`TileEvent` per tile) and ``errs`` (dead letters).
    """
    results = op.flat_map_batch("expand", up, lambda batch: expand_batch(batch, config))
    split = op.branch("split", results, lambda r: isinstance(r, TileEvent))
    return Expanded(split.trues, split.falses)  # type: ignore[arg-type]
