"""Stages 1-2: decode, verify and validate raw records into TileEvents or DeadLetters."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import operators.validate as validate_mod
from operators.validate import ValidationConfig, validate_batch, validate_record
from tilepipe.records import DeadLetter, RawRecord, TileEvent
from tilepipe.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signature_valid
from tilepipe.tiles import MAX_ZOOM, tile_bounds_lonlat, tile_key

NOW = 1_800_000_000_000.0  # receive time, 2027-01-15T08:00:00Z
TS = 1_799_999_990_000  # event time: ten seconds before it was received
ORIGIN = {"topic": "tiles.raw", "partition": 3, "offset": 12345}
CFG = ValidationConfig()
DROP = object()  # marks a field to leave out

BASE: dict[str, Any] = {
    "event_id": "evt-0001",
    "kind": "tile",
    "version": 3,
    "source": "editor-7",
    "ts": TS,
    "z": 14,
    "x": 8802,
    "y": 5373,
}


def doc(**changes: Any) -> dict[str, Any]:
    d = dict(BASE)
    for k, v in changes.items():
        if v is DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def body(**changes: Any) -> bytes:
    return json.dumps(doc(**changes)).encode()


def rec(
    value: bytes | None,
    *,
    headers: tuple[tuple[str, bytes], ...] = (),
    truncated_from: int = 0,
    received_ms: float = NOW,
) -> RawRecord:
    return RawRecord(
        value,  # type: ignore[arg-type]
        dict(ORIGIN),
        headers=headers,
        received_ms=received_ms,
        truncated_from=truncated_from,
    )


def check(value: bytes | None, config: ValidationConfig = CFG, **kw: Any) -> TileEvent | DeadLetter:
    return validate_record(rec(value, **kw), config)


def dead(value: bytes | None, config: ValidationConfig = CFG, **kw: Any) -> DeadLetter:
    out = check(value, config, **kw)
    assert isinstance(out, DeadLetter), out
    # Every dead letter keeps the record exactly and says where it came from.
    assert out.raw == (value if value is not None else b"")
    assert out.origin == ORIGIN
    assert out.received_ms == kw.get("received_ms", NOW)
    assert isinstance(out.error, str)
    assert out.error
    return out


def ok(value: bytes, config: ValidationConfig = CFG, **kw: Any) -> TileEvent:
    out = check(value, config, **kw)
    assert isinstance(out, TileEvent), out
    return out


# -- valid events ---------------------------------------------------------------------


def test_valid_tile_event() -> None:
    ev = ok(body())
    assert ev == TileEvent(
        key="14:12021023322212",
        tms="WebMercatorQuad",
        z=14,
        x=8802,
        y=5373,
        version=3,
        vkey=(3,),
        ts_ms=TS,
        event_id="evt-0001",
        source="editor-7",
        layers=None,
        received_ms=NOW,
        object_id="",
        coverage="tile",
        h3_cell=None,
    )
    assert ev.key == f"{ev.z}:12021023322212" == tile_key(14, 8802, 5373)


def test_valid_with_dotted_version_rfc3339_ts_layers_and_extras() -> None:
    ev = ok(
        body(
            version="4.10.0",
            ts="2027-01-15T08:59:50.250+01:00",
            layers=["roads", "water"],
            tms="WebMercatorQuad",
            extra={"anything": [1, 2]},
        )
    )
    assert ev.version == "4.10.0"  # echoed as received
    assert ev.vkey == (4, 10)
    assert ev.ts_ms == 1_799_999_990_250
    assert ev.layers == ("roads", "water")
    assert ev.tms == "WebMercatorQuad"


def test_valid_z0_and_max_zoom() -> None:
    assert ok(body(z=0, x=0, y=0)).key == "0:"
    n = 1 << MAX_ZOOM
    ev = ok(body(z=MAX_ZOOM, x=n - 1, y=n - 1))
    assert ev.key == f"{MAX_ZOOM}:" + "3" * MAX_ZOOM


def test_valid_bbox_matching_the_tile() -> None:
    bbox = list(tile_bounds_lonlat(14, 8802, 5373))
    assert bbox[0] == 13.4033203125
    assert isinstance(ok(body(bbox=bbox)), TileEvent)
    # Rounded to 7 decimals by the producer: still the same tile.
    assert isinstance(ok(body(bbox=[round(v, 7) for v in bbox])), TileEvent)


# -- dead letters: reason codes and fields --------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        pytest.param(b"{nope", "invalid_json", None, id="not-json"),
        pytest.param(b"", "invalid_json", None, id="empty-bytes"),
        pytest.param(b'{"event_id": "a"', "invalid_json", None, id="truncated-json"),
        pytest.param(b"[1, 2, 3]", "not_an_object", None, id="array"),
        pytest.param(b'"tile"', "not_an_object", None, id="string"),
        pytest.param(b"null", "not_an_object", None, id="null"),
        pytest.param(b"42", "not_an_object", None, id="number"),
        pytest.param(body(event_id=DROP), "missing_field", "event_id", id="no-event_id"),
        pytest.param(body(source=DROP), "missing_field", "source", id="no-source"),
        pytest.param(body(version=DROP), "missing_field", "version", id="no-version"),
        pytest.param(body(ts=DROP), "missing_field", "ts", id="no-ts"),
        pytest.param(body(z=DROP), "missing_field", "z", id="no-z"),
        pytest.param(body(kind=DROP), "missing_field", "kind", id="no-kind"),
        pytest.param(body(z="3"), "invalid_type", "z", id="z-string"),
        pytest.param(body(x=3.0), "invalid_type", "x", id="x-float"),
        pytest.param(body(y=True), "invalid_type", "y", id="y-bool"),
        pytest.param(body(event_id=17), "invalid_type", "event_id", id="event_id-int"),
        pytest.param(body(layers="roads"), "invalid_type", "layers", id="layers-string"),
        pytest.param(body(kind="banana"), "unknown_kind", None, id="kind-banana"),
        pytest.param(body(ts="yesterday"), "invalid_timestamp", "ts", id="ts-garbage"),
        pytest.param(body(ts=1_800_000_000), "invalid_timestamp", "ts", id="ts-seconds"),
        pytest.param(body(ts="2027-01-15T08:00:00"), "invalid_timestamp", "ts", id="ts-naive"),
        pytest.param(body(tms="WorldCRS84Quad"), "unsupported_tms", "tms", id="tms"),
        pytest.param(body(version=-1), "invalid_version", "version", id="version-negative"),
        pytest.param(body(version="1..2"), "invalid_version", "version", id="version-1..2"),
        pytest.param(body(version="v1"), "invalid_version", "version", id="version-v1"),
        pytest.param(body(version=True), "invalid_version", "version", id="version-bool"),
        pytest.param(body(version=1.5), "invalid_version", "version", id="version-float"),
    ],
)
def test_dead_letter_reason_and_field(value: bytes, reason: str, field: str | None) -> None:
    dl = dead(value)
    assert dl.reason == reason
    assert dl.field == field


@pytest.mark.parametrize(
    "changes",
    [
        {"z": 31},
        {"z": -1},
        {"z": 10**30},
        {"x": 16384},
        {"y": 16384},
        {"x": -1},
        {"y": -1},
        {"z": 0, "x": 1, "y": 0},
        {"z": 1, "x": 0, "y": 2},
    ],
)
def test_tile_out_of_range(changes: dict[str, int]) -> None:
    assert dead(body(**changes)).reason == "tile_out_of_range"


def test_tile_out_of_range_message_names_the_coordinate() -> None:
    assert "x=16384" in dead(body(x=16384)).error
    assert "z=31" in dead(body(z=31)).error


def test_unknown_kind_message_names_it() -> None:
    assert "banana" in dead(body(kind="banana")).error


def test_unsupported_tms_message_names_it() -> None:
    error = dead(body(tms="WorldCRS84Quad")).error
    assert "{tms" not in error
    assert "WorldCRS84Quad" in error


@pytest.mark.parametrize(
    "bbox",
    [
        [0.0, 0.0, 1.0, 1.0],
        list(tile_bounds_lonlat(14, 8803, 5373)),  # the neighbour to the east
        list(tile_bounds_lonlat(13, 4401, 2686)),  # the parent
        [52.50953477032728, 13.4033203125, 52.522905940278065, 13.42529296875],  # lat/lon
    ],
)
def test_bbox_mismatch(bbox: list[float]) -> None:
    dl = dead(body(bbox=bbox))
    assert dl.reason == "bbox_mismatch"
    assert "14/8802/5373" in dl.error


def test_bbox_wrong_length_is_a_dead_letter() -> None:
    dl = dead(body(bbox=[13.4, 52.5, 13.42]))
    assert dl.field == "bbox"


# -- size, encoding, nesting -----------------------------------------------------------


def test_too_large() -> None:
    cfg = ValidationConfig(max_record_bytes=200)
    small = body()
    assert len(small) <= 200
    assert isinstance(ok(small, cfg), TileEvent)
    big = body(padding="x" * 300)
    dl = dead(big, cfg)
    assert dl.reason == "too_large"
    assert str(len(big)) in dl.error
    assert "200" in dl.error


def test_exactly_max_record_bytes_is_accepted() -> None:
    value = body()
    assert isinstance(ok(value, ValidationConfig(max_record_bytes=len(value))), TileEvent)
    assert dead(value, ValidationConfig(max_record_bytes=len(value) - 1)).reason == "too_large"


def test_truncated_record_is_too_large_with_real_size() -> None:
    head = body()[:40]  # the source kept only the head of a 5 MB record
    dl = dead(head, truncated_from=5_000_000)
    assert dl.reason == "too_large"
    assert "5000000 bytes" in dl.error
    assert str(len(head)) not in dl.error.split("over")[0]


def test_invalid_utf8() -> None:
    value = b'{"event_id": "\xff\xfe", "kind": "tile"}'
    dl = dead(value)
    assert dl.reason == "invalid_encoding"
    assert "UTF-8" in dl.error


def test_empty_record() -> None:
    # A Kafka tombstone has no value at all; its dead letter must still serialise.
    dl = dead(None)
    assert dl.reason == "empty_record"
    doc = dl.to_json_dict(raw_limit=1024)
    assert doc["raw"] == ""
    assert json.loads(json.dumps(doc))["origin"] == ORIGIN


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="arrays"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="objects"),
        pytest.param(b"[" * 100_000, id="unclosed"),
    ],
)
def test_deep_nesting_does_not_raise(value: bytes) -> None:
    dl = dead(value)
    assert dl.reason == "invalid_json"


def test_deep_nesting_in_batch() -> None:
    value = b"[" * 100_000 + b"]" * 100_000
    (out,) = validate_batch([rec(value)], CFG)
    assert isinstance(out, DeadLetter)
    assert out.reason == "invalid_json"


# -- event time from the future ------------------------------------------------------


def test_future_event() -> None:
    cfg = ValidationConfig(max_future_ms=60_000)
    dl = dead(body(ts=int(NOW) + 61_000), cfg)
    assert dl.reason == "future_event"
    assert dl.field == "ts"
    assert isinstance(ok(body(ts=int(NOW) + 59_000), cfg), TileEvent)
    # Exactly at the limit is still allowed.
    assert isinstance(ok(body(ts=int(NOW) + 60_000), cfg), TileEvent)


def test_future_event_uses_receive_time_not_wall_clock() -> None:
    ts = int(NOW) + 3_600_000
    assert dead(body(ts=ts)).reason == "future_event"
    assert isinstance(ok(body(ts=ts), received_ms=NOW + 3_600_000), TileEvent)


# -- HMAC -----------------------------------------------------------------------------

SECRETS = {"k2026": b"old-secret", "k2027": b"new-secret"}
HMAC_CFG = ValidationConfig(hmac_secrets=SECRETS)


def signed_headers(secret: bytes, value: bytes, timestamp: str = "1800000000") -> tuple:
    return (
        (SIGNATURE_HEADER, sign(secret, timestamp, value).encode()),
        (TIMESTAMP_HEADER, timestamp.encode()),
    )


def test_a_record_signature_is_hmac_sha256_over_the_record_domain() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"RECORD\ntilepipe:record\n123\nhello", hashlib.sha256).hexdigest()
    assert sign(b"k", "123", b"hello") == "sha256=" + expected


def test_hmac_without_headers_is_bad_signature() -> None:
    dl = dead(body(), HMAC_CFG)
    assert dl.reason == "bad_signature"


def test_hmac_correct_signature_is_valid() -> None:
    value = body()
    ev = ok(value, HMAC_CFG, headers=signed_headers(b"new-secret", value))
    assert ev.event_id == "evt-0001"


def test_hmac_second_active_secret_is_valid() -> None:
    value = body()
    assert isinstance(ok(value, HMAC_CFG, headers=signed_headers(b"old-secret", value)), TileEvent)


def test_hmac_header_names_are_case_insensitive() -> None:
    value = body()
    headers = tuple((k.upper(), v) for k, v in signed_headers(b"new-secret", value))
    assert isinstance(ok(value, HMAC_CFG, headers=headers), TileEvent)


def test_hmac_extra_headers_are_ignored() -> None:
    value = body()
    headers = (("traceparent", b"00-abc"), *signed_headers(b"new-secret", value))
    assert isinstance(ok(value, HMAC_CFG, headers=headers), TileEvent)


def test_hmac_tampered_body_is_bad_signature() -> None:
    value = body()
    headers = signed_headers(b"new-secret", value)
    tampered = body(version=4)
    assert dead(tampered, HMAC_CFG, headers=headers).reason == "bad_signature"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(signed_headers(b"retired-secret", body()), id="unknown-secret"),
        pytest.param(signed_headers(b"new-secret", body())[:1], id="no-timestamp"),
        pytest.param(signed_headers(b"new-secret", body())[1:], id="no-signature"),
        pytest.param(
            (signed_headers(b"new-secret", body())[0], (TIMESTAMP_HEADER, b"1800000001")),
            id="other-timestamp",
        ),
        pytest.param(
            ((SIGNATURE_HEADER, "sha256=\u00e9".encode()), (TIMESTAMP_HEADER, b"1")),
            id="non-ascii-signature",
        ),
        pytest.param(
            (
                (SIGNATURE_HEADER, sign(b"new-secret", "1800000000", body())[7:].encode()),
                (TIMESTAMP_HEADER, b"1800000000"),
            ),
            id="no-sha256-prefix",
        ),
    ],
)
def test_hmac_bad_signatures(headers: tuple) -> None:
    assert dead(body(), HMAC_CFG, headers=headers).reason == "bad_signature"


def test_hmac_checked_before_parsing() -> None:
    # An unsigned record is rejected for its signature, whatever its content.
    assert dead(b"{nope", HMAC_CFG).reason == "bad_signature"
    value = b"{nope"
    signed = dead(value, HMAC_CFG, headers=signed_headers(b"new-secret", value))
    assert signed.reason == "invalid_json"


def test_headers_ignored_without_secrets() -> None:
    value = body()
    assert isinstance(ok(value, headers=((SIGNATURE_HEADER, b"sha256=00"),)), TileEvent)
    assert isinstance(ok(value, ValidationConfig(hmac_secrets={})), TileEvent)


def test_signature_valid_directly() -> None:
    value = b'{"a": 1}'
    good = signed_headers(b"s", value, "42")
    assert signature_valid({"k": b"s"}, good, value)
    assert not signature_valid({"k": b"t"}, good, value)
    assert not signature_valid({"k": b"s"}, good, value + b" ")
    assert not signature_valid({"k": b"s"}, (), value)


# -- validate_batch -------------------------------------------------------------------


def test_validate_batch_keeps_order_and_count() -> None:
    values = [body(event_id="a"), b"{nope", body(event_id="b", z=99), body(event_id="c")]
    out = validate_batch([rec(v) for v in values], CFG)
    assert [type(o).__name__ for o in out] == ["TileEvent", "DeadLetter", "DeadLetter", "TileEvent"]
    assert out[0].event_id == "a"
    assert out[1].reason == "invalid_json"
    assert out[2].reason == "tile_out_of_range"
    assert out[3].event_id == "c"
    assert validate_batch([], CFG) == []


def test_validate_batch_turns_internal_errors_into_dead_letters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = validate_mod.validate_record

    def flaky(r: RawRecord, config: ValidationConfig) -> TileEvent | DeadLetter:
        if r.value == b"boom":
            raise KeyError("surprise")
        return real(r, config)

    monkeypatch.setattr(validate_mod, "validate_record", flaky)
    out = validate_batch([rec(b"boom"), rec(body())], CFG)
    assert isinstance(out[0], DeadLetter)
    assert out[0].reason == "internal_error"
    assert "KeyError" in out[0].error
    assert out[0].raw == b"boom"
    assert out[0].origin == ORIGIN
    assert isinstance(out[1], TileEvent)


# -- DeadLetter.to_json_dict -----------------------------------------------------------


def letter(raw: bytes, **kw: Any) -> DeadLetter:
    return DeadLetter(
        kw.get("reason", "invalid_json"),
        kw.get("error", "bad"),
        raw,
        kw.get("origin", dict(ORIGIN)),
        kw.get("received_ms", NOW),
        kw.get("field"),
    )


def raw_of(d: dict[str, Any]) -> bytes:
    if d.get("raw_encoding") == "base64":
        return base64.b64decode(d["raw"])
    return d["raw"].encode("utf-8")


def test_to_json_dict_utf8_raw_is_text() -> None:
    dl = letter('{"name": "Straße"}'.encode(), field="name", reason="invalid_type")
    d = dl.to_json_dict(raw_limit=1024)
    assert d == {
        "reason": "invalid_type",
        "error": "bad",
        "field": "name",
        "raw": '{"name": "Straße"}',
        "origin": ORIGIN,
        "received_at": "2027-01-15T08:00:00.000Z",
    }
    assert json.loads(json.dumps(d)) == d


def test_to_json_dict_non_utf8_raw_is_base64() -> None:
    raw = b"\xff\x00\xfe binary"
    d = letter(raw).to_json_dict(raw_limit=1024)
    assert d["raw_encoding"] == "base64"
    assert d["raw"] == base64.b64encode(raw).decode("ascii")
    assert "raw_truncated" not in d
    json.dumps(d)


def test_to_json_dict_truncates_above_raw_limit() -> None:
    raw = b"a" * 100
    d = letter(raw).to_json_dict(raw_limit=10)
    assert d["raw"] == "a" * 10
    assert d["raw_truncated"] is True
    assert d["raw_bytes"] == 100
    at_limit = letter(b"a" * 10).to_json_dict(raw_limit=10)
    assert at_limit["raw"] == "a" * 10
    assert "raw_truncated" not in at_limit
    assert "raw_bytes" not in at_limit


def test_to_json_dict_truncated_binary() -> None:
    raw = bytes(range(255, -1, -1)) * 4  # starts with 0xff: not UTF-8
    d = letter(raw).to_json_dict(raw_limit=16)
    assert d["raw_truncated"] is True
    assert d["raw_bytes"] == 1024
    assert d["raw_encoding"] == "base64"
    assert base64.b64decode(d["raw"]) == raw[:16]


def test_to_json_dict_truncation_inside_a_multibyte_character_keeps_the_bytes() -> None:
    raw = ("ä" * 10).encode()  # 20 bytes; a limit of 5 splits the third character
    d = letter(raw).to_json_dict(raw_limit=5)
    assert d["raw_truncated"] is True
    assert raw_of(d) == raw[:5]
    json.dumps(d)


def test_to_json_dict_origin_and_received_at() -> None:
    origin = {"file": "events.jsonl", "line": 7}
    d = letter(b"x", origin=origin, received_ms=1_700_000_000_123.0).to_json_dict(64)
    assert d["origin"] == origin
    assert d["received_at"] == "2023-11-14T22:13:20.123Z"
    assert d["field"] is None


def test_to_json_dict_from_validation() -> None:
    dl = dead(body(z="3"))
    d = dl.to_json_dict(raw_limit=4096)
    assert d["reason"] == "invalid_type"
    assert d["field"] == "z"
    assert json.loads(d["raw"]) == doc(z="3")
    assert d["origin"] == ORIGIN
    assert d["received_at"] == "2027-01-15T08:00:00.000Z"
    json.dumps(d)


# -- fuzzing ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def tile_like(draw: st.DrawFn) -> dict[str, Any]:
    """Valid tile events with a few fields made odd, replaced or dropped."""
    z = draw(st.integers(0, MAX_ZOOM))
    n = 1 << z
    x, y = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
    d: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=20)),
        "kind": "tile",
        "version": draw(
            st.integers(0, 10**6) | st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,3}\Z")
        ),
        "source": draw(st.text(min_size=1, max_size=10)),
        "ts": draw(
            st.integers(100_000_000_000, int(NOW))
            | st.sampled_from(["2027-01-15T07:59:00Z", "2027-01-15T08:59:00.5+01:00"])
        ),
        "z": z,
        "x": x,
        "y": y,
    }
    if draw(st.booleans()):
        d["layers"] = draw(st.none() | st.lists(st.text(max_size=5), max_size=3))
    if draw(st.booleans()):
        d["bbox"] = list(tile_bounds_lonlat(z, x, y))
    if draw(st.booleans()):
        d["tms"] = "WebMercatorQuad"
    odd = {
        "event_id": st.just("") | st.text(min_size=257, max_size=300),
        "kind": st.sampled_from(["feature", "telemetry", "banana", "", "TILE"]),
        "version": st.integers(-(10**6), -1) | st.text(max_size=6) | st.floats(),
        "source": st.just(""),
        "ts": st.integers(0, 10**16) | st.floats() | st.text(max_size=30),
        "z": st.integers(-2, MAX_ZOOM + 2),
        "x": st.integers(-2, n + 1),
        "y": st.integers(-2, n + 1),
        "layers": st.lists(st.text(max_size=200), max_size=70),
        "bbox": st.lists(st.floats(), max_size=5),
        "tms": st.sampled_from(["WorldCRS84Quad", "", "webmercatorquad"]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(odd)), max_size=2, unique=True)):
        how = draw(st.integers(0, 2))
        if how == 0:
            d.pop(key, None)
        elif how == 1:
            d[key] = draw(odd[key])
        else:
            d[key] = draw(json_values)
    return d


def assert_accounted(records: list[RawRecord], out: list[TileEvent | DeadLetter]) -> None:
    assert len(out) == len(records)
    for r, o in zip(records, out, strict=True):
        if isinstance(o, TileEvent):
            assert 0 <= o.z <= MAX_ZOOM
            assert 0 <= o.x < (1 << o.z)
            assert 0 <= o.y < (1 << o.z)
            assert o.key == tile_key(o.z, o.x, o.y)
            assert o.ts_ms <= r.received_ms + CFG.max_future_ms
        else:
            assert isinstance(o, DeadLetter)
            assert o.reason != "internal_error", o.error
            assert o.raw == r.value
            assert o.origin == r.origin
            d = o.to_json_dict(raw_limit=64)
            json.dumps(d, allow_nan=False)
            assert raw_of(d) == r.value[:64]


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_fuzz_bytes(values: list[bytes]) -> None:
    records = [rec(v) for v in values]
    assert_accounted(records, validate_batch(records, CFG))


@FUZZ
@given(st.lists(json_values, max_size=5))
def test_fuzz_json_values(values: list[Any]) -> None:
    records = [rec(json.dumps(v).encode()) for v in values]
    assert_accounted(records, validate_batch(records, CFG))


@FUZZ
@given(st.lists(tile_like(), min_size=1, max_size=5))
def test_fuzz_tile_like(values: list[dict[str, Any]]) -> None:
    records = [rec(json.dumps(v).encode()) for v in values]
    assert_accounted(records, validate_batch(records, CFG))


@FUZZ
@given(tile_like(), st.binary(max_size=8))
def test_fuzz_hmac(value: dict[str, Any], junk: bytes) -> None:
    raw = json.dumps(value).encode()
    headers = signed_headers(b"new-secret", raw)
    out = validate_batch(
        [rec(raw, headers=headers), rec(raw + junk if junk else raw + b" ", headers=headers)],
        HMAC_CFG,
    )
    assert_accounted([rec(raw)], out[:1])
    assert isinstance(out[1], DeadLetter)
    assert out[1].reason == "bad_signature"


def test_nan_and_infinity_tokens() -> None:
    # Python's json emits NaN/Infinity; the validator must reject them cleanly.
    assert dead(json.dumps(doc(ts=math.nan)).encode()).reason == "invalid_timestamp"
    assert dead(json.dumps(doc(ts=math.inf)).encode()).reason == "invalid_timestamp"
    b = list(tile_bounds_lonlat(14, 8802, 5373))
    b[0] = math.nan
    assert dead(json.dumps(doc(bbox=b)).encode()).reason == "bbox_mismatch"


# -- messages never echo unbounded input (review H4) ----------------------------------

NEAR_LIMIT = (1 << 20) - 300


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"version": "v" * NEAR_LIMIT}, "invalid_version"),
        ({"version": "1." * (NEAR_LIMIT // 2)}, "invalid_version"),
        ({"kind": "k" * NEAR_LIMIT}, "unknown_kind"),  # pydantic's tag message quotes it
        ({"tms": "t" * NEAR_LIMIT}, "unsupported_tms"),
        ({"ts": "9" * NEAR_LIMIT}, "invalid_timestamp"),
    ],
)
def test_a_dead_letter_never_echoes_a_huge_value(changes: dict[str, Any], reason: str) -> None:
    d = validate_record(rec(body(**changes)), CFG)
    assert isinstance(d, DeadLetter) and d.reason == reason
    assert len(d.error) < 600
    letter = json.dumps(d.to_json_dict(64 * 1024))
    assert len(letter) < 100_000  # 64 KiB of raw and a bounded rest: far under the 1 MB limit


def test_telemetry_reading_fields_are_bounded() -> None:
    reading: dict[str, Any] = {"kind": "telemetry", "sensor_id": "s1", "lat": 1.0, "lon": 2.0}
    reading.update(z=DROP, x=DROP, y=DROP)
    for i in range(64):
        reading[f"f{i}"] = i
    assert not isinstance(validate_record(rec(body(**reading)), CFG), DeadLetter)
    d = validate_record(rec(body(**reading, f64=1)), CFG)
    assert isinstance(d, DeadLetter) and d.reason == "too_many_fields"
    d = validate_record(rec(body(**{**reading, "f0": "x" * 5000})), CFG)
    assert isinstance(d, DeadLetter) and (d.reason, d.field) == ("invalid_value", "f0")
