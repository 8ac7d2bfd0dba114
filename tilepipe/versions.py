"""Version numbers as the wire format carries them, compared numerically.

A version is a non-negative integer or a dotted numeric string (``"4.2.0"``).
They compare component by component as integers, so ``"1.10.0"`` is newer
than ``"1.9.0"``, and trailing zero components do not count (``"2"`` and
``"2.0"`` are the same version). Ties between equal versions are broken by
event time.

:func:`order_key` turns ``(version, event time)`` into one string whose plain
byte-wise order is that numeric order. Redis compares these strings inside
the broadcast script, so "never go backwards" is decided by the same rule in
the dataflow and in the store.
"""

from __future__ import annotations

import re

Version = int | str
VersionKey = tuple[int, ...]

_DOTTED = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_COMPONENT_DIGITS = 99
_MAX_INT = 10**_MAX_COMPONENT_DIGITS
_TS_DIGITS = 15  # epoch milliseconds up to the year 33658


def version_key(version: Version) -> VersionKey:
    """Parse a wire version into a comparable tuple; raises ``ValueError``."""
    if isinstance(version, bool):
        raise ValueError("version must be an integer or a dotted numeric string, not a boolean")
    if isinstance(version, int):
        if version < 0:
            raise ValueError(f"version must be non-negative, got {version}")
        if version >= _MAX_INT:
            raise ValueError(f"version component longer than {_MAX_COMPONENT_DIGITS} digits")
        return (version,)
    elif isinstance(version, str):
        if not _DOTTED.fullmatch(version):
            raise ValueError(
                f"version {version!r} is not a non-negative integer or dotted numeric string"
            )
        parts: list[int] = [int(p) for p in version.split(".")]
    else:
        raise ValueError(f"version must be an integer or a dotted numeric string, not {version!r}")
    if any(len(str(p)) > _MAX_COMPONENT_DIGITS for p in parts):
        raise ValueError(f"version component longer than {_MAX_COMPONENT_DIGITS} digits")
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def order_key(vkey: VersionKey, ts_ms: int) -> str:
    """Byte-wise sortable encoding of ``(version, event time)``.

    Each component is written as its digit count (two digits) then its digits,
    so longer numbers sort after shorter ones; components are joined by ``.``
    and the timestamp follows a space, which sorts below ``.`` so that ``1``
    (then any time) precedes ``1.5``.
    """
    if len(vkey) == 1:  # most versions are plain integers
        s = str(vkey[0])
        return f"{len(s):02d}{s} {ts_ms:0{_TS_DIGITS}d}"
    comps = ".".join(f"{len(s):02d}{s}" for s in map(str, vkey))
    return f"{comps} {ts_ms:0{_TS_DIGITS}d}"
