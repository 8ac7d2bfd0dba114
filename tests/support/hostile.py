"""Hostile input: a corpus of records that broke (or could break) a stage, and a fuzzer.

``CORPUS`` names each record (``None`` is a Kafka tombstone); ``event_like`` is a
hypothesis strategy for mostly plausible events with random fields swapped for
random JSON. tests/unit/test_poison.py drives both through the stages in
process, tests/e2e/test_hostile_records.py through the real job.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.support.events import dumps, feature_event, tile_record

NOW = 1_800_000_000_000.0
"""The wall clock the corpus is read at (epoch ms) and its records' event time."""


def deep(n: int, open_: bytes, close: bytes) -> bytes:
    return open_ * n + b"1" + close * n


def tile(**fields: Any) -> bytes:
    """A valid tile record at z3 (``fields`` override any wire field, ``kind`` too)."""
    return tile_record(**{"source": "s", "ts": int(NOW), "z": 3, "x": 1, "y": 1, **fields})


def feature(geometry: Any) -> bytes:
    return dumps(feature_event(geometry=geometry, source="s", ts=int(NOW)))


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
