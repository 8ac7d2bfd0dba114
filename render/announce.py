"""``tile_updated`` after the commit: what the render worker tells clients, and when.

A job from the dataflow carries its trigger's ``tile_updated`` and the order
keys of the objects it applied; :class:`CommitAnnouncer` publishes them through
the tile store's forward-only compare-and-set (:mod:`tilepipe.store`) once the tile is in the
store (``on_committed``), so a client never refetches before the new tile is
there, and a version is never announced twice or backwards. A region job's
tile has no new version: it is announced with a plain ``PUBLISH`` of a
``tile_updated`` whose ``hash`` is new (the job key's head), with
``rerender`` naming the region job, and it leaves the stored latest message
alone.
"""

from __future__ import annotations

import orjson

from render import metrics
from render.jobs import RenderJob
from tilepipe.store import RedisTarget, TileStore
from tilepipe.tiles import tile_bounds_lonlat
from tilepipe.timeutil import format_rfc3339_ms, now_ms


class CommitAnnouncer:
    """Thread-safe (the Redis client pools connections); one per process."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        self.broadcaster = TileStore(target)

    def __call__(self, job: RenderJob, result: str) -> None:
        if job.broadcast is not None:
            msg = orjson.loads(job.broadcast)["msg"]
            key = self.target.key_of(job.tms, job.z, job.x, job.y)
            (published,) = self.broadcaster.publish_prepared(
                [(key, list(job.objects), orjson.dumps(msg))]
            )
            metrics.BROADCASTS.labels("published" if published == 1 else "suppressed").inc()
            return
        msg = {
            "type": "tile_updated", "tms": job.tms, "z": job.z, "x": job.x, "y": job.y,
            "version": job.version, "hash": job.key[:16],
            "bbox": list(tile_bounds_lonlat(job.z, job.x, job.y)),
            "ts": format_rfc3339_ms(int(now_ms())), "rerender": job.origin or None,
        }  # fmt: skip
        self.broadcaster.client.execute_command(
            self.target.mode.upper(), self.target.channel, orjson.dumps(msg)
        )
        metrics.BROADCASTS.labels("published").inc()

    def close(self) -> None:
        self.broadcaster.close()
