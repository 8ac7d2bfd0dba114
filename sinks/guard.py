"""What a record contains can never raise out of a sink: the per-update guard.

Every sink that writes tile updates (file, Redis, render queue) turns each
update into what it writes through :func:`each`, which runs the conversion
per update and makes an update it raises on into one
:class:`~tilepipe.records.DeadLetter` (reason ``encode_failed``, or the
caller's), instead of an exception that would abort the whole batch: before
this, a ``2**64`` version made orjson raise, Bytewax stopped with "error
writing output batch", the other updates of the batch were lost, and the
restart replayed the record and died again (review C1). The sink hands those
letters to its :class:`DeadLetters` writer, the job's own DLQ, which counts
the update's input records as ``dead_letter``: ``broadcast + duplicate + stale
+ dead_letter = in`` holds whatever a sink refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import orjson

from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter, TileUpdate, clip

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeadLetters(Protocol):
    """Where a sink sends what it cannot write: a DLQ sink's partition."""

    def write_batch(self, items: list[DeadLetter]) -> None: ...


def update_letter(update: TileUpdate, reason: Reason, error: BaseException | str) -> DeadLetter:
    """The dead letter for a whole update: its tile, version and objects as ``raw``.

    The update no longer knows its input records, so ``origin`` names the tile
    and ``raw`` describes the update, both bounded (the version is at most 64
    characters once validated; anything else is cut here).
    """
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    version = update.version if isinstance(update.version, str) else str(update.version)
    doc = {
        "tms": clip(str(update.tms), 64),
        "z": update.z,
        "x": update.x,
        "y": update.y,
        "version": clip(version, 128),
        "hash": clip(str(update.hash), 64),
        "objects": [[clip(str(o), 256), clip(str(k), 128)] for o, k in update.objects[:16]],
        "object_count": len(update.objects),
        "events": update.events,
    }
    tile = f"{doc['tms']}/{update.z}/{update.x}/{update.y}"
    return DeadLetter(
        reason,
        clip(f"tile update for {tile} could not be written: {message}"),
        orjson.dumps(doc),
        {"tile": tile, "stage": "sink"},
        update.oldest_received_ms,
        None,
        update.records,
    )


def each(
    updates: Iterable[TileUpdate],
    convert: Callable[[TileUpdate], T],
    reason: Reason = Reason.ENCODE_FAILED,
) -> tuple[list[tuple[int, T]], list[DeadLetter]]:
    """``convert`` every update; ``(index, value)`` for those it worked on, letters for the rest."""
    done: list[tuple[int, T]] = []
    dead: list[DeadLetter] = []
    for i, update in enumerate(updates):
        try:
            done.append((i, convert(update)))
        except Exception as e:  # whatever the update holds, the batch goes on
            log.warning("sink: dead-lettering an update of %s/%d/%d/%d (%s)",
                        update.tms, update.z, update.x, update.y, type(e).__name__)  # fmt: skip
            dead.append(update_letter(update, reason, e))
    return done, dead
