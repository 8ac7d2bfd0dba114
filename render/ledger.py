"""The job ledger in PostgreSQL: what happened to every render job, durably.

One row per job in ``render_jobs`` (state, attempts, worker, timestamps,
error, result) and one row per state change in ``render_job_history``
(append-only, for audits and "completed exactly once" checks). The table
``render_tiles`` holds the version committed for every tile, so a late job
for an older version never overwrites a newer tile.

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
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS render_jobs_state_idx ON render_jobs (state, updated_at);
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
CREATE TABLE IF NOT EXISTS render_tiles (
    tms          text NOT NULL,
    z            integer NOT NULL,
    x            bigint NOT NULL,
    y            bigint NOT NULL,
    vkey         numeric[] NOT NULL,
    version      text NOT NULL,
    job_key      text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tms, z, x, y)
);
"""


class LedgerError(RuntimeError):
    """The ledger database cannot be reached or used."""


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

    def __init__(self, dsn: str, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
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
        """
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO render_jobs"
                " (job_key, tms, z, x, y, version, state, attempts, worker, started_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'IN_PROGRESS', 1, %s, now())"
                " ON CONFLICT (job_key) DO UPDATE SET state = 'IN_PROGRESS',"
                "   attempts = render_jobs.attempts + 1, worker = EXCLUDED.worker,"
                "   started_at = now(), updated_at = now()"
                " WHERE render_jobs.state IN ('QUEUED', 'IN_PROGRESS', 'FAILED')"
                " RETURNING attempts",
                (job.key, job.tms, job.z, job.x, job.y, _version_text(job), worker),
            ).fetchone()
            if row is None:
                return None
            self._history(job.key, JobState.IN_PROGRESS, row[0], worker, None)
            return int(row[0])

    def commit(
        self, job: RenderJob, attempt: int, worker: str, commit_tile: Callable[[], str]
    ) -> str | None:
        """Commit the job's tile exactly once and mark it COMPLETED, in one transaction.

        ``commit_tile`` moves the staged tile into the store and returns its
        location; it runs while the job's row is locked and only if this
        worker still holds the job (its attempt is the latest) and no newer
        version of the tile was committed. An equal version commits: it is another
        release at that version number (another feature's) or a region re-render, and
        the job key already keeps one release from committing twice. Returns the result
        (the location, or ``superseded by ...``), or None if another worker owns the job now.
        If ``commit_tile`` raises, nothing is recorded and the error propagates.
        """
        with self.conn.transaction():
            if not self._lock_if_owned(job, attempt):
                return None
            newer = self.conn.execute(
                "INSERT INTO render_tiles AS t (tms, z, x, y, vkey, version, job_key)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tms, z, x, y) DO UPDATE SET vkey = EXCLUDED.vkey,"
                "   version = EXCLUDED.version, job_key = EXCLUDED.job_key, committed_at = now()"
                " WHERE t.vkey <= EXCLUDED.vkey"
                " RETURNING 1",
                (job.tms, job.z, job.x, job.y, list(job.vkey), _version_text(job), job.key),
            ).fetchone()
            if newer is None:
                current = self.conn.execute(
                    "SELECT version FROM render_tiles WHERE tms = %s AND z = %s AND x = %s"
                    " AND y = %s",
                    (job.tms, job.z, job.x, job.y),
                ).fetchone()
                result = f"superseded by version {current[0] if current else '?'}"
            else:
                result = commit_tile()
            self._finish(job.key, JobState.COMPLETED, attempt, worker, None, result)
            return result

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
            if not self._lock_if_owned(job, attempt):
                return False
            self._finish(job.key, state, attempt, worker, error, result)
            return True

    def _lock_if_owned(self, job: RenderJob, attempt: int) -> bool:
        """In a transaction: lock the job's row; whether ``attempt`` still owns the job.

        A worker that stalled past its SLA finds its attempt superseded by the reclaim.
        """
        row = self.conn.execute(
            "SELECT state, attempts FROM render_jobs WHERE job_key = %s FOR UPDATE", (job.key,)
        ).fetchone()
        return row is not None and row[0] == JobState.IN_PROGRESS.value and row[1] == attempt

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
        self, key: str, state: JobState, attempt: int, worker: str, error: str | None
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
