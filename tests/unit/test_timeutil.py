"""Event-time parsing (RFC 3339 or epoch milliseconds) and RFC 3339 formatting."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilepipe.timeutil import format_rfc3339_ms, now_ms, parse_event_time

T = 1_700_000_000_000  # 2023-11-14T22:13:20Z
MIN_MS = 100_000_000_000  # 1973-03-03T09:46:40Z; anything smaller looks like seconds
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def exact_rfc3339(ms: int, offset_minutes: int = 0) -> str:
    """RFC 3339 text for ``ms`` computed with integer arithmetic only."""
    tz = timezone(timedelta(minutes=offset_minutes))
    dt = (EPOCH + timedelta(milliseconds=ms)).astimezone(tz)
    text = dt.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


# -- epoch milliseconds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T, T),
        (T + 123, T + 123),
        (1.7e12, T),
        (1_700_000_000_123.9, T + 123),  # sub-millisecond part dropped
        (MIN_MS, MIN_MS),
        (MAX_MS, MAX_MS),
    ],
)
def test_epoch_ms(value: float, expected: int) -> None:
    got = parse_event_time(value)
    assert got == expected
    assert type(got) is int


@pytest.mark.parametrize(
    "value",
    [
        1_700_000_000,  # seconds, not milliseconds
        1_700_000_000.5,
        MIN_MS - 1,
        0,
        -1,
        -T,
        MAX_MS + 1,
        10**30,
    ],
)
def test_implausible_numbers_rejected(value: float) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_event_time(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_rejected(value: bool) -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_event_time(value)


@pytest.mark.parametrize("value", [None, b"1700000000000", [T], {"ms": T}, object()])
def test_other_types_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value)


# -- RFC 3339 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", T),
        ("2023-11-14T22:13:20.123Z", T + 123),
        ("2023-11-14T22:13:20.5Z", T + 500),
        ("2023-11-14T22:13:20.123456Z", T + 123),
        ("2023-11-14T22:13:20z", T),
        ("2023-11-14t22:13:20Z", T),
        ("2023-11-14 22:13:20Z", T),  # RFC 3339 allows a space separator
        ("2023-11-14T22:13:20+00:00", T),
        ("2023-11-15T00:13:20+02:00", T),
        ("2023-11-14T16:43:20-05:30", T),
        ("2023-11-15T11:58:20.250+13:45", T + 250),
        ("  2023-11-14T22:13:20Z\n", T),
        ("9999-12-31T23:59:59.999Z", MAX_MS),
    ],
)
def test_rfc3339(text: str, expected: int) -> None:
    got = parse_event_time(text)
    assert got == expected
    assert type(got) is int


@pytest.mark.parametrize(
    "text",
    [
        "2023-11-14T22:13:20",  # naive: no offset
        "2023-11-14T22:13:20.123",
        "2023-11-14",
    ],
)
def test_naive_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_event_time(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "now",
        "yesterday",
        "1700000000000",  # epoch ms must be a JSON number, not a string
        "2023-13-01T00:00:00Z",
        "2023-11-31T00:00:00Z",
        "2023-11-14T25:00:00Z",
        "2023-11-14T22:13:20+25:00",
        "2023-11-14T22:13:20ZZ",
        "14/11/2023 22:13:20 UTC",
        "2023-11-14T22:13:20Z" + " " * 60 + "x",
        "2023-11-14T22:13:20." + "1" * 60 + "Z",  # too long to be RFC 3339
    ],
)
def test_garbage_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_event_time(text)


def test_offsets_name_the_same_instant() -> None:
    forms = [exact_rfc3339(T + 42, off) for off in (0, 60, -300, 330, 14 * 60, -12 * 60)]
    assert len(set(forms)) == 6
    assert {parse_event_time(f) for f in forms} == {T + 42}


@given(
    st.integers(1_104_537_600_000, 2_145_916_800_000),  # 2005 .. 2038
    st.sampled_from([0, 60, -300, 330, 765, -720]),
)
def test_rfc3339_parses_to_the_exact_millisecond(ms: int, offset: int) -> None:
    assert parse_event_time(exact_rfc3339(ms, offset)) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2004-01-10T13:37:04.001Z", 1_073_741_824_001),
        ("2004-01-10T15:37:04.001+02:00", 1_073_741_824_001),
        ("2038-01-19T03:14:08.002Z", 2_147_483_648_002),
        ("1987-03-27T04:26:22.558Z", 543_817_582_558),
    ],
)
def test_rfc3339_millisecond_precision_near_powers_of_two(text: str, ms: int) -> None:
    assert exact_rfc3339(ms, 0 if text.endswith("Z") else 120) == text
    assert parse_event_time(text) == parse_event_time(ms) == ms


# -- format_rfc3339_ms ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (T, "2023-11-14T22:13:20.000Z"),
        (T + 7, "2023-11-14T22:13:20.007Z"),
        (T + 999, "2023-11-14T22:13:20.999Z"),
        (T + 123.9, "2023-11-14T22:13:20.123Z"),  # truncated, not rounded
        (1_073_741_824_001, "2004-01-10T13:37:04.001Z"),
        (8_000_000_000_000, "2223-07-06T14:13:20.000Z"),
    ],
)
def test_format_rfc3339_ms(ms: float, text: str) -> None:
    assert format_rfc3339_ms(ms) == text


@given(st.integers(0, 8_000_000_000_000))  # 1970 .. 2223
def test_format_matches_exact_and_round_trips(ms: int) -> None:
    text = format_rfc3339_ms(ms)
    assert RFC3339_MS.fullmatch(text)
    assert text == exact_rfc3339(ms)
    if 1_104_537_600_000 <= ms < 2_145_916_800_000:
        assert parse_event_time(text) == ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (8_590_050_734_977, "2242-03-17T21:12:14.977Z"),
        (85_367_783_794_135, "4675-03-14T01:16:34.135Z"),
        (MAX_MS, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_rfc3339_ms_far_future(ms: int, text: str) -> None:
    assert exact_rfc3339(ms) == text
    assert format_rfc3339_ms(ms) == text


def test_now_ms_is_wall_clock_ms() -> None:
    ref = datetime.now(timezone.utc).timestamp() * 1000
    assert abs(now_ms() - ref) < 5_000
