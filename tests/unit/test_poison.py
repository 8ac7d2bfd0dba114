"""Poison input: hostile records through decode, validate, enrich, order and encode.

Whatever arrives, the stages must not raise, every record must end as tile
events or one dead letter with a reason code, no record may reach the
catch-all reasons (``internal_error``, ``expansion_failed``, ``encode_failed``:
those mean a bug of ours), the DLQ record must be valid JSON with a bounded
``error`` and size, and every tile event that comes through must encode as
the sink writes it (the review's C1 passed validation and then crashed the
sink's encoder). The records (``CORPUS``, ``event_like``) are in
tests/support/hostile.py; tests/e2e/test_hostile_records.py drives the same
records through the real job.
"""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.bucket import TileBucket
from operators.enrich import EnrichConfig, expand_batch
from operators.tile_state import OrderConfig
from operators.validate import _REASONS, ValidationConfig, validate_batch
from sinks import guard
from tests.support.hostile import CORPUS, NOW, event_like
from tilepipe.messages import encode
from tilepipe.records import MAX_ERROR_CHARS, DeadLetter, FanOutEvent, RawRecord, TileEvent
from tilepipe.wire import OWN_REASONS

ORIGIN = {"topic": "raw", "partition": 0, "offset": 7}
VCFG = ValidationConfig(max_record_bytes=1 << 20)
ECFG = EnrichConfig(feature_maxzoom=12, max_tiles_per_event=2_000, cover_deadline_s=0.5)
REASONS = (
    set(_REASONS.values())
    | OWN_REASONS
    | {"empty_record", "too_large", "bad_signature", "invalid_encoding", "future_event",
       "invalid_type", "invalid_value", "too_many_tiles"}
)  # fmt: skip


def process(values: list[bytes | None]) -> tuple[list[TileEvent], list[DeadLetter]]:
    """The first three stages as the dataflow runs them, and the accounting check."""
    records = [RawRecord(v, ORIGIN, NOW) for v in values]
    validated = validate_batch(records, VCFG)
    assert len(validated) == len(records)
    dead = [v for v in validated if isinstance(v, DeadLetter)]
    ok = [v for v in validated if not isinstance(v, DeadLetter)]
    assert all(isinstance(v, TileEvent | FanOutEvent) for v in ok)
    expanded = expand_batch(ok, ECFG)
    tiles = [e for e in expanded if isinstance(e, TileEvent)]
    dead += [e for e in expanded if isinstance(e, DeadLetter)]
    for d in dead:
        assert d.reason in REASONS, (d.reason, d.error)
        assert d.error and isinstance(d.error, str)
        assert d.origin == ORIGIN
        assert len(d.error) <= MAX_ERROR_CHARS, (d.reason, len(d.error))
        doc = d.to_json_dict(raw_limit=4096)
        # Strict JSON: no NaN, valid UTF-8 all the way through.
        text = json.dumps(doc, allow_nan=False, ensure_ascii=False)
        assert json.loads(text)["reason"] == d.reason
        assert len(orjson.dumps(doc)) < 4096 * 2 + 2048  # raw (base64 at worst) plus a bounded rest
    # Order, apply and encode as the sink does: whatever validated must be writable.
    bucket = TileBucket(OrderConfig(), None, NOW)
    updates = bucket.on_events(tiles, NOW).updates + bucket.flush(NOW).updates
    encoded, failed = guard.each(updates, encode)
    assert failed == [] and len(encoded) == len(updates)
    return tiles, dead


@pytest.mark.parametrize("value", list(CORPUS.values()), ids=list(CORPUS))
def test_hostile_record_ends_valid_or_dead_lettered_with_a_reason(value: bytes | None) -> None:
    tiles, dead = process([value])
    assert tiles or len(dead) == 1


def test_the_whole_corpus_in_one_batch_is_accounted_for() -> None:
    values = list(CORPUS.values())
    tiles, dead = process(values)
    # A batch gives what its records give one by one: nothing lost, nothing doubled.
    alone = [process([v]) for v in values]
    assert len(dead) == sum(len(d) for _, d in alone)
    assert len(tiles) == sum(len(t) for t, _ in alone)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_like(), min_size=1, max_size=8))
def test_fuzzed_events_never_escape_the_stages(values: list[bytes]) -> None:
    process(values)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_fuzzed_bytes_never_escape_the_stages(values: list[bytes]) -> None:
    tiles, _ = process(values)  # type: ignore[arg-type]
    assert not tiles or all(math.isfinite(t.ts_ms) for t in tiles)
