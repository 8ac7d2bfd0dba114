"""The ingress's memory of recently accepted ``event_id``s, and its ingest clock.

:class:`DedupWindow` remembers the ids the broker acknowledged for
``window`` seconds, bounded to ``max_entries`` (the oldest are forgotten
first). Only acknowledged ids go in: an event whose produce failed is not
remembered, so the client's retry is produced. It is per process on purpose:
the ingress then depends on nothing but Kafka, and a retry that lands on
another replica (or after the window) costs one extra record on the topic,
which the dataflow drops as a duplicate or stale version and the Redis store
never broadcasts twice. A shared Redis ``SET NX`` would add a second
dependency to the write path and still leave a gap between the set and the
acknowledgement.

:class:`IngestClock` gives ingest timestamps that never go backwards within a
process, whatever the wall clock does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class DedupWindow:
    """Ids seen within the last ``window`` seconds, at most ``max_entries`` of them."""

    def __init__(
        self,
        window: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        # id -> when it expires; insertion order is expiry order (constant window,
        # monotonic clock), so expired ids are always at the front.
        self._expires: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expires)

    def __contains__(self, event_id: object) -> bool:
        self._expire()
        return event_id in self._expires

    def add(self, event_id: str) -> None:
        self._expire()
        self._expires[event_id] = self._clock() + self.window
        self._expires.move_to_end(event_id)
        while len(self._expires) > self.max_entries:
            self._expires.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        expires = self._expires
        while expires:
            first = next(iter(expires.values()))
            if first > now:
                return
            expires.popitem(last=False)


class IngestClock:
    """Epoch milliseconds that never decrease: ``max(last, now)``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def now_ms(self) -> int:
        self._last = max(self._last, int(self._clock() * 1000))
        return self._last
