"""Render jobs against real Redis and PostgreSQL: duplicates render once, a worker killed
mid-job leaves no partial tile and its job completes once after reclaim, a stale worker
cannot commit over a reclaim, a failing renderer retries to DEAD, the circuit breaker
degrades and recovers, and a pool of threads drains a queue into MBTiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from operators.coalesce import update_hash
from render.announce import CommitAnnouncer
from render.invalidate import CacheInvalidator, Purger
from render.jobs import RenderJob
from render.ledger import JobState, Ledger
from render.pool import RenderPool
from render.queue import RenderQueue
from render.renderers import BuiltinRenderer, CommandRenderer, RenderError
from render.settings import RenderSettings
from render.stores import DirectoryStore, MBTilesStore, TileStore, validate_tile
from render.worker import CircuitBreaker, RenderWorker, WorkerConfig
from tests.support.tileserver import TileServer
from tilepipe.records import TileUpdate
from tilepipe.retry import RetryPolicy
from tilepipe.store import RedisTarget
from tilepipe.versions import order_key, version_key

pytestmark = pytest.mark.integration

TMS = "WebMercatorQuad"


@pytest.fixture
def queue(redis_url: str) -> Iterator[RenderQueue]:
    client = redis.Redis.from_url(redis_url)
    q = RenderQueue(client, prefix=f"tilepipe-test-{uuid.uuid4().hex[:8]}")
    q.ensure_group()
    yield q
    client.delete(q.stream, q.retry_key, q.dead_key)
    client.close()


class CountingRenderer(BuiltinRenderer):
    def __init__(self, fail_first: int = 0) -> None:
        super().__init__()
        self.calls = 0
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes:
        with self._lock:
            self.calls += 1
            failing = self.calls <= self.fail_first
        if failing:
            raise RenderError("upstream tile server answered 503")
        return super().render(job)


def make_worker(
    queue: RenderQueue,
    ledger_dsn: str,
    store: TileStore,
    renderer: object,
    name: str = "w1",
    breaker: CircuitBreaker | None = None,
    purge_url: str | None = None,
    **config: object,
) -> RenderWorker:
    cfg = WorkerConfig(name=name, sla_s=1.0, poll_s=0.05, backoff=RetryPolicy(0.01, 0.05))
    for k, v in config.items():
        setattr(cfg, k, v)
    return RenderWorker(
        cfg,
        queue,
        Ledger(ledger_dsn),
        renderer,  # type: ignore[arg-type]
        store,
        breaker or CircuitBreaker(100, 60),
        CacheInvalidator(
            queue.client,
            "tilecache-test:{z}:{x}:{y}",
            Purger(purge_url, timeout_s=2) if purge_url else None,
        ),
    )


def drain(worker: RenderWorker, done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout}s: {worker.outcomes}"
        worker.step()


def completed_once(ledger: Ledger, key: str) -> bool:
    return [h[0] for h in ledger.history(key)].count("COMPLETED") == 1


def test_duplicate_triggers_render_once(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "tiles")
    renderer = CountingRenderer()
    worker = make_worker(queue, ledger_dsn, store, renderer)
    job = RenderJob(TMS, 14, 8805, 5376, 34, hash="77a8a0d93d78aa13")
    same = RenderJob(TMS, 14, 8805, 5376, "34.0", hash="77a8a0d93d78aa13")
    worker.ledger.queued([job])
    assert queue.enqueue([job, same]) == [True, False]
    assert queue.enqueue([job]) == [False]
    assert queue.depth() == 1
    queue.client.set("tilecache-test:14:8805:5376", b"old tile")

    drain(worker, lambda: queue.depth() == 0)
    record = worker.ledger.get(job.key)
    assert record is not None and record.state is JobState.COMPLETED and record.attempts == 1
    assert renderer.calls == 1
    tile = store.read(14, 8805, 5376)
    assert tile is not None
    validate_tile(tile, "png")
    assert record.result == str(store.path(14, 8805, 5376))
    assert queue.client.get("tilecache-test:14:8805:5376") is None  # invalidated after commit
    assert worker.invalidator.counts["hit"] == 1

    # The dedup marker gone (expired, or Redis lost it): the ledger still says done.
    queue.client.delete(queue.dedup_prefix + job.key)
    assert queue.enqueue([same]) == [True]
    drain(worker, lambda: queue.depth() == 0)
    assert renderer.calls == 1
    assert worker.outcomes == {"completed": 1, "skipped": 1}
    assert completed_once(worker.ledger, job.key)


@pytest.mark.parametrize("kind", ["dir", "mbtiles"])
def test_an_older_version_never_overwrites_a_newer_tile(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path, kind: str
) -> None:
    store: TileStore = (
        DirectoryStore(tmp_path / "tiles")
        if kind == "dir"
        else MBTilesStore(tmp_path / "t.mbtiles")
    )
    worker = make_worker(queue, ledger_dsn, store, CountingRenderer())
    new, old = RenderJob(TMS, 5, 1, 2, "2.1"), RenderJob(TMS, 5, 1, 2, "2")
    queue.enqueue([new])
    drain(worker, lambda: queue.depth() == 0)
    committed = store.read(5, 1, 2)
    queue.enqueue([old])
    drain(worker, lambda: queue.depth() == 0)
    assert store.read(5, 1, 2) == committed
    record = worker.ledger.get(old.key)
    assert record is not None and record.state is JobState.COMPLETED
    assert (record.result or "").startswith("superseded")
    # The superseded job's staged tile is discarded, not left behind (M3).
    if isinstance(store, DirectoryStore):
        assert store.staged_files() == []
    else:
        assert store.db.execute("SELECT count(*) FROM tilepipe_staging").fetchone() == (0,)


def feature_job(obj: str, version: int, ts_ms: int, z: int = 14, x: int = 8805, y: int = 5376):
    """The render job the dataflow enqueues for one feature's update of one tile."""
    objects = ((f"feature:s:{obj}", order_key(version_key(version), ts_ms)),)
    update = TileUpdate(
        f"{z}:q",
        TMS,
        z,
        x,
        y,
        version,
        objects,
        update_hash(TMS, z, x, y, objects),
        ts_ms,
        ts_ms,
        ts_ms,
        1,
        1,
        None,
    )
    return RenderJob.from_update(update, ts_ms)  # fmt: skip


def test_versions_are_compared_per_object_never_across_objects_of_a_tile(
    queue: RenderQueue, ledger_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """H3: feature A at v7 commits a tile, then feature B (its own counter) at v3 changes it:
    B's job is news, rendered, committed and announced, not "superseded by version 7"."""
    store = DirectoryStore(tmp_path / "tiles")
    worker = make_worker(queue, ledger_dsn, store, CountingRenderer())
    prefix = queue.stream.split(":render:")[0]
    target = RedisTarget(redis_url, channel=f"{prefix}:tile_updated", prefix=prefix)
    worker.on_committed = announcer = CommitAnnouncer(target)
    sub = queue.client.pubsub()
    sub.subscribe(target.channel)
    now = int(time.time() * 1000)
    a7, b3 = feature_job("A", 7, now), feature_job("B", 3, now + 1)
    try:
        for job in (a7, b3):
            queue.enqueue([job])
            drain(worker, lambda: queue.depth() == 0)
            record = worker.ledger.get(job.key)
            assert record is not None and record.state is JobState.COMPLETED
            assert record.result == str(store.path(14, 8805, 5376)), record.result
        # A replay of A's older v5 still has nothing new: superseded, not announced.
        a5 = feature_job("A", 5, now - 1)
        queue.enqueue([a5])
        drain(worker, lambda: queue.depth() == 0)
        assert (worker.ledger.get(a5.key).result or "").startswith("superseded")  # type: ignore[union-attr]
        announced = []
        while (m := sub.get_message(timeout=0.5)) is not None:
            if m["type"] == "message":
                announced.append(json.loads(m["data"])["version"])
    finally:
        sub.close()
        announcer.close()
    assert announced == [7, 3]
    assert store.staged_files() == []
    assert worker.outcomes == {"completed": 3}


def test_at_an_equal_version_an_older_render_never_replaces_a_newer_one(
    ledger_dsn: str,
) -> None:
    """M11: two region re-renders of a tile at one version start in one order and commit in
    the other; the render that started later stays in the store."""
    first, second = Ledger(ledger_dsn), Ledger(ledger_dsn)
    early = RenderJob(TMS, 9, 100, 200, 4, origin="rj_early")
    late = RenderJob(TMS, 9, 100, 200, 4, origin="rj_late")
    moved: list[str] = []
    try:
        a_early = first.start(early, "w1")
        a_late = second.start(late, "w2")
        assert a_early == a_late == 1
        late_done = second.commit(late, 1, "w2", lambda: moved.append("late") or "late")
        early_done = first.commit(early, 1, "w1", lambda: moved.append("early") or "early")
        assert moved == ["late"]  # the earlier render was not moved over the later one
        assert late_done is not None and late_done.committed and late_done.result == "late"
        assert early_done is not None and not early_done.committed
        assert early_done.result.startswith("covered by the later render of job " + late.key)
        assert first.get(early.key).state is JobState.COMPLETED  # type: ignore[union-attr]
    finally:
        first.close()
        second.close()


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_worker_killed_mid_job_leaves_no_partial_tile_and_the_job_completes_once(
    queue: RenderQueue, ledger_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """A real `tilepipe render-worker` process is killed (SIGKILL) while it renders."""
    tiles = tmp_path / "tiles"
    env = {
        **os.environ,
        "TILEPIPE_RENDER_REDIS": redis_url,
        "TILEPIPE_RENDER_PREFIX": queue.stream.split(":render:")[0],
        "TILEPIPE_RENDER_LEDGER": ledger_dsn,
        "TILEPIPE_RENDER_STORE": f"dir:{tiles}",
        "TILEPIPE_RENDER_DELAY": "60s",  # the render the kill interrupts
        "TILEPIPE_RENDER_WORKERS": "1",
        "TILEPIPE_RENDER_POLL": "100ms",
        "TILEPIPE_RENDER_WORKER_NAME": "doomed",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilepipe", "render-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ledger = Ledger(ledger_dsn)
    job = RenderJob(TMS, 10, 550, 335, 7)
    try:
        queue.enqueue([job])

        def in_progress() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            rec = ledger.get(job.key)
            return rec is not None and rec.state is JobState.IN_PROGRESS

        _wait(in_progress, 20, "the worker to start the job")
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
    store = DirectoryStore(tiles)
    assert store.read(10, 550, 335) is None
    assert not any(p.suffix == ".png" for p in tiles.rglob("*.png") if ".staging" not in p.parts)
    record = ledger.get(job.key)
    assert record is not None and record.state is JobState.IN_PROGRESS
    assert record.worker == "doomed-0" and record.attempts == 1

    rescuer = make_worker(queue, ledger_dsn, store, CountingRenderer(), name="rescuer", sla_s=0.5)
    drain(rescuer, lambda: queue.depth() == 0)
    record = ledger.get(job.key)
    assert record is not None and record.state is JobState.COMPLETED
    assert record.attempts == 2 and record.worker == "rescuer"
    assert [(h[0], h[2]) for h in ledger.history(job.key)] == [
        ("IN_PROGRESS", "doomed-0"),
        ("IN_PROGRESS", "rescuer"),
        ("COMPLETED", "rescuer"),
    ]
    tile = store.read(10, 550, 335)
    assert tile is not None
    validate_tile(tile, "png")
    assert store.staged_files() == []
    ledger.close()


class GatedRenderer(BuiltinRenderer):
    """Renders only when the test opens the gate: a worker 'stalled' past its SLA."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def render(self, job: RenderJob, stop: threading.Event | None = None) -> bytes:
        self.entered.set()
        assert self.gate.wait(20)
        return super().render(job)


def test_a_stalled_worker_that_wakes_up_after_a_reclaim_cannot_commit(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    store = MBTilesStore(tmp_path / "tiles.mbtiles")
    job = RenderJob(TMS, 8, 10, 20, 3)
    queue.enqueue([job])
    gated = GatedRenderer()
    slow = make_worker(
        queue, ledger_dsn, MBTilesStore(tmp_path / "tiles.mbtiles"), gated, name="slow"
    )
    t = threading.Thread(target=slow.step)
    t.start()
    try:
        assert gated.entered.wait(10)
        fast = make_worker(queue, ledger_dsn, store, CountingRenderer(), name="fast", sla_s=0.3)
        drain(fast, lambda: fast.outcomes["completed"] == 1)
    finally:
        gated.gate.set()
        t.join(20)
    assert slow.outcomes == {"lost": 1}
    assert completed_once(fast.ledger, job.key)
    assert store.db.execute("SELECT count(*) FROM tilepipe_staging").fetchone() == (0,)
    assert store.read(8, 10, 20) is not None
    assert queue.depth() == 0


def test_a_lost_worker_never_acknowledges_the_entry_its_reclaimer_owns(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    """M2: w1 stalls, w2 reclaims the same entry and starts attempt 2, then dies. w1's
    lost commit must leave the entry pending for a third worker, not XACK and XDEL it."""
    store = DirectoryStore(tmp_path / "tiles")
    job = RenderJob(TMS, 8, 11, 21, 3)
    queue.enqueue([job])
    gated = GatedRenderer()
    slow = make_worker(queue, ledger_dsn, store, gated, name="slow")
    t = threading.Thread(target=slow.step)
    t.start()
    doomed = Ledger(ledger_dsn)
    try:
        assert gated.entered.wait(10)
        [d2] = queue.reclaim("doomed", min_idle_ms=0)
        assert doomed.start(d2.job, "doomed") == 2  # ... and then it dies
    finally:
        gated.gate.set()
        t.join(20)
        doomed.close()
    assert slow.outcomes == {"lost": 1}
    pending = queue.client.xpending(queue.stream, queue.GROUP)
    assert pending["pending"] == 1 and queue.client.xlen(queue.stream) == 1
    assert store.staged_files() == []
    rescuer = make_worker(queue, ledger_dsn, store, CountingRenderer(), name="rescuer", sla_s=0.3)
    drain(rescuer, lambda: queue.depth() == 0)
    record = rescuer.ledger.get(job.key)
    assert record is not None and record.state is JobState.COMPLETED
    assert completed_once(rescuer.ledger, job.key)
    assert store.read(8, 11, 21) is not None


def test_a_job_whose_queue_entry_was_lost_is_enqueued_again_by_the_sweep(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    """M2: a job IN_PROGRESS with no entry left (Redis lost it) is not stuck for ever."""
    job = RenderJob(TMS, 8, 12, 22, 3)
    queue.enqueue([job])
    [d] = queue.read("doomed", block_ms=1000)
    doomed = Ledger(ledger_dsn)
    assert doomed.start(d.job, "doomed") == 1
    doomed.close()
    queue.client.delete(queue.stream)  # a Redis restarted without its data
    queue.ensure_group()
    store = DirectoryStore(tmp_path / "tiles")
    worker = make_worker(queue, ledger_dsn, store, CountingRenderer(), sla_s=0.2)
    drain(worker, lambda: worker.outcomes["completed"] == 1, timeout=10)
    history = worker.ledger.history(job.key)
    assert [h[0] for h in history] == ["IN_PROGRESS", "QUEUED", "IN_PROGRESS", "COMPLETED"]
    assert "enqueued again: IN_PROGRESS" in (history[1][3] or "")
    assert store.read(8, 12, 22) is not None


def test_a_failing_renderer_retries_with_backoff_then_the_job_is_dead(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    renderer = CommandRenderer(["sh", "-c", "echo upstream 503 for {z}/{x}/{y} >&2; exit 1"])
    worker = make_worker(
        queue, ledger_dsn, DirectoryStore(tmp_path / "tiles"), renderer, max_attempts=3
    )
    job = RenderJob(TMS, 3, 4, 2, 1)
    queue.enqueue([job])
    drain(worker, lambda: bool(queue.dead_letters()))
    record = worker.ledger.get(job.key)
    assert record is not None and record.state is JobState.DEAD and record.attempts == 3
    assert "upstream 503 for 3/4/2" in (record.error or "")
    assert [h[0] for h in worker.ledger.history(job.key)] == [
        "IN_PROGRESS", "FAILED", "IN_PROGRESS", "FAILED", "IN_PROGRESS", "DEAD",
    ]  # fmt: skip
    (dead,) = queue.dead_letters()
    assert dead["job_key"] == job.key and dead["attempts"] == 3
    assert "upstream 503" in str(dead["error"])
    assert queue.depth() == 0
    assert worker.outcomes == {"retry": 2, "dead": 1}


def test_purge_goes_out_after_the_commit_and_a_failing_cache_fails_no_job(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "tiles")
    seen: dict[str, tuple[bool, str | None]] = {}
    observer = Ledger(ledger_dsn)

    def on_purge(path: str) -> None:  # what a cache refetching at this moment would find
        z, x, y = (int(p) for p in path.removesuffix(".png").strip("/").split("/"))
        record = observer.get(RenderJob(TMS, z, x, y, 1).key)
        seen[path] = (store.read(z, x, y) is not None, record.state.value if record else None)

    a, b = RenderJob(TMS, 11, 1, 1, 1), RenderJob(TMS, 11, 2, 1, 1)
    late = RenderJob(TMS, 11, 3, 1, 1, deadline_ms=int(time.time() * 1000) - 1)
    with TileServer(cached={"/11/1/1.png"}, on_purge=on_purge) as server:
        worker = make_worker(queue, ledger_dsn, store, CountingRenderer(),
                             purge_url=server.url + "/{z}/{x}/{y}.png")  # fmt: skip
        queue.enqueue([a, b, late])
        drain(worker, lambda: queue.depth() == 0)
        assert {r.path: r.status for r in server.sent("PURGE")} == {
            "/11/1/1.png": 200, "/11/2/1.png": 404, "/11/3/1.png": 404,
        }  # fmt: skip
        # Sent after the commit: the tile was in the store and the ledger said COMPLETED.
        assert seen["/11/1/1.png"] == seen["/11/2/1.png"] == (True, "COMPLETED")
        assert seen["/11/3/1.png"] == (False, "IN_PROGRESS")  # degraded: invalidate-only
        assert worker.ledger.get(late.key).state is JobState.DEGRADED  # type: ignore[union-attr]

        server.purge_status = 503  # the cache breaks: jobs still complete
        c = RenderJob(TMS, 11, 4, 1, 1)
        queue.enqueue([c])
        drain(worker, lambda: queue.depth() == 0)
    rec = worker.ledger.get(c.key)
    assert rec is not None and rec.state is JobState.COMPLETED
    assert worker.invalidator.purges == {"hit": 1, "miss": 2, "error": 1}
    assert worker.outcomes == {"completed": 3, "degraded": 1}
    observer.close()


def test_a_dead_job_still_invalidates_its_tile(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    renderer = CommandRenderer(["sh", "-c", "echo upstream 503 >&2; exit 1"])
    queue.client.set("tilecache-test:9:5:7", b"stale tile")
    with TileServer(cached={"/9/5/7.png"}) as server:
        worker = make_worker(queue, ledger_dsn, DirectoryStore(tmp_path / "tiles"), renderer,
                             purge_url=server.url + "/{z}/{x}/{y}.png", max_attempts=2)  # fmt: skip
        job = RenderJob(TMS, 9, 5, 7, 1)
        queue.enqueue([job])
        drain(worker, lambda: bool(queue.dead_letters()))
        # Only once, when it died: a failed attempt that will be retried invalidates nothing.
        assert [(r.path, r.status) for r in server.sent("PURGE")] == [("/9/5/7.png", 200)]
    assert queue.client.get("tilecache-test:9:5:7") is None  # the tile server renders on demand
    record = worker.ledger.get(job.key)
    assert record is not None and record.state is JobState.DEAD
    assert record.result == "invalidated (cache hit, purge hit)"
    (dead,) = queue.dead_letters()
    assert dead["invalidated"] == "cache hit, purge hit"
    assert worker.outcomes == {"retry": 1, "dead": 1}


def test_a_failing_renderer_degrades_to_invalidate_only_then_recovers(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "tiles")
    renderer = CountingRenderer(fail_first=2)
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=30, clock=lambda: now[0])
    worker = make_worker(queue, ledger_dsn, store, renderer, breaker=breaker, max_attempts=5)
    a, b, c, d = (RenderJob(TMS, 6, i, 9, 1) for i in range(4))
    queue.client.set("tilecache-test:6:0:9", b"stale")
    queue.enqueue([a, b])
    drain(worker, lambda: worker.outcomes["retry"] == 2)
    assert breaker.is_open
    # While the circuit is open the retries only invalidate: the tile server renders on demand.
    drain(worker, lambda: worker.outcomes["degraded"] == 2)
    for job in (a, b):
        rec = worker.ledger.get(job.key)
        assert rec is not None and rec.state is JobState.DEGRADED and rec.attempts == 2
        assert rec.error == "renderer circuit open" and rec.result == "invalidated"
        assert store.read(job.z, job.x, job.y) is None
    assert queue.client.get("tilecache-test:6:0:9") is None
    assert renderer.calls == 2

    now[0] = 31  # after the cooldown one trial render goes through, succeeds, closes the circuit
    queue.enqueue([c, d])
    drain(worker, lambda: queue.depth() == 0)
    assert not breaker.is_open
    for job in (c, d):
        rec = worker.ledger.get(job.key)
        assert rec is not None and rec.state is JobState.COMPLETED and rec.attempts == 1
        assert store.read(job.z, job.x, job.y) is not None
    assert renderer.calls == 4
    assert worker.outcomes == {"retry": 2, "degraded": 2, "completed": 2}


def test_a_pool_of_threads_drains_the_queue_into_mbtiles(
    queue: RenderQueue, ledger_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    settings = RenderSettings(
        redis=redis_url,
        prefix=queue.stream.split(":render:")[0],
        ledger=ledger_dsn,
        store=f"mbtiles:{tmp_path / 'tiles.mbtiles'}",
        workers=4,
        poll="100ms",
    )
    pool = RenderPool(settings)
    jobs = [RenderJob(TMS, 12, 2000 + i % 10, 1300 + i // 10, 1) for i in range(60)]
    queue.enqueue(jobs + jobs)
    stop = threading.Event()
    t = threading.Thread(target=lambda: setattr(pool, "totals", pool.run(stop)))
    t.start()
    ledger = Ledger(ledger_dsn)
    try:
        _wait(lambda: ledger.counts()["COMPLETED"] == 60, 30, "60 completed jobs")
    finally:
        stop.set()
        t.join(10)
    assert pool.totals == {"completed": 60}  # type: ignore[attr-defined]
    store = MBTilesStore(tmp_path / "tiles.mbtiles")
    assert store.db.execute("SELECT count(*) FROM tiles").fetchone() == (60,)
    assert queue.depth() == 0
    with psycopg.connect(ledger_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM render_tiles").fetchone() == (60,)
    ledger.close()


def test_a_worker_survives_its_stream_being_deleted(
    queue: RenderQueue, ledger_dsn: str, tmp_path: Path
) -> None:
    """A FLUSHDB or a Redis restarted empty takes the stream and group: carry on, not die."""
    store = DirectoryStore(tmp_path / "tiles")
    worker = make_worker(queue, ledger_dsn, store, CountingRenderer())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # blocked in XREADGROUP
        queue.client.delete(queue.stream)  # the blocked read ends with UNBLOCKED
        time.sleep(0.5)
        assert thread.is_alive(), "the worker thread died with the stream"
        job = RenderJob(TMS, 12, 2201, 1343, 1, hash="h-after-flush")
        worker.ledger.queued([job])
        assert queue.enqueue([job]) == [True]
        _wait(lambda: store.read(12, 2201, 1343) is not None, 20, "the job after the flush")
    finally:
        stop.set()
        thread.join(10)


def test_queue_state_is_bounded_markers_expire_in_hours_and_the_dead_list_is_capped(
    redis_url: str,
) -> None:
    """M12: the dedup marker lives hours, not 7 days (the ledger is the long-term dedup),
    and only the newest dead letters are kept."""
    client = redis.Redis.from_url(redis_url)
    queue = RenderQueue(client, prefix=f"tilepipe-test-{uuid.uuid4().hex[:8]}", dead_max=2)
    queue.ensure_group()
    try:
        jobs = [RenderJob(TMS, 7, i, 3, 1) for i in range(3)]
        queue.enqueue(jobs)
        assert 0 < client.ttl(queue.dedup_prefix + jobs[0].key) <= 6 * 3600
        for d in queue.read("c", count=3):
            assert queue.dead_letter(d, "upstream 503", 5)
        assert [dl["job_key"] for dl in queue.dead_letters()] == [j.key for j in jobs[1:]]
        assert queue.depth() == 0
    finally:
        client.delete(queue.stream, queue.retry_key, queue.dead_key)
        client.delete(*[queue.dedup_prefix + j.key for j in jobs])
        client.close()


def test_the_ledger_forgets_old_history_and_finished_jobs_but_not_a_regions(
    ledger_dsn: str,
) -> None:
    """M12: retention for render_job_history and finished render_jobs rows."""
    ledger = Ledger(ledger_dsn)
    old, recent, region_tile, running = (RenderJob(TMS, 6, i, 6, 1) for i in range(4))
    try:
        for job in (old, recent, region_tile, running):
            attempt = ledger.start(job, "w")
            assert attempt == 1
            if job is not running:
                assert ledger.commit(job, 1, "w", lambda: "somewhere") is not None
        ledger.conn.execute(
            "INSERT INTO render_region_tiles (region_id, job_key) VALUES ('rj_x', %s)",
            (region_tile.key,),
        )
        for job in (old, region_tile, running):
            ledger.conn.execute(
                "UPDATE render_jobs SET updated_at = now() - interval '40 days' WHERE job_key = %s",
                (job.key,),
            )
        ledger.conn.execute(
            "UPDATE render_job_history SET at = now() - interval '40 days' WHERE job_key = %s",
            (old.key,),
        )
        assert ledger.trim(30 * 86400) == (2, 1)
        assert ledger.get(old.key) is None and ledger.history(old.key) == []
        for job in (recent, region_tile, running):
            assert ledger.get(job.key) is not None
        assert len(ledger.history(recent.key)) == 2
    finally:
        ledger.close()


def test_only_the_consumer_owning_an_entry_settles_it(queue: RenderQueue) -> None:
    """M2, the mechanism under every ack, retry and dead letter (and _degrade's): after a
    reclaim the former owner's ack and retry are no-ops; its dead letter is still recorded
    (the ledger's fenced DEAD decided it) but the entry stays the new owner's."""
    job = RenderJob(TMS, 7, 9, 9, 1)
    queue.enqueue([job])
    [old] = queue.read("a", block_ms=1000)
    [new] = queue.reclaim("b", min_idle_ms=0)
    assert old.entry_id == new.entry_id
    assert not queue.ack(old)
    assert not queue.retry_later(old, 0)
    assert not queue.dead_letter(old, "gave up", 5)
    assert queue.client.zcard(queue.retry_key) == 0
    assert len(queue.dead_letters()) == 1
    assert queue.client.xpending(queue.stream, queue.GROUP)["pending"] == 1
    assert queue.ack(new)
    assert queue.depth() == 0
