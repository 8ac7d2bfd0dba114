"""The built-in event generator: realistic tile traffic without any service.

It is what ``tilepipe run`` reads when nothing is configured, and what demos
and benchmarks use. It makes wire-format JSON (so records take the same path
as real input) for a block of tiles around a centre point: versions rise per
tile, event times trail the wall clock, and a configurable share of records
are re-sent duplicates, out-of-order replays of older versions, or invalid.
It is deterministic for a seed. Configure it by URI query, e.g.
``generator:?events=5000&tiles=100&zoom=14&rate=2000&invalid=0.01``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from tilepipe import metrics, shutdown
from tilepipe.records import RawRecord
from tilepipe.timeutil import now_ms


@dataclass(frozen=True)
class GeneratorSpec:
    events: int = 2000
    tiles: int = 64
    zoom: int = 14
    lon: float = 13.4050  # Berlin
    lat: float = 52.5200
    seed: int = 7
    rate: float = 1000.0  # events per second; 0 = as fast as the job takes them
    batch: int = 500
    duplicates: float = 0.05  # share of records that re-send an earlier event
    replays: float = 0.05  # share that re-send an older version under a new id
    invalid: float = 0.01  # share of malformed records
    jitter_ms: int = 200  # event times trail the wall clock by up to this
    hot: float = 0.0  # Zipf exponent for tile popularity; 0 = uniform

    @classmethod
    def from_query(cls, query: str) -> GeneratorSpec:
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for name, text in parse_qsl(query, strict_parsing=False):
            if name not in known:
                raise ValueError(
                    f"generator: unknown option {name!r}; known: {', '.join(sorted(known))}"
                )
            kind = known[name]
            try:
                values[name] = int(text) if kind in ("int", int) else float(text)
            except ValueError:
                raise ValueError(f"generator: {name}={text!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]


def _tile_block(spec: GeneratorSpec) -> list[tuple[int, int, int]]:
    n = 1 << spec.zoom
    cx = int((spec.lon + 180.0) / 360.0 * n)
    lat = math.radians(spec.lat)
    cy = int((1.0 - math.asinh(math.tan(lat)) / math.pi) / 2.0 * n)
    side = max(1, math.isqrt(spec.tiles - 1) + 1)
    tiles = []
    for i in range(spec.tiles):
        x = (cx - side // 2 + i % side) % n
        y = min(n - 1, max(0, cy - side // 2 + i // side))
        tiles.append((spec.zoom, x, y))
    return tiles


_INVALID = (
    b"{not json",
    b'["an", "array"]',
    b'{"kind": "tile", "event_id": "bad-y", "version": 1, "source": "gen", "ts": 1700000000000,'
    b' "z": 1, "x": 0, "y": 5}',
    b'{"kind": "tile", "version": 1, "source": "gen", "ts": "2024-01-01T00:00:00Z",'
    b' "z": 1, "x": 0, "y": 0}',
    b'{"kind": "tile", "event_id": "bad-ts", "version": 1, "source": "gen",'
    b' "ts": "yesterday", "z": 1, "x": 0, "y": 0}',
)


class _GeneratorPartition(StatefulSourcePartition[RawRecord, int]):
    def __init__(self, spec: GeneratorSpec, resume: int | None) -> None:
        self._spec = spec
        self._rng = random.Random(spec.seed)
        self._tiles = _tile_block(spec)
        if spec.hot > 0:
            self._weights: list[float] | None = [
                1.0 / (rank + 1) ** spec.hot for rank in range(len(self._tiles))
            ]
        else:
            self._weights = None
        self._versions = [0] * len(self._tiles)
        self._times: list[list[int]] = [[] for _ in self._tiles]  # event time of each version
        self._sent: list[tuple[bytes, int]] = []  # recent (record, tile index)
        self._made = 0
        self._next_at: datetime | None = None
        # Resuming replays the deterministic sequence up to the resume point.
        for _ in range(resume or 0):
            self._make(now_ms())

    def next_batch(self) -> list[RawRecord]:
        spec = self._spec
        if self._made >= spec.events:
            raise StopIteration
        if shutdown.requested.is_set():
            raise StopIteration
        n = min(spec.batch, spec.events - self._made)
        if spec.rate > 0:
            n = max(1, min(n, int(spec.rate / 100)))  # ~100 batches a second
            self._next_at = datetime.now(timezone.utc) + timedelta(seconds=n / spec.rate)
        received = now_ms()
        batch = [RawRecord(self._make(received), {"generator": spec.seed, "n": self._made},
                           received) for _ in range(n)]  # fmt: skip
        metrics.EVENTS_IN.inc(len(batch))
        return batch

    def next_awake(self) -> datetime | None:
        return self._next_at

    def _make(self, now: float) -> bytes:
        spec, rng = self._spec, self._rng
        self._made += 1
        roll = rng.random()
        if roll < spec.invalid:
            return _INVALID[rng.randrange(len(_INVALID))]
        roll -= spec.invalid
        if self._sent and roll < spec.duplicates:
            return rng.choice(self._sent)[0]
        roll -= spec.duplicates
        if self._weights is not None:
            i = rng.choices(range(len(self._tiles)), self._weights)[0]
        else:
            i = rng.randrange(len(self._tiles))
        z, x, y = self._tiles[i]
        version = self._versions[i] + 1
        lag = rng.randrange(spec.jitter_ms + 1)  # drawn even when resuming: same sequence
        if roll < spec.replays and version > 2:
            # An old version re-sent late, with the event time it had back then.
            version = rng.randrange(1, version - 1)
            ts = self._times[i][version - 1]
        else:
            # Newer versions happen later, though they may arrive out of order.
            times = self._times[i]
            ts = max(times[-1] + 1 if times else 0, int(now) - lag)
            self._versions[i] = version
            times.append(ts)
        record = json.dumps(
            {
                "event_id": f"gen-{spec.seed}-{self._made}",
                "kind": "tile",
                "version": version,
                "source": "generator",
                "ts": ts,
                "z": z,
                "x": x,
                "y": y,
            },
            separators=(",", ":"),
        ).encode()
        self._sent.append((record, i))
        if len(self._sent) > 256:
            del self._sent[:128]
        return record

    def snapshot(self) -> int:
        return self._made


class GeneratorSource(FixedPartitionedSource[RawRecord, int]):
    def __init__(self, spec: GeneratorSpec) -> None:
        self.spec = spec

    def list_parts(self) -> list[str]:
        return ["generator"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _GeneratorPartition:
        return _GeneratorPartition(self.spec, resume_state)
