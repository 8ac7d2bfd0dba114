"""Reading the render store, and only reading it.

The render worker owns the store's layout for writing (``render.stores``: staging,
fsync, atomic moves); the tile server needs two things of it, a tile's bytes and which
committed version they are, and must never create or change anything there. So it reads
through this small interface, not through ``render.stores`` (whose constructors create
staging areas and open the database for writing).

- :class:`DirectoryReader`: ``{root}/{z}/{x}/{y}.{format}``. A file is replaced with
  ``os.replace``, so a read sees the whole old tile or the whole new one.
- :class:`MBTilesReader`: the ``tiles`` table, opened read-only (``mode=ro``); WAL lets
  it read while a worker commits. One connection per thread.
- :class:`LedgerVersions`: the committed version of a tile from the ledger's
  ``render_tiles`` table, which the worker writes in the same transaction that decides
  the commit, after the tile is in place (``render.ledger.Ledger.commit``).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from render.jobs import job_key
from tilepipe.versions import VersionKey


class TileReader(Protocol):
    def read(self, z: int, x: int, y: int) -> bytes | None: ...

    def check(self) -> None:
        """Raise ``OSError`` unless the store can be read."""
        ...

    def close(self) -> None: ...


class DirectoryReader:
    def __init__(self, root: str | Path, format: str) -> None:
        self.root = Path(root)
        self.format = format

    def read(self, z: int, x: int, y: int) -> bytes | None:
        try:
            return (self.root / str(z) / str(x) / f"{y}.{self.format}").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def check(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"{self.root} is not a directory")

    def close(self) -> None:
        """Nothing held open."""


class MBTilesReader:
    def __init__(self, path: str | Path, format: str) -> None:
        self.path = Path(path)
        self.format = format
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False
            )
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def read(self, z: int, x: int, y: int) -> bytes | None:
        try:
            row = (
                self._db()
                .execute(
                    "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ?"
                    " AND tile_row = ?",
                    (z, x, (1 << z) - 1 - y),
                )
                .fetchone()
            )
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None  # a worker has not created the schema yet
            raise
        return None if row is None else bytes(row[0])

    def check(self) -> None:
        if not self.path.is_file():
            raise OSError(f"{self.path} does not exist (has a render worker opened it yet?)")
        self._db().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()


def open_reader(spec: str, format: str) -> TileReader:
    kind, _, path = spec.partition(":")
    if kind == "dir":
        return DirectoryReader(path, format)
    if kind == "mbtiles":
        return MBTilesReader(path, format)
    raise ValueError(f"store {spec!r}: expected dir:PATH or mbtiles:PATH")


@dataclass(frozen=True)
class Committed:
    """What the ledger says is in the store for one tile."""

    vkey: VersionKey
    version: str
    job_key: str

    def is_release(self, tms: str, z: int, x: int, y: int, vkey: VersionKey, hash_: str) -> bool:
        """Whether (version, hash) names exactly the committed release.

        A stream job's key is ``job_key(tile, version, hash)``, so the hash a client got in
        ``tile_updated`` recomputes it. A region re-render is announced with the head of its
        job key as its hash (``render.announce``), so that matches by prefix.
        """
        if vkey != self.vkey or not hash_:
            return False
        version = ".".join(map(str, vkey))
        return self.job_key == job_key(tms, z, x, y, version, hash_) or (
            len(hash_) >= 16 and self.job_key.startswith(hash_)
        )


class LedgerVersions:
    """``render_tiles`` lookups over a small connection pool."""

    def __init__(self, dsn: str) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True, "connect_timeout": 5},
            timeout=5,
            check=ConnectionPool.check_connection,
            open=False,
        )

    def open(self) -> None:
        self._pool.open(wait=True, timeout=10)

    def committed(self, tms: str, z: int, x: int, y: int) -> Committed | None:
        with self._pool.connection() as conn:
            try:
                row = conn.execute(
                    "SELECT vkey, version, job_key FROM render_tiles"
                    " WHERE tms = %s AND z = %s AND x = %s AND y = %s",
                    (tms, z, x, y),
                ).fetchone()
            except Exception as e:
                if "render_tiles" in str(e) and "does not exist" in str(e):
                    return None  # no worker has created the ledger's tables yet
                raise
        if row is None:
            return None
        return Committed(tuple(int(p) for p in row[0]), row[1], row[2])

    def check(self) -> None:
        with self._pool.connection() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._pool.close()
