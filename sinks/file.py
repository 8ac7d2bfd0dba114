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

from sinks import accounting, guard
from tilepipe import metrics
from tilepipe.messages import encode
from tilepipe.records import DeadLetter, TileUpdate, clip

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
    def __init__(self, path: str, dead_letters: guard.DeadLetters) -> None:
        super().__init__(path)
        self._dead = dead_letters

    def write_batch(self, items: list[TileUpdate]) -> None:
        lines, dead = guard.each(items, encode)
        self._write_lines([line for _, line in lines])
        if dead:
            self._dead.write_batch(dead)
        results = [accounting.DEAD_LETTERED] * len(items)
        for i, _ in lines:
            results[i] = accounting.PUBLISHED
        accounting.record_results(items, results)


class _DeadLetterPartition(_JsonlPartition):
    def __init__(self, path: str, raw_limit: int) -> None:
        super().__init__(path)
        self._raw_limit = raw_limit

    def write_batch(self, items: list[DeadLetter]) -> None:
        self._write_lines([encode_dead_letter(d, self._raw_limit) for d in items])
        record_dead_letters(items)


def encode_dead_letter(d: DeadLetter, raw_limit: int) -> bytes:
    """A dead letter's JSON line; never raises, whatever the letter holds.

    ``to_json_dict`` bounds ``error`` and ``raw``; if a letter still cannot be
    encoded (an origin a source filled with something odd), a minimal letter
    with the reason and the error's type is written instead of losing it.
    """
    try:
        return json.dumps(d.to_json_dict(raw_limit), separators=(",", ":")).encode()
    except Exception as e:  # never lose the letter, never stop the DLQ
        return minimal_letter(d, f"dead letter not encodable ({type(e).__name__})")


def minimal_letter(d: DeadLetter, note: str) -> bytes:
    """The smallest faithful letter: reason, error, origin, size; no ``raw``.

    Under 1,000 bytes (librdkafka's smallest ``message.max.bytes``) unless the
    origin itself is larger: the error is cut to 200 characters, the field to 64.
    """
    short = d._replace(raw=b"", origin={}, error=clip(d.error, 200))
    doc = short._replace(field=clip(d.field, 64) if d.field else d.field).to_json_dict(0)
    doc.update(raw_omitted=note, raw_bytes=len(d.raw))
    try:
        doc["origin"] = json.loads(json.dumps(d.origin, default=str))
    except Exception:
        doc["origin"] = {"unencodable": True}
    return json.dumps(doc, separators=(",", ":")).encode()


def record_dead_letters(items: list[DeadLetter]) -> None:
    for d in items:
        metrics.DEAD_LETTERS.labels(d.reason).inc()
    metrics.EVENTS.labels("dead_letter").inc(sum(d.records for d in items))
    if log.isEnabledFor(logging.DEBUG):  # TILEPIPE_LOG_LEVEL=DEBUG: one JSON line per record
        for d in items:
            log.debug("dead letter: %s", d.error,
                      extra={"reason": d.reason, "field": d.field, "origin": d.origin})  # fmt: skip


class FileUpdatesSink(DynamicSink[TileUpdate]):
    """Updates to ``path``; an update that cannot be encoded goes to ``dead_letters``."""

    def __init__(self, path: str, dead_letters: DynamicSink[DeadLetter] | None = None) -> None:
        self.path = path
        self.dead_letters = dead_letters

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UpdatesPartition:
        dlq = build_dead_letters(self.dead_letters, step_id, worker_index, worker_count)
        return _UpdatesPartition(self.path, dlq)


def build_dead_letters(
    sink: DynamicSink[DeadLetter] | None, step_id: str, worker_index: int, worker_count: int
) -> guard.DeadLetters:
    """The DLQ partition an update sink writes its dead letters to.

    The job's own DLQ (``--dlq``), built a second time for this worker; without
    one, the default DLQ, standard error, as ``tilepipe run`` has it.
    """
    sink = sink or FileDeadLetterSink("/dev/stderr", 64 * 1024)
    return sink.build(f"{step_id}_dead_letters", worker_index, worker_count)  # type: ignore[return-value]


class FileDeadLetterSink(DynamicSink[DeadLetter]):
    def __init__(self, path: str, raw_limit: int) -> None:
        self.path = path
        self.raw_limit = raw_limit

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.path, self.raw_limit)
