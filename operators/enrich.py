"""Stage 3: enrich and expand events into per-tile events.

A ``tile`` event already names its tile (validation computed its key and
event time). Kinds that do not know tiles expand here:

- ``feature``: the tiles its geometry touches, covered once at ``maxzoom``
  and derived upwards to ``minzoom`` (:mod:`tilepipe.cover`), under a
  per-event tile budget with a recorded fallback (exact → bbox → coarser
  zoom). With ``previous_geometry`` both places are dirty; with diff expiry
  only the symmetric difference of old and new is (a small edit to a big lake
  dirties the tiles around the edit, not the lake). When old and new are the
  same shape, the whole feature is dirty (its attributes may have changed).
  The difference is computed within the cover's time budget, in the repair
  worker (:mod:`tilepipe.repair`); over it, old and new are both dirty.
- ``telemetry``: the reading's H3 cell at the configured resolution; the
  tiles that cell touches at each configured zoom are dirty, under the same
  per-event budget and fallbacks. Web Mercator ends at ±85.0511°: a reading
  beyond it dirties the tiles of the cell at the edge (the cell at the pole,
  closed over the pole, was the whole top row: 21,504 tiles at lat 90).

Budgets: ``max_tiles_per_event`` bounds one record, ``max_tiles_per_batch`` a
whole source batch. Bytewax keeps everything one step emits for a batch in
memory until the next step runs, and the steps after it hold per-tile state:
measured through ``tilepipe run`` file -> file, 100 feature records of ~300 B
that expand to 314,923 tile events peaked at 1,759 MiB of RSS (~5.5 KiB a
tile event; a Kafka batch of 1,000 such records would be ~17 GiB). So once a
batch has used its budget the records after it are covered within what is
left (at least :data:`MIN_TILES_PER_EVENT`), falling back to a coarser zoom as
the per-event budget does, and recorded the same way (``coverage``,
``tilepipe_covers_total``): the same 100 records peak at 262-295 MiB.

Every fanned-out tile event carries the upstream object (``feature:`` or
``sensor:`` plus source and id), so versions of different objects on one tile
never suppress each other, and exactly one tile event per record carries the
record's accounting weight.

No Bytewax here: the step is :func:`operators.steps.enrich`. Stage numbers:
``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import h3
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from tilepipe import metrics
from tilepipe.cover import Cover, cover_range
from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter, FanOutEvent, TileEvent
from tilepipe.repair import RepairOverBudget, symmetric_difference_within
from tilepipe.tiles import MAX_LATITUDE, ZXY, tile_key
from tilepipe.wire import FeatureEventIn, TelemetryEventIn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrichConfig:
    feature_minzoom: int = 0
    feature_maxzoom: int = 14
    max_tiles_per_event: int = 10_000
    # ~280 MiB at the measured ~5.5 KiB a tile event through the flow (200,000 was
    # ~1.05 GiB): a 2 GiB pod keeps its headroom. Five records at the per-event budget.
    max_tiles_per_batch: int = 50_000
    cover_deadline_s: float = 0.25
    diff_expire: bool = True
    h3_resolution: int = 9
    telemetry_zooms: tuple[int, ...] = (10, 12, 14)


# Up to this many vertices (old and new together) diff expiry runs in-process
# (70 vertices: 1.4 ms); above it in the budgeted worker, because two valid shapes
# can be an overlay bomb (two interleaved combs of 200 teeth, 1,600 vertices:
# 2.9 s; of 800 teeth: 71 s). The worker costs ~2 ms more on a 10,000-vertex lake.
_DIFF_IN_PROCESS_VERTICES = 64


def dirty_geometry(
    model: FeatureEventIn, diff_expire: bool, budget_s: float = 0.25
) -> BaseGeometry:
    """The part of the map a feature mutation changes.

    Diff expiry gets ``budget_s``; over it both old and new are dirty (a superset)."""
    new, old = model.geometry, model.previous_geometry
    if old is None or model.op == "delete":
        return new
    if diff_expire:
        try:
            if shapely.get_num_coordinates(new) + shapely.get_num_coordinates(old) <= (
                _DIFF_IN_PROCESS_VERTICES
            ):
                changed = shapely.symmetric_difference(new, old)
            else:
                changed = symmetric_difference_within(new, old, budget_s)
        except (shapely.errors.GEOSException, RepairOverBudget) as e:
            log.warning(
                "diff expiry failed for feature %s (%s); covering old and new", model.feature_id, e
            )
        else:
            # The same shape again: only attributes can have changed, so all of it is dirty.
            return new if changed.is_empty else changed
    return shapely.GeometryCollection([new, old])


def _events(
    fan: FanOutEvent, tiles: Iterable[ZXY], object_id: str, coverage: str,
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


# What a record still gets once its batch has spent its budget: a few coarse
# tiles (standing for their subtrees) rather than nothing; a batch of n records
# thus stays under max_tiles_per_batch + n * MIN_TILES_PER_EVENT.
MIN_TILES_PER_EVENT = 64


def _record_cover(cover: Cover, what: str, m: FeatureEventIn | TelemetryEventIn) -> None:
    metrics.FANOUT_TILES.observe(len(cover.tiles))
    metrics.COVERS.labels(cover.method).inc()
    if cover.method != "exact":
        log.info(
            "%s covered by %s down to z%d (asked z%d)",
            what, cover.method, cover.zoom, cover.requested_maxzoom,
            extra={"event_id": m.event_id},
        )  # fmt: skip


def expand_feature(
    fan: FanOutEvent, cfg: EnrichConfig, max_tiles: int | None = None
) -> list[TileEvent]:
    m: FeatureEventIn = fan.model
    minzoom = cfg.feature_minzoom if m.minzoom is None else m.minzoom
    maxzoom = cfg.feature_maxzoom if m.maxzoom is None else m.maxzoom
    minzoom = min(minzoom, maxzoom)
    cover: Cover = cover_range(
        dirty_geometry(m, cfg.diff_expire, cfg.cover_deadline_s),
        minzoom,
        maxzoom,
        m.buffer,
        cfg.max_tiles_per_event if max_tiles is None else max_tiles,
        cfg.cover_deadline_s,
    )
    _record_cover(cover, f"feature {m.feature_id}", m)
    return _events(fan, cover.tiles, f"feature:{m.source}:{m.feature_id}", cover.method)


def expand_telemetry(
    fan: FanOutEvent, cfg: EnrichConfig, max_tiles: int | None = None
) -> list[TileEvent]:
    m: TelemetryEventIn = fan.model
    cell = h3.latlng_to_cell(m.lat, m.lon, cfg.h3_resolution)
    # The message keeps the reading's own cell; its tiles are those of the cell
    # at the edge of the square world when the reading is beyond it.
    lat = min(max(m.lat, -MAX_LATITUDE), MAX_LATITUDE)
    on_map = cell if lat == m.lat else h3.latlng_to_cell(lat, m.lon, cfg.h3_resolution)
    hexagon = Polygon([(lng, lt) for lt, lng in h3.cell_to_boundary(on_map)])
    zooms = sorted(cfg.telemetry_zooms)
    cover = cover_range(
        hexagon,
        zooms[0],
        zooms[-1],
        0.0,
        cfg.max_tiles_per_event if max_tiles is None else max_tiles,
        cfg.cover_deadline_s,
    )
    _record_cover(cover, f"sensor {m.sensor_id}", m)
    # Covered over the whole range (one descent, parents derived), listed at the
    # configured zooms; a fallback's deepest zoom is kept whatever it is.
    keep = {*zooms, cover.zoom}
    tiles = [t for t in cover.tiles if t[0] in keep]
    coverage = "h3" if cover.method == "exact" else cover.method
    return _events(fan, tiles, f"sensor:{m.source}:{m.sensor_id}", coverage, cell)


def expand(
    event: TileEvent | FanOutEvent, cfg: EnrichConfig, max_tiles: int | None = None
) -> list[TileEvent] | DeadLetter:
    """The tile events an event stands for, or a dead letter if it cannot be expanded.

    ``max_tiles`` (default ``cfg.max_tiles_per_event``) is this record's budget."""
    if isinstance(event, TileEvent):
        return [event]
    try:
        if isinstance(event.model, FeatureEventIn):
            return expand_feature(event, cfg, max_tiles)
        return expand_telemetry(event, cfg, max_tiles)
    except Exception as e:  # never lose a record to a bug or a GEOS surprise
        log.exception("enrich: could not expand event %s", event.model.event_id)
        rec = event.record
        return DeadLetter(
            Reason.EXPANSION_FAILED,
            f"{type(e).__name__}: {e}",
            rec.value or b"",
            rec.origin,
            rec.received_ms,
        )


def expand_batch(
    batch: list[TileEvent | FanOutEvent], cfg: EnrichConfig
) -> list[TileEvent | DeadLetter]:
    out: list[TileEvent | DeadLetter] = []
    left = cfg.max_tiles_per_batch  # see the module doc: the batch as a whole is bounded
    for event in batch:
        if isinstance(event, TileEvent):  # the common case, kept cheap
            out.append(event)
            left -= 1
            continue
        budget = min(cfg.max_tiles_per_event, max(left, MIN_TILES_PER_EVENT))
        result = expand(event, cfg, budget)
        if isinstance(result, DeadLetter):
            out.append(result)
        else:
            out.extend(result)
            left -= len(result)
    return out
