"""JSONL file sinks for ``tile_updated`` messages and dead letters.

``-`` means standard output. Every worker appends whole lines with one
write per batch, so workers of a cluster can share a file. A file sink has no
version store: forward-only per tile holds while the tile's state is held (and across restarts with
recovery), but after a tile's state was evicted (``state_ttl``) only the
Redis sink's stored versions can refuse a replayed older version.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from sinks import accounting
from sinks.messages import encode
from tilepipe import metrics
from tilepipe.records import DeadLetter, TileUpdate

log = logging.getLogger(__name__)


def open_output(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    return open(path, "ab")


class _JsonlPartition(StatelessSinkPartition[Any]):
    def __init__(self, path: str) -> None:
        self._out = open_output(path)
        self._close = path != "-"

    def _write_lines(self, lines: list[bytes]) -> None:
        if lines:
            self._out.write(b"\n".join(lines) + b"\n")
            self._out.flush()

    def close(self) -> None:
        if self._close:
            self._out.close()


class _UpdatesPartition(_JsonlPartition):
    def write_batch(self, items: list[TileUpdate]) -> None:
        self._write_lines([encode(u) for u in items])
        accounting.record_results(items, [accounting.PUBLISHED] * len(items))


class _DeadLetterPartition(_JsonlPartition):
    def __init__(self, path: str, raw_limit: int) -> None:
        super().__init__(path)
        self._raw_limit = raw_limit

    def write_batch(self, items: list[DeadLetter]) -> None:
        self._write_lines(
            [json.dumps(d.to_json_dict(self._raw_limit), separators=(",", ":")).encode()
             for d in items]
        )  # fmt: skip
        record_dead_letters(items)


def record_dead_letters(items: list[DeadLetter]) -> None:
    for d in items:
        metrics.DEAD_LETTERS.labels(d.reason).inc()
    metrics.EVENTS.labels("dead_letter").inc(len(items))
    if log.isEnabledFor(logging.DEBUG):  # TILEPIPE_LOG_LEVEL=DEBUG: one JSON line per record
        for d in items:
            log.debug("dead letter: %s", d.error,
                      extra={"reason": d.reason, "field": d.field, "origin": d.origin})  # fmt: skip


class FileUpdatesSink(DynamicSink[TileUpdate]):
    def __init__(self, path: str) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UpdatesPartition:
        return _UpdatesPartition(self.path)


class FileDeadLetterSink(DynamicSink[DeadLetter]):
    def __init__(self, path: str, raw_limit: int) -> None:
        self.path = path
        self.raw_limit = raw_limit

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.path, self.raw_limit)
