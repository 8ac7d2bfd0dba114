"""The ingress's memory of recently accepted events, and its ingest clock.

:class:`DedupWindow` remembers the events the broker acknowledged for
``window`` seconds, bounded to ``max_entries`` (the oldest are forgotten
first). An event is known by ``(key_id, source, event_id)``: ids are unique
only per producer, so two producers (or one producer's two sources) that both
number their events 1, 2, 3… must not suppress each other's. With each id the
window keeps a digest of the record's bytes: the same identity with different
bytes is not a retry but a conflict, which the ingress answers 409 instead of
"202 duplicate" and dropping the record. Only acknowledged events go in: an
event whose produce failed is not remembered, so the client's retry is
produced. It is per process on purpose: the ingress then depends on nothing
but Kafka, and a retry that lands on another replica (or after the window)
costs one extra record on the topic, which the dataflow drops as a duplicate
or stale version and the Redis store never broadcasts twice. A shared Redis
``SET NX`` would add a second dependency to the write path and still leave a
gap between the set and the acknowledgement.

:class:`IngestClock` gives ingest timestamps that never go backwards within a
process, whatever the wall clock does.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

EventIdentity = tuple[str, str, str]
"""``(key_id, source, event_id)``."""


def digest(value: bytes) -> bytes:
    """What the window keeps of a record's bytes (16 bytes of BLAKE2b: no collisions by chance)."""
    return hashlib.blake2b(value, digest_size=16).digest()


class DedupWindow:
    """Events seen within the last ``window`` seconds, at most ``max_entries`` of them."""

    def __init__(
        self,
        window: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        # identity -> (when it expires, digest of the bytes); insertion order is expiry
        # order (constant window, monotonic clock), so expired ids are always at the front.
        self._expires: OrderedDict[EventIdentity, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expires)

    def get(self, identity: EventIdentity) -> bytes | None:
        """The digest remembered for ``identity``, or ``None``."""
        self._expire()
        entry = self._expires.get(identity)
        return None if entry is None else entry[1]

    def add(self, identity: EventIdentity, body_digest: bytes) -> None:
        self._expire()
        self._expires[identity] = (self._clock() + self.window, body_digest)
        self._expires.move_to_end(identity)
        while len(self._expires) > self.max_entries:
            self._expires.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        expires = self._expires
        while expires:
            first = next(iter(expires.values()))[0]
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
