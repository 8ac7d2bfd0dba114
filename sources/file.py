"""JSONL input: one record per line, from a file or standard input (``-``).

The read position (byte offset and line number) is the partition's resume
state, so with recovery a restarted job continues where its last snapshot
was. Blank lines are not records. A line longer than the record size limit
is not read into memory whole: its head is kept for the dead letter.
"""

from __future__ import annotations

import sys
from typing import IO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from tilepipe import metrics, shutdown
from tilepipe.records import RawRecord
from tilepipe.timeutil import now_ms

FilePosition = tuple[int, int]  # (byte offset, line number of the next line)


class _FilePartition(StatefulSourcePartition[RawRecord, FilePosition]):
    def __init__(
        self, path: str, resume: FilePosition | None, batch_size: int, max_record_bytes: int
    ) -> None:
        self._path = path
        self._label = "<stdin>" if path == "-" else path
        self._batch_size = batch_size
        self._max = max_record_bytes
        self._f: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        self._offset, self._line = resume or (0, 1)
        if self._offset and path != "-":
            self._f.seek(self._offset)

    def next_batch(self) -> list[RawRecord]:
        if shutdown.requested.is_set():
            raise StopIteration
        batch: list[RawRecord] = []
        received = now_ms()
        while len(batch) < self._batch_size:
            line = self._f.readline(self._max + 1)
            if not line:
                if batch:
                    break
                raise StopIteration
            self._offset += len(line)
            line_no = self._line
            self._line += 1
            size = len(line)
            if len(line) > self._max and not line.endswith(b"\n"):
                size += self._skip_rest_of_line()
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue
            batch.append(
                RawRecord(
                    body,
                    {"file": self._label, "line": line_no},
                    received,
                    truncated_from=size if size > len(line) else 0,
                )
            )
        metrics.EVENTS_IN.inc(len(batch))
        return batch

    def _skip_rest_of_line(self) -> int:
        skipped = 0
        while True:
            chunk = self._f.readline(1 << 20)
            skipped += len(chunk)
            self._offset += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return skipped

    def snapshot(self) -> FilePosition:
        return (self._offset, self._line)

    def close(self) -> None:
        if self._path != "-":
            self._f.close()


class JsonlFileSource(FixedPartitionedSource[RawRecord, FilePosition]):
    def __init__(self, path: str, batch_size: int = 1000, max_record_bytes: int = 1 << 20) -> None:
        self.path = path
        self.batch_size = batch_size
        self.max_record_bytes = max_record_bytes

    def list_parts(self) -> list[str]:
        return ["file"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePosition | None
    ) -> _FilePartition:
        return _FilePartition(self.path, resume_state, self.batch_size, self.max_record_bytes)
