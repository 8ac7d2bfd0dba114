"""Stage 7 logic (``docs/ARCHITECTURE.md``): a tile's applied events, one render trigger.

All events of one tile applied in one release become a single
:class:`~tilepipe.records.TileUpdate` that names the newest version and the
latest applied ``(version, time)`` order of every object involved. Its hash
depends only on those, so a replay that re-applies the same versions yields
the same hash and clients can ignore the repeat. Pure logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tilepipe.records import TileEvent, TileUpdate
from tilepipe.versions import order_key


def update_hash(tms: str, z: int, x: int, y: int, objects: Sequence[tuple[str, str]]) -> str:
    # Length-prefixed ids keep the encoding unambiguous whatever an upstream
    # object id contains (order keys are digits, dots and a space).
    text = f"{tms}/{z}/{x}/{y}|" + "|".join(
        f"{len(obj)}:{obj}={order}" for obj, order in sorted(objects)
    )
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def coalesce(applied: Sequence[TileEvent]) -> TileUpdate:
    """One update for ``applied`` (non-empty, in application order)."""
    if len(applied) == 1:
        return _single(applied[0])
    newest = applied[-1]
    latest: dict[str, str] = {}
    layers: set[str] | None = set()
    cells: set[str] = set()
    oldest_ts = newest.ts_ms
    oldest_rx = newest.received_ms
    for ev in applied:
        latest[ev.object_id] = order_key(ev.vkey, ev.ts_ms)
        if ev.layers is None:
            layers = None  # an event for all layers makes the whole tile dirty
        elif layers is not None:
            layers.update(ev.layers)
        if ev.h3_cell is not None:
            cells.add(ev.h3_cell)
        oldest_ts = min(oldest_ts, ev.ts_ms)
        oldest_rx = min(oldest_rx, ev.received_ms)
    objects = tuple(sorted(latest.items()))
    return TileUpdate(
        key=newest.key,
        tms=newest.tms,
        z=newest.z,
        x=newest.x,
        y=newest.y,
        version=newest.version,
        objects=objects,
        hash=update_hash(newest.tms, newest.z, newest.x, newest.y, objects),
        ts_ms=newest.ts_ms,
        oldest_ts_ms=oldest_ts,
        oldest_received_ms=oldest_rx,
        events=len(applied),
        records=sum(ev.weight for ev in applied),
        layers=tuple(sorted(layers)) if layers is not None else None,
        coverage=newest.coverage,
        h3_cells=tuple(sorted(cells)),
    )


def _single(ev: TileEvent) -> TileUpdate:
    """The common case of one event, without the set bookkeeping."""
    objects = ((ev.object_id, order_key(ev.vkey, ev.ts_ms)),)
    return TileUpdate(
        ev.key, ev.tms, ev.z, ev.x, ev.y, ev.version, objects,
        update_hash(ev.tms, ev.z, ev.x, ev.y, objects), ev.ts_ms, ev.ts_ms, ev.received_ms,
        1, ev.weight, ev.layers, ev.coverage, (ev.h3_cell,) if ev.h3_cell is not None else (),
    )  # fmt: skip
