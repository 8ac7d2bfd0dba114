"""Geometry repair (and overlays) with a wall-clock and a memory budget, in a worker process.

``shapely.make_valid`` has no budget of its own and its cost is not predicted
by anything cheap to measure on the input. Measured on the 2-core test machine
(shapely 2.2, GEOS 3.14): star polygons (every edge crosses most others) take
1.36 s at 51 vertices and 3.9 s at 71 (cubic; 225 s at 301 in the review);
2,000 nested squares in one MultiPolygon take 6.6 s without a single crossing
edge; 500 overlapping squares 28 s; while a 20,000-vertex ring with one
self-intersection, the common producer mistake, repairs in 0.1 s. A vertex or
crossing cap would refuse the last or let one of the others through, and one
GEOS call cannot be interrupted from Python (shapely checks signals only
between the elements of a vectorised call). So the repair runs in a worker
process that is killed when it overruns: whatever the input, the caller gets an
answer within the budget, and the process's address space is capped so a
repair whose output explodes fails instead of swapping the host.

The enrich stage's diff expiry (a symmetric difference) runs here too: two
valid shapes can cost as much (two interleaved combs of 800 teeth: 71 s).

Workers are started on first use and reused (a start costs ~0.3 s of imports,
not counted in the budget); a killed worker is replaced on the next repair.
Each thread that repairs at the same time gets a worker of its own, so
concurrent ingress requests do not queue behind one another's repairs.
"""

from __future__ import annotations

import atexit
import os
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

__all__ = ["RepairOverBudget", "make_valid_within", "symmetric_difference_within", "union_within"]

# The worker's address-space cap. A repair at the budget stays far below it
# (a 71-vertex star's repair peaks at ~90 MiB of RSS in the worker); an
# output that explodes hits it and the repair is refused.
WORKER_MEMORY_BYTES = 1 << 30
_HEADER = struct.Struct(">cI")  # status (b"O" ok, b"E" error, b"M" memory), payload length
_REQUEST = struct.Struct(">cI")  # operation (see _OPERATIONS), payload length
_START_TIMEOUT_S = 60.0


class RepairOverBudget(Exception):
    """The repair did not finish within its budget (or broke the memory cap)."""


class _Worker:
    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tilepipe.repair"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # stderr may be the DLQ file: never write into it
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        if self._read(1, time.monotonic() + _START_TIMEOUT_S) != b"R":
            self.kill()
            raise RuntimeError("the geometry repair worker did not start")

    def _read(self, n: int, deadline: float) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                return None
            chunk = os.read(self._out, n - got)
            if not chunk:
                return None  # the worker died (memory cap, crash)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def run(self, op: bytes, wkb: bytes, budget_s: float) -> tuple[bytes, bytes] | None:
        deadline = time.monotonic() + budget_s
        try:
            self._in.write(_REQUEST.pack(op, len(wkb)) + wkb)
            self._in.flush()
        except OSError:
            return None
        header = self._read(_HEADER.size, deadline)
        if header is None:
            return None
        status, size = _HEADER.unpack(header)
        payload = self._read(size, deadline)
        return None if payload is None else (status, payload)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


_idle: list[_Worker] = []
_all: set[_Worker] = set()
_lock = threading.Lock()


def _take() -> _Worker:
    with _lock:
        if _idle:
            return _idle.pop()
    worker = _Worker()
    with _lock:
        _all.add(worker)
    return worker


def _discard(worker: _Worker) -> None:
    worker.kill()
    with _lock:
        _all.discard(worker)


@atexit.register
def _shutdown() -> None:
    with _lock:
        workers = list(_all)
        _all.clear()
        _idle.clear()
    for worker in workers:
        worker.kill()


def make_valid_within(geom: BaseGeometry, budget_s: float) -> BaseGeometry:
    """``shapely.make_valid(geom)``, or :class:`RepairOverBudget` after ``budget_s``
    seconds (or when the repair needs over ``WORKER_MEMORY_BYTES``)."""
    return _run(b"V", geom, budget_s)


def symmetric_difference_within(a: BaseGeometry, b: BaseGeometry, budget_s: float) -> BaseGeometry:
    """``shapely.symmetric_difference(a, b)`` under the same budget. Two valid
    shapes can cost as much as a repair: two interleaved combs of 800 teeth
    (3,200 vertices each) took 71 s and 6.4 million vertices out."""
    return _run(b"D", shapely.GeometryCollection([a, b]), budget_s)


def union_within(polygons: BaseGeometry, budget_s: float) -> BaseGeometry:
    """The union of the repaired parts of ``polygons`` (overlapping members of a
    collection, projected), under the same budget."""
    return _run(b"U", polygons, budget_s)


def _run(op: bytes, geom: BaseGeometry, budget_s: float) -> BaseGeometry:
    worker = _take()
    answer = worker.run(op, shapely.to_wkb(geom), budget_s)
    if answer is None:
        _discard(worker)  # still busy (or dead): it cannot be given more work
        raise RepairOverBudget(f"took over {budget_s:g} s")
    with _lock:
        _idle.append(worker)
    status, payload = answer
    if status == b"M":
        raise RepairOverBudget(f"repair needs over {WORKER_MEMORY_BYTES >> 20} MiB")
    if status != b"O":
        raise shapely.errors.GEOSException(payload.decode("utf-8", "replace"))
    return shapely.from_wkb(payload)


def _serve() -> None:
    """The worker: operation + WKB in, status + WKB out, until stdin closes."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b"R")
    stdout.flush()
    while header := stdin.read(_REQUEST.size):
        op, size = _REQUEST.unpack(header)
        wkb = stdin.read(size)
        try:
            out, status = shapely.to_wkb(_OPERATIONS[op](shapely.from_wkb(wkb))), b"O"
        except MemoryError:  # over the address-space cap
            out, status = b"", b"M"
        except Exception as e:  # GEOS errors go back to the caller
            out, status = f"{type(e).__name__}: {e}".encode()[:1000], b"E"
        stdout.write(_HEADER.pack(status, len(out)) + out)
        stdout.flush()


def _difference(pair: BaseGeometry) -> BaseGeometry:
    a, b = shapely.get_parts(pair)
    return shapely.symmetric_difference(a, b)


def _union(polygons: BaseGeometry) -> BaseGeometry:
    return shapely.union_all(shapely.make_valid(shapely.get_parts(polygons)))


_OPERATIONS = {b"V": shapely.make_valid, b"D": _difference, b"U": _union}


if __name__ == "__main__":
    _serve()
