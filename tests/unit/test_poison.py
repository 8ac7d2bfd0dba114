"""Poison input: hostile records through decode, validate, enrich, order and encode.

Whatever arrives, the stages must not raise, every record must end as tile
events or one dead letter with a reason code, no record may reach the
catch-all reasons (``internal_error``, ``expansion_failed``, ``encode_failed``:
those mean a bug of ours), the DLQ record must be valid JSON with a bounded
``error`` and size, and every tile event that comes through must encode as
the sink writes it (the review's C1 passed validation and then crashed the
sink's encoder). tests/e2e/test_hostile_records.py drives the same records
through the real job.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.bucket import TileBucket
from operators.enrich import EnrichConfig, expand_batch
from operators.tile_state import OrderConfig
from operators.validate import _REASONS, ValidationConfig, validate_batch
from sinks import guard
from sinks.messages import encode
from tilepipe.records import MAX_ERROR_CHARS, DeadLetter, FanOutEvent, RawRecord, TileEvent
from tilepipe.wire import OWN_REASONS

NOW = 1_800_000_000_000.0
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


def deep(n: int, open_: bytes, close: bytes) -> bytes:
    return open_ * n + b"1" + close * n


def tile(**kw: Any) -> bytes:
    doc = {"event_id": "e1", "kind": "tile", "version": 1, "source": "s",
           "ts": int(NOW), "z": 3, "x": 1, "y": 1}  # fmt: skip
    doc.update(kw)
    return json.dumps(doc).encode()


def feature(geometry: Any, **kw: Any) -> bytes:
    doc = {"event_id": "f1", "kind": "feature", "version": 1, "source": "s", "ts": int(NOW),
           "op": "upsert", "feature_id": "a", "geometry": geometry}  # fmt: skip
    doc.update(kw)
    return json.dumps(doc).encode()


CORPUS = {
    "deep arrays": deep(200_000, b"[", b"]"),
    "deep objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deep in a valid event": tile(extra=json.loads(deep(500, b"[", b"]"))),
    "huge integer": tile(version=10**400),
    "huge float text": tile(ts="1e400").replace(b'"1e400"', b"1e400"),
    "huge coordinate": feature({"type": "Point", "coordinates": [1e308, 1e308]}),
    "NaN literal": tile().replace(b'"version": 1', b'"version": NaN'),
    "Infinity coordinate": feature({"type": "Point", "coordinates": [0, 0]}).replace(
        b"[0, 0]", b"[Infinity, -Infinity]"
    ),
    "NaN coordinate": feature({"type": "Point", "coordinates": [0, 0]}).replace(
        b"[0, 0]", b"[NaN, 0]"
    ),
    "invalid UTF-8": b'{"event_id": "\xff\xfe", "kind": "tile"}',
    "lone surrogate escape": tile(event_id="x").replace(b'"x"', b'"\\ud800"'),
    "overlong UTF-8": b'{"kind": "\xc0\xaf"}',
    "10 MB string": tile(event_id="x" * 10_000_000),
    "just under the limit": tile(source="y" * ((1 << 20) - 200)),
    "duplicate keys": b'{"kind": "tile", "kind": "feature", "event_id": "d", "version": 1,'
    b' "source": "s", "ts": 1800000000000, "z": 1, "x": 0, "y": 0}',
    "control characters": tile(event_id="a\x00b\x1b[31m\u2028\r\n"),
    "raw control bytes": b'{"event_id": "a\x00\x01b", "kind": "tile"}',
    "BOM": b"\xef\xbb\xbf" + tile(),
    "empty": b"",
    "whitespace": b" \n\t ",
    "tombstone": None,
    "null": b"null",
    "number": b"1e999",
    "string": b'"tile"',
    "array of events": b"[" + tile() + b"]",
    "two documents": tile() + tile(),
    "trailing garbage": tile() + b"}}}",
    "bool as version": tile(version=True),
    "bool as zoom": tile(z=True),
    "float zoom": tile(z=3.0),
    "negative tile": tile(x=-1),
    "zoom 99": tile(z=99, x=0, y=0),
    "zoom 2**63": tile(z=2**63),
    "ts as object": tile(ts={"$date": 1}),
    "ts far future": tile(ts=253402300799999),
    "ts year 10000": tile(ts="10000-01-01T00:00:00Z"),
    "version empty string": tile(version=""),
    "version 2**64": tile(version=2**64),  # review C1
    "version 2**63": tile(version=2**63),
    "version 240k components": tile(version="1." * 240_000 + "1"),  # review H1
    "version 1 MB non-numeric": tile(version="v" * ((1 << 20) - 200)),  # review H4
    "huge kind value": tile(kind="k" * ((1 << 20) - 200)),
    "huge tms value": tile(tms="t" * ((1 << 20) - 200)),
    "many reading fields": b'{"event_id": "t", "kind": "telemetry", "version": 1,'
    b' "source": "s", "ts": 1800000000000, "lon": 1, "lat": 1, "sensor_id": "a", '
    + b", ".join(b'"f%d": %d' % (i, i) for i in range(5_000))
    + b"}",
    "reading beyond 64 bits": b'{"event_id": "t", "kind": "telemetry", "version": 1,'
    b' "source": "s", "ts": 1800000000000, "lon": 1, "lat": 1, "sensor_id": "a",'
    b' "value": 18446744073709551616}',
    "unicode everywhere": tile(event_id="\u00e9\U0001f5fa", source="\u2603", layers=["\u0416"]),
    "version huge string": tile(version="9" * 100_000),
    "unclosed ring": feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}),
    "bow tie": feature(
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    ),
    "latitude 100": feature({"type": "Point", "coordinates": [0, 100]}),
    "polygon as point": feature({"type": "Point", "coordinates": [[0, 0], [1, 1]]}),
    "geometry collection": feature({"type": "GeometryCollection", "geometries": []}),
    "geometry string": feature("POINT (0 0)"),
    "geometry nested wrong": feature({"type": "Polygon", "coordinates": [[[[[0]]]]]}),
    "a million vertices": feature(
        {"type": "LineString", "coordinates": [[i * 1e-6, 0] for i in range(1_000_000)]}
    ),
    "world polygon at z12": feature(
        {"type": "Polygon", "coordinates": [[[-180, -85], [180, -85], [180, 85], [-180, 85]]]}
    ),
    "telemetry off the map": b'{"event_id": "t", "kind": "telemetry", "version": 1,'
    b' "source": "s", "ts": 1800000000000, "lon": 500, "lat": -91}',
}


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


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = ["event_id", "kind", "version", "source", "ts", "z", "x", "y", "tms", "bbox", "layers",
          "op", "feature_id", "geometry", "previous_geometry", "lon", "lat", "value"]  # fmt: skip


@st.composite
def event_like(draw: st.DrawFn) -> bytes:
    """Mostly-plausible events with random fields swapped for random JSON values."""
    base: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=10)),
        "kind": draw(st.sampled_from(["tile", "feature", "telemetry", "Tile", ""])),
        "version": draw(st.one_of(st.integers(0, 2**64), st.text(max_size=12))),
        "source": "fuzz",
        "ts": draw(st.one_of(st.integers(0, 2**50), st.just(int(NOW)), st.text(max_size=25))),
        "z": draw(st.integers(-2, 30)),
        "x": draw(st.integers(-2, 2**20)),
        "y": draw(st.integers(-2, 2**20)),
        "lon": draw(st.floats(-200, 200)),
        "lat": draw(st.floats(-100, 100)),
        "feature_id": "f",
        "op": draw(st.sampled_from(["upsert", "delete", "boom"])),
        "geometry": {
            "type": draw(st.sampled_from(["Point", "LineString", "Polygon", "MultiPolygon"])),
            "coordinates": draw(json_values),
        },
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        base[name] = draw(json_values)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        base.pop(name, None)
    text = json.dumps(base)
    if draw(st.booleans()):  # NaN and Infinity as Python's json writes them
        text = text.replace("0.5", "NaN", 1).replace("1.5", "Infinity", 1)
    return text.encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_like(), min_size=1, max_size=8))
def test_fuzzed_events_never_escape_the_stages(values: list[bytes]) -> None:
    process(values)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_fuzzed_bytes_never_escape_the_stages(values: list[bytes]) -> None:
    tiles, _ = process(values)  # type: ignore[arg-type]
    assert not tiles or all(math.isfinite(t.ts_ms) for t in tiles)
