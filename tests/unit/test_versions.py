"""Version parsing and the byte-wise sortable (version, event time) order key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilepipe.timeutil import parse_event_time
from tilepipe.versions import order_key, version_key

# -- version_key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (0, (0,)),
        (7, (7,)),
        (2**63 - 1, (2**63 - 1,)),
        ("18446744073709551616", (2**64,)),  # past 64 bits: as a string
        ("0", (0,)),
        ("42", (42,)),
        ("4.2.0", (4, 2)),
        ("1.10.0", (1, 10)),
        ("1.9", (1, 9)),
        ("2", (2,)),
        ("2.0", (2,)),
        ("2.0.0.0", (2,)),
        ("0.0", (0,)),
        ("0.1", (0, 1)),
        ("007.01", (7, 1)),
        ("1.0.1", (1, 0, 1)),
    ],
)
def test_version_key_values(version: int | str, expected: tuple[int, ...]) -> None:
    assert version_key(version) == expected


def test_dotted_versions_compare_numerically() -> None:
    assert version_key("1.10.0") > version_key("1.9.0")
    assert version_key("1.10") > version_key("1.9.99")
    assert version_key("10") > version_key("9")
    assert version_key("2") == version_key("2.0") == version_key(2)
    assert version_key("2.0.1") > version_key("2")
    assert version_key("1.0.0.1") > version_key("1")
    assert version_key(3) > version_key("2.99")


@pytest.mark.parametrize(
    "bad",
    [
        -1,
        -(10**30),
        True,
        False,
        "1..2",
        "",
        "v1",
        "1.",
        ".1",
        "1.2.",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "1,2",
        "1e3",
        "0x10",
        1.0,
        1.5,
        float("nan"),
        None,
        [1, 2],
        (1, 2),
        {"major": 1},
        b"1",
    ],
)
def test_version_key_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        version_key(bad)  # type: ignore[arg-type]


def test_version_key_component_length_limit() -> None:
    assert version_key("9" * 64) == (int("9" * 64),)
    with pytest.raises(ValueError):
        version_key("1." + "9" * 63)
    with pytest.raises(ValueError):
        version_key(10**99)


@pytest.mark.parametrize(
    ("version", "says"),
    [
        (2**63, "0..2^63-1"),  # C1: orjson refuses integers past 64 bits
        (2**64, "0..2^63-1"),
        ("1." * 240_000 + "1", "over the 64 allowed"),  # H1: 480 KB of components
        (".".join(["1"] * 17), "17 components, over the 16 allowed"),
        ("v" * 1_000_000, "1000000 characters"),  # H4: the message must not echo it
    ],
)
def test_version_key_bounds(version: int | str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        version_key(version)
    assert says in str(e.value)
    assert len(str(e.value)) < 200


def test_version_key_bounds_are_exact() -> None:
    assert version_key(".".join(["1"] * 16)) == (1,) * 16
    assert version_key("1" * 64) == (int("1" * 64),)
    with pytest.raises(ValueError):
        version_key("1" * 65)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=6), st.integers(0, 4))
def test_trailing_zeros_do_not_count(parts: list[int], zeros: int) -> None:
    text = ".".join(map(str, parts))
    padded = text + ".0" * zeros
    assert version_key(padded) == version_key(text)
    stripped = list(parts)
    while len(stripped) > 1 and stripped[-1] == 0:
        stripped.pop()
    assert version_key(text) == tuple(stripped)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_int_and_string_agree(n: int) -> None:
    assert version_key(n) == version_key(str(n)) == (n,)


# -- order_key ------------------------------------------------------------------------

MAX_TS = 10**15 - 1  # the 15 digits order_key reserves for epoch milliseconds

components = st.one_of(
    st.integers(0, 20),  # small numbers: many ties and near-ties
    st.integers(0, 10**12 - 1),  # five of these are 64 characters, the longest accepted
)
version_strings = st.one_of(
    st.lists(components, min_size=1, max_size=5).map(lambda parts: ".".join(map(str, parts))),
    st.integers(0, 10**64 - 1).map(str),  # the longest single component
)
timestamps = st.one_of(st.integers(0, 20), st.integers(0, MAX_TS))


@given(version_strings, timestamps, version_strings, timestamps)
def test_order_key_sorts_like_version_then_time(va: str, ta: int, vb: str, tb: int) -> None:
    ka, kb = version_key(va), version_key(vb)
    a, b = order_key(ka, ta), order_key(kb, tb)
    expected = (ka, ta) > (kb, tb), (ka, ta) == (kb, tb), (ka, ta) < (kb, tb)
    assert (a > b, a == b, a < b) == expected
    # Byte-wise, as Redis compares them.
    ab, bb = a.encode(), b.encode()
    assert (ab > bb, ab == bb, ab < bb) == expected


@given(st.lists(st.tuples(version_strings, timestamps), min_size=2, max_size=20))
def test_sorting_by_order_key_sorts_by_version_then_time(
    pairs: list[tuple[str, int]],
) -> None:
    keyed = [(version_key(v), t) for v, t in pairs]
    by_tuple = sorted(keyed)
    by_string = sorted(keyed, key=lambda kt: order_key(*kt))
    assert by_string == by_tuple


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        (("1.9.0", 5), ("1.10.0", 1)),
        (("1", 999), ("1.5", 0)),  # the space after "1" sorts below the "." of "1.5"
        (("9", 0), ("10", 0)),
        (("2", 1), ("2.0", 2)),
        (("0", MAX_TS), ("0.0.1", 0)),
        (("99", 0), ("100", 0)),
    ],
)
def test_order_key_examples(older: tuple[str, int], newer: tuple[str, int]) -> None:
    assert order_key(version_key(older[0]), older[1]) < order_key(version_key(newer[0]), newer[1])


def test_order_key_format() -> None:
    assert order_key((4, 2), 1_700_000_000_000) == "014.012 001700000000000"
    assert order_key((0,), 0) == "010 000000000000000"
    assert order_key(version_key("2.0"), 5) == order_key(version_key(2), 5)


@pytest.mark.parametrize("text", ["1969-12-31T23:59:59.990Z", "1970-01-01T00:00:00Z"])
def test_times_order_key_cannot_encode_are_rejected(text: str) -> None:
    # order_key zero-pads non-negative times; anything before 1973 is refused upstream.
    with pytest.raises(ValueError, match="before 1973"):
        parse_event_time(text)


@pytest.mark.parametrize("bad", ["\u0661", "1.\u0662", "\uff11"])
def test_version_key_rejects_non_ascii_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        version_key(bad)
