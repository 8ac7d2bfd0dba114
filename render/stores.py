"""Tile stores with a two-phase commit: stage, validate, then move into place atomically.

A reader never sees a half-written tile. The directory store writes the tile
to ``{staging}/{job_key}.{attempt}.{ext}``, fsyncs it, reads it back to
validate it, and ``os.replace``s it to ``{root}/{z}/{x}/{y}.{ext}``, then
fsyncs the directory. The staging directory is outside the served tree (a tile
server must not serve half-done or discarded tiles) and on the same filesystem
(checked at startup: the rename is only atomic there); the file is created with
``O_EXCL | O_NOFOLLOW``, so a planted symlink is never written through. The
MBTiles store stages rows in a ``tilepipe_staging`` table and moves one into
``tiles`` in a single SQLite transaction. Staging is keyed by job key and
attempt: a stalled attempt and its reclaim never touch each other's staged
tile, and staging an attempt removes what earlier (crashed) attempts of the
same job left behind.
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

    def stage(self, job: RenderJob, data: bytes, attempt: int = 0) -> Staged: ...

    def commit(self, staged: Staged) -> str:
        """Move a staged tile into place atomically; returns where it now is."""
        ...

    def discard(self, staged: Staged) -> None: ...

    def read(self, z: int, x: int, y: int) -> bytes | None: ...

    def close(self) -> None: ...


def default_staging(root: Path) -> Path:
    """Beside the served tree, so on its volume: ``/srv/tilepipe/tiles`` stages in
    ``/srv/tilepipe/.tiles-staging``."""
    return root.parent / f".{root.name}-staging"


class DirectoryStore:
    """``{root}/{z}/{x}/{y}.{ext}``, as a static tile server serves them."""

    def __init__(
        self, root: str | Path, format: str = "png", staging: str | Path | None = None
    ) -> None:
        self.root = Path(root)
        self.format = format
        self.staging = Path(staging) if staging else default_staging(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        if self.staging.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(
                f"staging directory {self.staging} is inside the served tile tree {self.root}:"
                " set TILEPIPE_RENDER_STAGING to a directory beside it on the same volume"
            )
        if os.stat(self.staging).st_dev != os.stat(self.root).st_dev:
            raise ValueError(
                f"staging directory {self.staging} is not on the filesystem of {self.root}, so"
                " moving a tile in would not be atomic: mount the tile volume one level up"
                " (e.g. /srv/tilepipe, store dir:/srv/tilepipe/tiles) or set"
                " TILEPIPE_RENDER_STAGING to a directory on the tile volume"
            )

    def path(self, z: int, x: int, y: int) -> Path:
        return self.root / str(z) / str(x) / f"{y}.{self.format}"

    def stage(self, job: RenderJob, data: bytes, attempt: int = 0) -> Staged:
        validate_tile(data, self.format)
        for old in self.staging.glob(f"{job.key}.*.{self.format}"):
            if _attempt_of(old.name.split(".")[1]) < attempt:  # a crashed attempt's leftover
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
        path = self.staging / f"{job.key}.{attempt}.{self.format}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o644)
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


def _attempt_of(text: str) -> int:
    return int(text) if text.isdigit() else -1


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

    def stage(self, job: RenderJob, data: bytes, attempt: int = 0) -> Staged:
        validate_tile(data, self.format)
        row = (1 << job.z) - 1 - job.y
        name = f"{job.key}.{attempt}"
        # Earlier (crashed) attempts' rows go; a later attempt's row is that attempt's own.
        self.db.execute(
            "DELETE FROM tilepipe_staging WHERE job_key LIKE ? || '.%'"
            " AND CAST(substr(job_key, length(?) + 2) AS integer) < ?",
            (job.key, job.key, attempt),
        )
        self.db.execute(
            "INSERT OR REPLACE INTO tilepipe_staging VALUES (?, ?, ?, ?, ?)",
            (name, job.z, job.x, row, data),
        )
        (back,) = self.db.execute(
            "SELECT tile_data FROM tilepipe_staging WHERE job_key = ?", (name,)
        ).fetchone()
        validate_tile(back, self.format)
        return Staged(job, name)

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


def build_store(spec: str, format: str = "png", staging: str | None = None) -> TileStore:
    """A store from its spec: ``dir:PATH`` (staging in ``staging``) or ``mbtiles:PATH``."""
    kind, _, path = spec.partition(":")
    if not path:
        raise ValueError(f"store {spec!r}: expected dir:PATH or mbtiles:PATH")
    if kind == "dir":
        return DirectoryStore(path, format, staging)
    if kind == "mbtiles":
        return MBTilesStore(path, format)
    raise ValueError(f"store {spec!r}: unknown kind {kind!r}; use dir:PATH or mbtiles:PATH")
