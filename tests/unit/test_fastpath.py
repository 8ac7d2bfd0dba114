"""The msgspec fast path never disagrees with pydantic, the schema of record."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from operators.fastpath import fast_tile_event
from operators.validate import to_tile_event
from tilepipe.wire import EVENT_ADAPTER, TileEventIn

NOW = 1_800_000_000_000.0

# Values near every boundary the checks draw, plus wrong types.
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=False),
    st.text(max_size=5), st.lists(st.integers(0, 3), max_size=5),
)  # fmt: skip
fields = {
    "kind": st.one_of(st.just("tile"), st.sampled_from(["feature", "Tile", ""]), anything),
    "event_id": st.one_of(st.text(min_size=0, max_size=3), st.just("x" * 257), anything),
    "version": st.one_of(
        st.integers(-2, 10**6),
        st.sampled_from(["1.2", "1.10.0", "01", "1..2", "v1", " 1", "\u0661"]),
        anything,
    ),
    "source": st.one_of(st.just("s"), st.just(""), anything),
    "ts": st.one_of(
        st.integers(1_600_000_000_000, 1_900_000_000_000),
        st.sampled_from(
            [
                "2026-11-23T07:00:00Z",
                "2026-11-23T07:00:00",
                "2026-11-23 07:00:00+01:00",
                "yesterday",
                1.7e12,
                1_700_000_000,
            ]
        ),
        anything,
    ),
    "z": st.one_of(st.integers(-1, 31), anything),
    "x": st.one_of(st.integers(-1, 1 << 12), anything),
    "y": st.one_of(st.integers(-1, 1 << 12), anything),
    "tms": st.one_of(st.just("WebMercatorQuad"), st.just("WorldCRS84Quad"), anything),
    "layers": st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=3), anything),
    "bbox": st.one_of(st.none(), st.lists(st.floats(-180, 180), min_size=3, max_size=5), anything),
}
records = st.fixed_dictionaries(
    {k: fields[k] for k in ("kind", "event_id", "version", "source", "ts", "z", "x", "y")},
    optional={k: fields[k] for k in ("tms", "layers", "bbox")},
)


def pydantic_event(body: bytes):
    try:
        model = EVENT_ADAPTER.validate_json(body)
    except ValidationError:
        return None
    return to_tile_event(model, NOW) if isinstance(model, TileEventIn) else None


@settings(max_examples=1500, deadline=None)
@given(records)
def test_fast_path_accepts_only_what_pydantic_accepts_with_the_same_result(doc):
    body = json.dumps(doc).encode()
    fast = fast_tile_event(body, NOW)
    if fast is not None:
        assert fast == pydantic_event(body)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 20).flatmap(
        lambda z: st.tuples(st.just(z), st.integers(0, (1 << z) - 1), st.integers(0, (1 << z) - 1))
    ),
    st.one_of(st.integers(0, 10**9), st.sampled_from(["1.2.3", "4.0"])),
)
def test_valid_tile_events_take_the_fast_path(zxy, version):
    z, x, y = zxy
    doc = {"kind": "tile", "event_id": "e", "version": version, "source": "s",
           "ts": "2026-11-23T07:00:00.123Z", "z": z, "x": x, "y": y, "extra": {"a": 1}}  # fmt: skip
    body = json.dumps(doc).encode()
    fast = fast_tile_event(body, NOW)
    assert fast is not None and fast == pydantic_event(body)


def test_anything_unusual_is_left_to_pydantic():
    assert fast_tile_event(b'{"kind": "tile", "z": "3"}', NOW) is None
    assert fast_tile_event(b"[1]", NOW) is None
    assert fast_tile_event(b"{", NOW) is None
    assert fast_tile_event(b"[" * 100_000, NOW) is None
