"""Event-time parsing and formatting: RFC 3339 or epoch milliseconds."""

from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta, timezone

# Epoch milliseconds below this are surely seconds sent by mistake (before
# 1973-03-03 in ms); we reject rather than guess.
_MIN_PLAUSIBLE_MS = 100_000_000_000
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def now_ms() -> float:
    return time.time() * 1000.0


def parse_event_time(value: object) -> int:
    """Event time as integer epoch milliseconds; raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 string or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("ts must be a finite number")
        ms = int(value)
        if ms < _MIN_PLAUSIBLE_MS or ms > _MAX_MS:
            raise ValueError(
                f"ts {value} is not epoch milliseconds (seconds? send ms, or an RFC 3339 string)"
            )
        return ms
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise ValueError("ts string is too long to be RFC 3339")
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"ts {value!r} is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError(f"ts {value!r} has no UTC offset (RFC 3339 requires one, e.g. 'Z')")
        ms = (parsed - _EPOCH) // _ONE_MS  # integer arithmetic: no float rounding
        if ms < _MIN_PLAUSIBLE_MS:
            raise ValueError(f"ts {value!r} is before 1973, too old to be a map edit")
        return ms
    raise ValueError("ts must be an RFC 3339 string or epoch milliseconds")


def format_rfc3339_ms(ms: float) -> str:
    whole = int(ms)
    return f"{_second_prefix(whole // 1000)}{whole % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    # Updates cluster in time: formatting each second once saves a strftime per message.
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.")
