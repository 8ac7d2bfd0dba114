"""The per-update guard: nothing an update holds can raise out of a sink.

An update that cannot be encoded becomes one dead letter (``encode_failed``)
on the job's DLQ, the rest of its batch is written, and the accounting counts
its records as dead-lettered. Before, orjson's "Integer exceeds 64-bit range"
aborted the batch (review C1); versions are bounded at validation now, so the
updates here are built directly, as any other unencodable content would be.
"""

from __future__ import annotations

import json
from pathlib import Path

from operators.coalesce import coalesce
from sinks.file import FileDeadLetterSink, FileUpdatesSink
from tilepipe.metrics import Accounting
from tilepipe.records import TileEvent, TileUpdate
from tilepipe.tiles import tile_key

T0 = 1_800_000_000_000


def update(x: int, version: int | str, weight: int = 1) -> TileUpdate:
    ev = TileEvent(tile_key(10, x, 7), "WebMercatorQuad", 10, x, 7, version, (1,), T0,
                   f"e{x}", "test", None, float(T0), weight=weight)  # fmt: skip
    return coalesce([ev])


def test_an_unencodable_update_is_one_dead_letter_and_the_batch_goes_on(tmp_path: Path) -> None:
    out, dlq = tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    sink = FileUpdatesSink(str(out), FileDeadLetterSink(str(dlq), 64 * 1024))
    part = sink.build("broadcast", 0, 1)
    before = Accounting.snapshot()
    part.write_batch([update(1, 1), update(2, 2**64), update(3, 3), update(4, 2**70, 0)])
    part.close()
    after = Accounting.snapshot()
    assert [json.loads(line)["x"] for line in out.read_text().splitlines()] == [1, 3]
    letters = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [d["reason"] for d in letters] == ["encode_failed", "encode_failed"]
    assert letters[0]["origin"] == {"tile": "WebMercatorQuad/10/2/7", "stage": "sink"}
    assert "64-bit" in letters[0]["error"]
    assert json.loads(letters[0]["raw"])["version"] == str(2**64)
    # Records, not letters: the weight-0 update accounts for no record.
    assert after["broadcast"] - before["broadcast"] == 2
    assert after["dead_letter"] - before["dead_letter"] == 1
