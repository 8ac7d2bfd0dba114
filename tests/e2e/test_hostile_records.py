"""Hostile records through the whole path, as the job runs them (issue 12).

The poison corpus of tests/unit/test_poison.py (the review's reproductions
among them: a 2^64 version, 240,000 version components, a 1 MB non-numeric
version, a 1 MB ``kind``, deep nesting, NaN, unicode, tombstones) plus records
hypothesis makes up, each run with valid sentinel events on tiles of their
own through the real flow: ``tilepipe run`` file in and file out, the same
flow in this process, and Kafka (Tansu) in and Redis out with a real
subscriber. Every run must:

- exit 0 (or, tailing Kafka, stay up until it has read everything),
- account for every record exactly once (broadcast + duplicate + stale +
  dead-lettered = in, from the summary line or the metrics),
- broadcast every sentinel, one ``tile_updated`` each,
- keep every dead letter under 1 MB (the broker's limit),
- and spend under 2 s on any one record (a generous ceiling on this shared
  2-core machine, not a benchmark: the review's worst records took minutes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.bucket import TileBucket
from operators.enrich import EnrichConfig, expand_batch
from operators.tile_state import OrderConfig
from operators.validate import ValidationConfig, validate_batch
from sinks import guard
from tests.support.hostile import CORPUS, event_like
from tests.support.hostile import NOW as POISON_NOW
from tests.support.job import counts, run_to_end, tilepipe
from tests.support.services import RedisSubscriber
from tilepipe.messages import encode
from tilepipe.records import DeadLetter, RawRecord, TileEvent
from tilepipe.timeutil import now_ms

PER_RECORD_S = 2.0
DLQ_LIMIT = 1_000_000
SENTINEL_Z = 16


def sentinels(n: int, tag: str) -> list[bytes]:
    """Valid tile events, one tile each, that must all be broadcast."""
    now = int(time.time() * 1000)
    return [orjson.dumps({"event_id": f"{tag}-{i}", "kind": "tile", "version": 1,
                          "source": "sentinel", "ts": now, "z": SENTINEL_Z, "x": i, "y": 7})
            for i in range(n)]  # fmt: skip


def current(records: list[bytes | None]) -> list[bytes | None]:
    """The records dated now and with event ids of their own.

    The corpus is dated for a fixed clock (poison.NOW), which a real job sees as
    the future and dead-letters (future_event) before any other stage; and most
    of its tile events share one id, so all but the first would be duplicates
    that never reach the sink (where the 2^64 version used to crash the job).
    """
    stamp = str(int(POISON_NOW)).encode()
    now = str(int(time.time() * 1000) - 1000).encode()
    return [
        r.replace(stamp, now).replace(b'"event_id": "e1"', b'"event_id": "e1-%d"' % i)
        if r is not None
        else None
        for i, r in enumerate(records)
    ]


def as_lines(records: list[bytes | None]) -> list[bytes]:
    """What a JSONL file can carry: one line per record; blank lines are not records."""
    return [r for r in current(records) if r is not None and b"\n" not in r and r.strip()]


def interleave(hostile: list[bytes], tag: str) -> tuple[list[bytes], int]:
    """Each hostile record between two sentinels: they share batches with it."""
    good = sentinels(len(hostile) + 1, tag)
    out = [good[0]]
    for bad, ok in zip(hostile, good[1:], strict=True):
        out += [bad, ok]
    return out, len(good)


def run_file_job(tmp: Path, records: list[bytes]) -> tuple[dict[str, int], list, list, float]:
    src, out, dlq = tmp / "in.jsonl", tmp / "out.jsonl", tmp / "dlq.jsonl"
    src.write_bytes(b"\n".join(records) + b"\n")
    for p in (out, dlq):
        p.unlink(missing_ok=True)
    done = tilepipe("run", "--source", f"file:{src}", "--sink", f"file:{out}",
                    "--dlq", f"file:{dlq}", timeout=60 + PER_RECORD_S * len(records))  # fmt: skip
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr[-3000:]
    run_s = float(stderr.rsplit("; ran ", 1)[1].split(" s", 1)[0])
    updates = [json.loads(line) for line in out.read_bytes().splitlines()]
    letters = dlq.read_bytes().splitlines() if dlq.exists() else []
    return counts(stderr), updates, letters, run_s


def check_run(
    c: dict[str, int], updates: list, letters: list[bytes], n_in: int, n_sentinels: int
) -> None:
    assert c["in"] == n_in
    assert c["broadcast"] + c["duplicate"] + c["stale"] + c["dead_letter"] == n_in, c
    assert len(letters) == c["dead_letter"]
    assert all(len(d) < DLQ_LIMIT for d in letters), max(map(len, letters))
    reasons = {json.loads(d)["reason"] for d in letters}
    assert not reasons & {"internal_error", "expansion_failed", "encode_failed"}, reasons
    got = sorted(u["x"] for u in updates if u["z"] == SENTINEL_Z and u["y"] == 7)
    assert got == list(range(n_sentinels))


def test_the_poison_corpus_through_tilepipe_run_file_to_file(tmp_path: Path) -> None:
    hostile = as_lines(list(CORPUS.values()))
    records, n_good = interleave(hostile, "file")
    c, updates, letters, run_s = run_file_job(tmp_path, records)
    check_run(c, updates, letters, len(records), n_good)
    assert c["dead_letter"] >= len(hostile) - 12  # nearly all of the corpus is invalid
    assert run_s < PER_RECORD_S * len(records)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(event_like(), min_size=5, max_size=25))
def test_made_up_records_through_tilepipe_run(tmp_path_factory, values: list[bytes]) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    records, n_good = interleave(as_lines(values), "fuzz")  # type: ignore[arg-type]
    c, updates, letters, _ = run_file_job(tmp, records)
    check_run(c, updates, letters, len(records), n_good)


def test_every_corpus_record_alone_is_quick_in_process() -> None:
    """The in-process path record by record: validate, expand, order, apply, encode."""
    vcfg, ecfg = ValidationConfig(), EnrichConfig()
    slowest = (0.0, "")
    for name, value in zip(CORPUS, current(list(CORPUS.values())), strict=True):
        started = time.perf_counter()
        now = now_ms()
        rec = RawRecord(value, {"file": "corpus", "line": 1}, now)
        ok = [r for r in validate_batch([rec], vcfg) if not isinstance(r, DeadLetter)]
        tiles = [t for t in expand_batch(ok, ecfg) if isinstance(t, TileEvent)]
        bucket = TileBucket(OrderConfig(), None, now)
        updates = bucket.on_events(tiles, now).updates + bucket.flush(now).updates
        _, failed = guard.each(updates, encode)
        assert failed == [], name
        slowest = max(slowest, (time.perf_counter() - started, name))
    assert slowest[0] < PER_RECORD_S, slowest


def test_the_poison_corpus_through_the_flow_in_process(tmp_path: Path) -> None:
    """``build_flow`` run by Bytewax in this process, counted by the metrics."""
    from bytewax.testing import run_main

    from dataflows.settings import Settings
    from dataflows.tile_updates import build_flow
    from tilepipe.metrics import Accounting

    records, n_good = interleave(as_lines(list(CORPUS.values())), "inproc")
    src, out, dlq = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    src.write_bytes(b"\n".join(records) + b"\n")
    before = Accounting.snapshot()
    run_main(build_flow(Settings(source=f"file:{src}", sink=f"file:{out}", dlq=f"file:{dlq}")))
    after = Accounting.snapshot()
    c = {k: after[k] - before[k] for k in after}
    updates = [json.loads(line) for line in out.read_bytes().splitlines()]
    check_run(c, updates, dlq.read_bytes().splitlines(), len(records), n_good)


@pytest.mark.integration
def test_the_poison_corpus_from_kafka_to_redis(kafka, redis_url, redis_client, channel) -> None:
    """Tansu in, Redis out, a Kafka DLQ; tombstones included (a file cannot carry them)."""
    # Under the broker's message limit; tombstones included.
    hostile = [v for v in current(list(CORPUS.values())) if v is None or len(v) < 900_000]
    good = sentinels(len(hostile) + 1, "kafka")
    records: list[bytes | None] = [good[0]]
    for bad, ok in zip(hostile, good[1:], strict=True):
        records += [bad, ok]
    topic, dlq = kafka.new_topic("hostile"), kafka.new_topic("hostile-dlq")
    kafka.produce(topic, records)  # type: ignore[arg-type]
    with RedisSubscriber(redis_url, channel) as sub:
        sink = f"{redis_url}?channel={channel}"
        done = run_to_end("--source", kafka.url(topic), "--sink", sink, "--dlq", kafka.url(dlq),
                          timeout=60 + PER_RECORD_S * len(records))  # fmt: skip
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == 0, stderr[-3000:]
        c = counts(stderr)
        got = sub.wait_for(len(good))
        sub.settle(quiet=0.3)
    letters = [m.value() for m in kafka.consume_all(dlq, c["dead_letter"])]
    updates = [m for m in sub.messages if m["z"] == SENTINEL_Z]
    check_run(c, updates, letters, len(records), len(good))
    assert len(got) >= len(good)
    run_s = float(stderr.rsplit("; ran ", 1)[1].split(" s", 1)[0])
    assert run_s < PER_RECORD_S * len(records)
