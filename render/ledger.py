"""The job ledger in PostgreSQL: what happened to every render job, durably.

One row per job in ``render_jobs`` (state, attempts, worker, timestamps,
error, result) and one row per state change in ``render_job_history``
(append-only, for audits and "completed exactly once" checks). The table
``render_tiles`` holds, per tile, the order key committed for each object
(feature, sensor, the plain tile object ``""``) and the start sequence of the
render in the store, which decide what a commit may do (see :meth:`Ledger.commit`).

The ledger is the authority on what is done; the queue only says what might
still need doing. A worker *starts* a job by moving its row to IN_PROGRESS
and taking the returned attempt number as its fencing token; it *commits*
inside a transaction that locks the row and checks the token, so when a
stalled job is reclaimed, at most one of the two workers commits the tile,
and COMPLETED is written in the same transaction as the commit decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from render.jobs import RenderJob


class JobState(str, Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"  # this attempt failed; a retry is scheduled
    DEAD = "DEAD"


TERMINAL = (JobState.COMPLETED, JobState.DEGRADED, JobState.DEAD)

SCHEMA = """
CREATE TABLE IF NOT EXISTS render_jobs (
    job_key     text PRIMARY KEY,
    tms         text NOT NULL,
    z           integer NOT NULL,
    x           bigint NOT NULL,
    y           bigint NOT NULL,
    version     text NOT NULL,
    state       text NOT NULL CHECK (state IN
                  ('QUEUED', 'IN_PROGRESS', 'COMPLETED', 'DEGRADED', 'FAILED', 'DEAD')),
    attempts    integer NOT NULL DEFAULT 0,
    worker      text,
    error       text,
    result      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    start_seq   bigint,
    job         bytea
);
ALTER TABLE render_jobs ADD COLUMN IF NOT EXISTS start_seq bigint;
ALTER TABLE render_jobs ADD COLUMN IF NOT EXISTS job bytea;
CREATE INDEX IF NOT EXISTS render_jobs_state_idx ON render_jobs (state, updated_at);
CREATE SEQUENCE IF NOT EXISTS render_start_seq;
CREATE TABLE IF NOT EXISTS render_job_history (
    id      bigserial PRIMARY KEY,
    job_key text NOT NULL,
    state   text NOT NULL,
    attempt integer NOT NULL,
    worker  text,
    error   text,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS render_job_history_key_idx ON render_job_history (job_key);
CREATE INDEX IF NOT EXISTS render_job_history_at_idx ON render_job_history (at);
CREATE TABLE IF NOT EXISTS render_tiles (
    tms          text NOT NULL,
    z            integer NOT NULL,
    x            bigint NOT NULL,
    y            bigint NOT NULL,
    vkey         numeric[] NOT NULL,
    version      text NOT NULL,
    job_key      text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    start_seq    bigint NOT NULL DEFAULT 0,
    objects      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tms, z, x, y)
);
ALTER TABLE render_tiles ADD COLUMN IF NOT EXISTS start_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE render_tiles ADD COLUMN IF NOT EXISTS objects jsonb NOT NULL DEFAULT '{}';
"""


class LedgerError(RuntimeError):
    """The ledger database cannot be reached or used."""


@dataclass(frozen=True)
class Commit:
    """What :meth:`Ledger.commit` decided. ``committed``: ``commit_tile`` ran and the
    tile is in the store; otherwise the staged tile must be discarded. ``result`` is the
    location, ``superseded ...`` (nothing new: not announced) or ``covered ...`` (a render
    that started later is in the store already: announced, not stored again)."""

    committed: bool
    result: str


@dataclass(frozen=True)
class JobRecord:
    job_key: str
    tile: str
    version: str
    state: JobState
    attempts: int
    worker: str | None
    error: str | None
    result: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _version_text(job: RenderJob) -> str:
    return str(job.version)


class Ledger:
    """One connection; give each worker thread its own ``Ledger``."""

    def __init__(
        self, dsn: str, connect_timeout: float = 5.0, max_objects_per_tile: int = 1024
    ) -> None:
        self.dsn = dsn
        self.max_objects_per_tile = max_objects_per_tile
        try:
            self.conn = psycopg.connect(
                dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            )
        except psycopg.OperationalError as e:
            raise LedgerError(f"cannot connect to the ledger database: {_first_line(e)}") from e

    def close(self) -> None:
        self.conn.close()

    def create_schema(self) -> None:
        """Create the tables unless they exist; safe to run from many workers at once.

        ``CREATE TABLE IF NOT EXISTS`` alone races (two creators collide on
        the catalog), so creators queue on a transaction-scoped advisory lock.
        """
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('tilepipe.render.schema'))")
            self.conn.execute(SCHEMA)

    def queued(self, jobs: list[RenderJob]) -> None:
        """Record jobs as QUEUED; a job already known keeps its row."""
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO render_jobs (job_key, tms, z, x, y, version, state)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'QUEUED') ON CONFLICT (job_key) DO NOTHING",
                [(j.key, j.tms, j.z, j.x, j.y, _version_text(j)) for j in jobs],
            )

    def start(self, job: RenderJob, worker: str) -> int | None:
        """Move the job to IN_PROGRESS; its attempt number, or None if it is already done.

        The attempt number is the fencing token :meth:`commit` checks. A row
        the enqueuer never wrote is created here, so a worker never depends on it.
        Each start also draws the next ``render_start_seq``: which of two renders of one
        tile started later (and so saw the newer data) is decided by it. The job itself is
        kept with the row, so :meth:`sweep` can enqueue it again if its queue entry is lost.
        """
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO render_jobs (job_key, tms, z, x, y, version, state, attempts,"
                "   worker, started_at, start_seq, job)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'IN_PROGRESS', 1, %s, now(),"
                "   nextval('render_start_seq'), %s)"
                " ON CONFLICT (job_key) DO UPDATE SET state = 'IN_PROGRESS',"
                "   attempts = render_jobs.attempts + 1, worker = EXCLUDED.worker,"
                "   started_at = now(), updated_at = now(), start_seq = EXCLUDED.start_seq,"
                "   job = EXCLUDED.job"
                " WHERE render_jobs.state IN ('QUEUED', 'IN_PROGRESS', 'FAILED')"
                " RETURNING attempts",
                (job.key, job.tms, job.z, job.x, job.y, _version_text(job), worker,
                 job.encode()),
            ).fetchone()  # fmt: skip
            if row is None:
                return None
            self._history(job.key, JobState.IN_PROGRESS, row[0], worker, None)
            return int(row[0])

    def commit(
        self, job: RenderJob, attempt: int, worker: str, commit_tile: Callable[[], str]
    ) -> Commit | None:
        """Commit the job's tile at most once and mark it COMPLETED, in one transaction.

        Runs while the job's row and the tile's ``render_tiles`` row are locked, and only
        if this worker still holds the job (its attempt is the latest); None otherwise
        (another worker owns the job now). Then, per object as in the Redis store:

        - none of the job's objects is newer than what the tile already has: *superseded*
          (a replay, an old version; never a cross-object comparison: feature B's v3
          after feature A's v7 is news for B);
        - it has news (or is a region re-render, which names no object) and its render
          started after the one in the store: ``commit_tile`` moves the staged tile in;
        - it has news but the render in the store started later: *covered*. Renderers
          draw the tile from the data as it is when they start, so that later render
          already shows this job's change, and an earlier render must not replace it
          (equal versions included: the older render never wins). Its objects are
          recorded and the job is announced, but its tile is not stored.

        If ``commit_tile`` raises, nothing is recorded and the error propagates.
        """
        with self.conn.transaction():
            seq = self._lock_if_owned(job, attempt)
            if seq is None:
                return None
            self.conn.execute(
                "INSERT INTO render_tiles (tms, z, x, y, vkey, version, job_key)"
                " VALUES (%s, %s, %s, %s, '{}', '', '') ON CONFLICT DO NOTHING",
                (job.tms, job.z, job.x, job.y),
            )
            stored_seq, stored_version, stored_job, objects = self.conn.execute(
                "SELECT start_seq, version, job_key, objects FROM render_tiles"
                " WHERE tms = %s AND z = %s AND x = %s AND y = %s FOR UPDATE",
                (job.tms, job.z, job.x, job.y),
            ).fetchone() or (0, "", "", {})
            news = {o: k for o, k in job.objects if o not in objects or objects[o] < k}
            if job.objects and not news:
                result = Commit(False, f"superseded: the tile has every object of this job at"
                                       f" its version or newer (last commit: version"
                                       f" {stored_version})")  # fmt: skip
            elif seq > stored_seq:
                result = Commit(True, commit_tile())
                self.conn.execute(
                    "UPDATE render_tiles SET vkey = %s, version = %s, job_key = %s,"
                    " start_seq = %s, committed_at = now()"
                    " WHERE tms = %s AND z = %s AND x = %s AND y = %s",
                    (list(job.vkey), _version_text(job), job.key, seq,
                     job.tms, job.z, job.x, job.y),
                )  # fmt: skip
            else:
                result = Commit(
                    False,
                    f"covered by the later render of job {stored_job}"
                    f" (version {stored_version}) already in the store",
                )
            if news:
                self.conn.execute(
                    "UPDATE render_tiles SET objects = %s"
                    " WHERE tms = %s AND z = %s AND x = %s AND y = %s",
                    (Jsonb(self._trim({**objects, **news})), job.tms, job.z, job.x, job.y),
                )
            self._finish(job.key, JobState.COMPLETED, attempt, worker, None, result.result)
            return result

    def _trim(self, objects: dict[str, str]) -> dict[str, str]:
        """At most ``max_objects_per_tile`` objects: past it, forget the quarter whose last
        committed event is oldest (the event time ends each order key), as the Redis store
        does. A forgotten object's next job counts as news: one render too many, never a
        change lost."""
        cap = self.max_objects_per_tile
        if cap <= 0 or len(objects) <= cap:
            return objects
        by_time = sorted(objects.items(), key=lambda kv: kv[1].rpartition(" ")[2])
        return dict(by_time[len(objects) - cap * 3 // 4 :])

    def degraded(self, job: RenderJob, attempt: int, worker: str, reason: str) -> bool:
        """Record that the job was only invalidated, not rendered."""
        return self._transition(job, attempt, worker, JobState.DEGRADED, reason, "invalidated")

    def failed(self, job: RenderJob, attempt: int, worker: str, error: str) -> bool:
        return self._transition(job, attempt, worker, JobState.FAILED, error, None)

    def dead(
        self, job: RenderJob, attempt: int, worker: str, error: str, result: str | None = None
    ) -> bool:
        """Record that the job gave up; ``result`` says how its tile was invalidated."""
        return self._transition(job, attempt, worker, JobState.DEAD, error, result)

    def sweep(
        self,
        stalled_s: float,
        failed_s: float,
        requeue: Callable[[list[RenderJob]], None],
        limit: int = 100,
    ) -> int:
        """Enqueue again the jobs nobody is working on whose queue entry may be gone.

        A job IN_PROGRESS is restarted (``start``) by every reclaim, so one not restarted
        for ``stalled_s`` (a few SLAs) has no pending entry left: Redis lost it (a restart
        without AOF, a failover, a FLUSHDB), or a worker acknowledged it wrongly. A FAILED
        job waits in the retry set at most the longest back-off, hence ``failed_s``. Such
        rows go back to QUEUED (which also fences out any straggler still holding an
        attempt) and their jobs to ``requeue``, in the transaction that picks them, so a
        failed ``requeue`` leaves them for the next sweep. Concurrent sweepers skip each
        other's rows. How many were enqueued again.
        """
        with self.conn.transaction():
            rows = self.conn.execute(
                "SELECT job_key, job, attempts, state FROM render_jobs WHERE job IS NOT NULL"
                " AND ((state = 'IN_PROGRESS' AND updated_at < now() - make_interval(secs => %s))"
                "   OR (state = 'FAILED' AND updated_at < now() - make_interval(secs => %s)))"
                " ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (stalled_s, failed_s, limit),
            ).fetchall()
            if not rows:
                return 0
            requeue([RenderJob.decode(bytes(job)) for _key, job, _n, _state in rows])
            for key, _job, attempts, state in rows:
                self.conn.execute(
                    "UPDATE render_jobs SET state = 'QUEUED', updated_at = now()"
                    " WHERE job_key = %s",
                    (key,),
                )
                idle = stalled_s if state == JobState.IN_PROGRESS.value else failed_s
                why = f"enqueued again: {state} and untouched for {idle:.0f} s"
                self._history(key, JobState.QUEUED, attempts, None, why)
            return len(rows)

    def trim(self, retention_s: float, limit: int = 10_000) -> tuple[int, int]:
        """Forget history rows, and finished jobs, older than ``retention_s``; at most
        ``limit`` of each per call. ``(history rows, job rows)`` deleted.

        A finished job's row is the long-term dedup (``start`` refuses it), so it is kept
        as long as the history; after that a replay renders again at most, and the tile's
        per-object order keys refuse to commit or announce what it already has. Jobs of a
        region job are kept while the region is (its progress is counted from them).
        """
        age = "now() - make_interval(secs => %s)"
        history = self.conn.execute(
            "DELETE FROM render_job_history WHERE id IN (SELECT id FROM render_job_history"
            f" WHERE at < {age} ORDER BY at LIMIT %s)",
            (retention_s, limit),
        ).rowcount
        linked = ""
        if self.conn.execute("SELECT to_regclass('render_region_tiles')").fetchone() != (None,):
            linked = (" AND NOT EXISTS (SELECT 1 FROM render_region_tiles r"
                      " WHERE r.job_key = j.job_key)")  # fmt: skip
        jobs = self.conn.execute(
            "DELETE FROM render_jobs WHERE job_key IN (SELECT job_key FROM render_jobs j"
            f" WHERE state IN ('COMPLETED', 'DEGRADED', 'DEAD') AND updated_at < {age}"
            f"{linked} LIMIT %s)",
            (retention_s, limit),
        ).rowcount
        return history, jobs

    def get(self, job_key: str) -> JobRecord | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT job_key, tms || '/' || z || '/' || x || '/' || y AS tile, version,"
                " state, attempts, worker, error, result, created_at, updated_at, started_at,"
                " finished_at FROM render_jobs WHERE job_key = %s",
                (job_key,),
            ).fetchone()
        if row is None:
            return None
        row["state"] = JobState(row["state"])
        return JobRecord(**row)

    def history(self, job_key: str) -> list[tuple[str, int, str | None, str | None]]:
        """``(state, attempt, worker, error)`` of every change, oldest first."""
        rows = self.conn.execute(
            "SELECT state, attempt, worker, error FROM render_job_history"
            " WHERE job_key = %s ORDER BY id",
            (job_key,),
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs by state (every state present, zeros included)."""
        out = {s.value: 0 for s in JobState}
        for state, n in self.conn.execute(
            "SELECT state, count(*) FROM render_jobs GROUP BY state"
        ).fetchall():
            out[state] = int(n)
        return out

    def _transition(
        self,
        job: RenderJob,
        attempt: int,
        worker: str,
        state: JobState,
        error: str | None,
        result: str | None,
    ) -> bool:
        with self.conn.transaction():
            if self._lock_if_owned(job, attempt) is None:
                return False
            self._finish(job.key, state, attempt, worker, error, result)
            return True

    def _lock_if_owned(self, job: RenderJob, attempt: int) -> int | None:
        """In a transaction: lock the job's row; if ``attempt`` still owns the job, the
        start sequence of that attempt, else None.

        A worker that stalled past its SLA finds its attempt superseded by the reclaim.
        """
        row = self.conn.execute(
            "SELECT state, attempts, COALESCE(start_seq, 0) FROM render_jobs"
            " WHERE job_key = %s FOR UPDATE",
            (job.key,),
        ).fetchone()
        if row is None or row[0] != JobState.IN_PROGRESS.value or row[1] != attempt:
            return None
        return int(row[2])

    def _finish(
        self,
        key: str,
        state: JobState,
        attempt: int,
        worker: str,
        error: str | None,
        result: str | None,
    ) -> None:
        done = state in TERMINAL
        self.conn.execute(
            "UPDATE render_jobs SET state = %s, error = COALESCE(%s, error), result = %s,"
            " updated_at = now(), finished_at = CASE WHEN %s THEN now() END"
            " WHERE job_key = %s",
            (state.value, error, result, done, key),
        )
        self._history(key, state, attempt, worker, error)

    def _history(
        self, key: str, state: JobState, attempt: int, worker: str | None, error: str | None
    ) -> None:
        self.conn.execute(
            "INSERT INTO render_job_history (job_key, state, attempt, worker, error)"
            " VALUES (%s, %s, %s, %s, %s)",
            (key, state.value, attempt, worker, error),
        )


@contextmanager
def open_ledger(dsn: str) -> Iterator[Ledger]:
    ledger = Ledger(dsn)
    try:
        yield ledger
    finally:
        ledger.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
