"""Tile stores with a two-phase commit: stage, validate, then move into place atomically.

A reader never sees a half-written tile. The directory store writes the tile
to ``{root}/.staging/{job_key}.{ext}``, fsyncs it, reads it back to validate
it, and ``os.replace``s it to ``{root}/{z}/{x}/{y}.{ext}`` (same filesystem,
so the rename is atomic), then fsyncs the directory. The MBTiles store
stages rows in a ``tilepipe_staging`` table and moves one into ``tiles`` in
a single SQLite transaction. Staging is keyed by the job key, so a retry of a
crashed attempt simply overwrites what that attempt left behind.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from render.jobs import RenderJob

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class InvalidTile(ValueError):
    """Rendered bytes that must not reach the store."""


def validate_tile(data: bytes, fmt: str) -> None:
    """Raise :class:`InvalidTile` unless ``data`` is a complete tile of format ``fmt``."""
    if not data:
        raise InvalidTile("empty tile")
    if fmt == "png":
        if not data.startswith(PNG_SIGNATURE):
            raise InvalidTile("not a PNG (bad signature)")
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decodes every chunk: a truncated file fails here
        except (OSError, SyntaxError, ValueError) as e:
            raise InvalidTile(f"broken PNG: {e}") from None
    elif fmt in ("mvt", "pbf") and data[:2] == b"\x1f\x8b":
        try:
            gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InvalidTile(f"broken gzip: {e}") from None


@dataclass(frozen=True)
class Staged:
    job: RenderJob
    location: str  # where the staged bytes are (a path, or a staging row's job key)


class TileStore(Protocol):
    format: str

    def stage(self, job: RenderJob, data: bytes) -> Staged: ...

    def commit(self, staged: Staged) -> str:
        """Move a staged tile into place atomically; returns where it now is."""
        ...

    def discard(self, staged: Staged) -> None: ...

    def read(self, z: int, x: int, y: int) -> bytes | None: ...

    def close(self) -> None: ...


class DirectoryStore:
    """``{root}/{z}/{x}/{y}.{ext}``, as a static tile server serves them."""

    def __init__(self, root: str | Path, format: str = "png") -> None:
        self.root = Path(root)
        self.format = format
        self.staging = self.root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    def path(self, z: int, x: int, y: int) -> Path:
        return self.root / str(z) / str(x) / f"{y}.{self.format}"

    def stage(self, job: RenderJob, data: bytes) -> Staged:
        validate_tile(data, self.format)
        path = self.staging / f"{job.key}.{self.format}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        validate_tile(path.read_bytes(), self.format)  # what is on disk, not what we meant
        return Staged(job, str(path))

    def commit(self, staged: Staged) -> str:
        job = staged.job
        final = self.path(job.z, job.x, job.y)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.location, final)
        _fsync_dir(final.parent)
        return str(final)

    def discard(self, staged: Staged) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged.location)

    def read(self, z: int, x: int, y: int) -> bytes | None:
        try:
            return self.path(z, x, y).read_bytes()
        except FileNotFoundError:
            return None

    def staged_files(self) -> list[Path]:
        return sorted(self.staging.iterdir())

    def close(self) -> None:
        """Nothing held open: each stage and commit opens and closes its own files."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_MBTILES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS metadata (name text PRIMARY KEY, value text)",
    "CREATE TABLE IF NOT EXISTS tiles (zoom_level integer, tile_column integer,"
    " tile_row integer, tile_data blob, PRIMARY KEY (zoom_level, tile_column, tile_row))",
    "CREATE TABLE IF NOT EXISTS tilepipe_staging (job_key text PRIMARY KEY,"
    " zoom_level integer, tile_column integer, tile_row integer, tile_data blob)",
)


class MBTilesStore:
    """An MBTiles 1.3 file (SQLite); rows are TMS-addressed (``tile_row`` counts from the south)."""

    def __init__(self, path: str | Path, format: str = "png") -> None:
        self.path = Path(path)
        self.format = format
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One handle per worker, used by one thread at a time (possibly not its creator).
        self.db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("BEGIN IMMEDIATE")  # several processes may open one file at once
        try:
            for ddl in _MBTILES_SCHEMA:
                self.db.execute(ddl)
            self.db.execute(
                "INSERT OR IGNORE INTO metadata VALUES ('name', 'tilepipe'), ('format', ?)",
                (format,),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def stage(self, job: RenderJob, data: bytes) -> Staged:
        validate_tile(data, self.format)
        row = (1 << job.z) - 1 - job.y
        self.db.execute(
            "INSERT OR REPLACE INTO tilepipe_staging VALUES (?, ?, ?, ?, ?)",
            (job.key, job.z, job.x, row, data),
        )
        (back,) = self.db.execute(
            "SELECT tile_data FROM tilepipe_staging WHERE job_key = ?", (job.key,)
        ).fetchone()
        validate_tile(back, self.format)
        return Staged(job, job.key)

    def commit(self, staged: Staged) -> str:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute(
                "INSERT OR REPLACE INTO tiles SELECT zoom_level, tile_column, tile_row, tile_data"
                " FROM tilepipe_staging WHERE job_key = ?",
                (staged.location,),
            )
            if cur.rowcount != 1:
                raise InvalidTile(f"staged tile for job {staged.location} is missing")
            self.db.execute("DELETE FROM tilepipe_staging WHERE job_key = ?", (staged.location,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        job = staged.job
        return f"{self.path}#{job.z}/{job.x}/{job.y}"

    def discard(self, staged: Staged) -> None:
        self.db.execute("DELETE FROM tilepipe_staging WHERE job_key = ?", (staged.location,))

    def read(self, z: int, x: int, y: int) -> bytes | None:
        row = self.db.execute(
            "SELECT tile_data FROM tiles WHERE zoom_level = ? AND tile_column = ? AND tile_row = ?",
            (z, x, (1 << z) - 1 - y),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self.db.close()


def build_store(spec: str, format: str = "png") -> TileStore:
    """A store from its spec: ``dir:PATH`` or ``mbtiles:PATH``."""
    kind, _, path = spec.partition(":")
    if not path:
        raise ValueError(f"store {spec!r}: expected dir:PATH or mbtiles:PATH")
    if kind == "dir":
        return DirectoryStore(path, format)
    if kind == "mbtiles":
        return MBTilesStore(path, format)
    raise ValueError(f"store {spec!r}: unknown kind {kind!r}; use dir:PATH or mbtiles:PATH")
