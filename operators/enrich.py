"""Stage 3: enrich and expand events into per-tile events.

A ``tile`` event already names its tile: validation computed its key,
quadkey-based partition and parsed event time, and the broadcast adds the
bounds. Kinds that do not know tiles (features, telemetry) expand here into
one :class:`~tilepipe.records.TileEvent` per tile they touch.
"""

from __future__ import annotations

from collections.abc import Iterable

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from tilepipe.records import TileEvent


def expand(event: TileEvent) -> Iterable[TileEvent]:
    """The tile events an event stands for."""
    return (event,)


@operator
def enrich(step_id: str, up: Stream[TileEvent]) -> Stream[TileEvent]:
    """Expand every event into the tile events it stands for.

    ```python
    tiles = enrich("enrich", validated.oks)
    ```
    """
    return op.flat_map_batch("expand", up, lambda batch: [t for ev in batch for t in expand(ev)])
