"""Render jobs without services: job keys, the builtin renderer, validation, both stores,
the command renderer, back-off and the circuit breaker."""

from __future__ import annotations

import sys

import pytest

from render.jobs import RenderJob, job_key
from render.renderers import BuiltinRenderer, CommandRenderer, RenderError, build_renderer
from render.stores import DirectoryStore, InvalidTile, MBTilesStore, build_store, validate_tile
from render.worker import Backoff, CircuitBreaker

JOB = RenderJob("WebMercatorQuad", 12, 2200, 1343, "4.2.0", hash="abc")


def test_job_key_is_the_tile_version_update_hash_and_origin() -> None:
    assert job_key("WebMercatorQuad", 3, 4, 2, 2) == job_key("WebMercatorQuad", 3, 4, 2, "2.0")
    assert job_key("WebMercatorQuad", 3, 4, 2, 2) != job_key("WebMercatorQuad", 3, 4, 2, 3)
    assert job_key("WebMercatorQuad", 3, 4, 2, 2) != job_key("WebMercatorQuad", 3, 2, 4, 2)
    assert len(JOB.key) == 32
    # timestamps and the broadcast are payload, not identity
    same = RenderJob("WebMercatorQuad", 12, 2200, 1343, "4.2", hash="abc", enqueued_ms=5,
                     broadcast=b'{"objects":[],"msg":{}}')  # fmt: skip
    assert same.key == JOB.key
    # two features' releases at one version number are two jobs; so is a region re-render
    assert RenderJob("WebMercatorQuad", 12, 2200, 1343, "4.2", hash="def").key != JOB.key
    assert RenderJob("WebMercatorQuad", 12, 2200, 1343, "4.2.0", "abc", origin="r1").key != JOB.key


def test_job_round_trips_through_its_encoding() -> None:
    job = RenderJob("WebMercatorQuad", 1, 0, 1, 7, "h", enqueued_ms=12, deadline_ms=99)
    assert RenderJob.decode(job.encode()) == job
    payload = b'{"objects":[["f1","o1"]],"msg":{"type":"tile_updated"}}'
    full = RenderJob("WebMercatorQuad", 1, 0, 1, 7, "h", origin="r9", broadcast=payload)
    assert RenderJob.decode(full.encode()) == full


def test_builtin_renderer_draws_a_valid_deterministic_png() -> None:
    r = BuiltinRenderer()
    png = r.render(JOB)
    validate_tile(png, "png")
    assert png == r.render(JOB)
    assert png != r.render(RenderJob("WebMercatorQuad", 12, 2200, 1343, "4.2.1"))
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(png)).size == (256, 256)


def test_validation_refuses_empty_foreign_and_truncated_tiles() -> None:
    png = BuiltinRenderer().render(JOB)
    for bad in (b"", b"GIF89a....", png[: len(png) // 2]):
        with pytest.raises(InvalidTile):
            validate_tile(bad, "png")
    validate_tile(b"\x1a\x02...", "mvt")  # plain protobuf: accepted as is
    with pytest.raises(InvalidTile):
        validate_tile(b"\x1f\x8b\x08\x00broken", "mvt")


def test_directory_store_two_phase_commit(tmp_path) -> None:
    store = DirectoryStore(tmp_path / "tiles")
    png = BuiltinRenderer().render(JOB)
    staged = store.stage(JOB, png)
    assert store.read(12, 2200, 1343) is None  # staged is invisible to readers
    where = store.commit(staged)
    assert where.endswith("tiles/12/2200/1343.png")
    assert store.read(12, 2200, 1343) == png
    assert store.staged_files() == []
    with pytest.raises(InvalidTile):
        store.stage(JOB, png[:100])
    assert store.read(12, 2200, 1343) == png


def test_mbtiles_store_commits_in_one_transaction(tmp_path) -> None:
    store = MBTilesStore(tmp_path / "t.mbtiles")
    png = BuiltinRenderer().render(JOB)
    staged = store.stage(JOB, png)
    assert store.read(12, 2200, 1343) is None
    store.commit(staged)
    assert store.read(12, 2200, 1343) == png
    row = store.db.execute("SELECT zoom_level, tile_column, tile_row FROM tiles").fetchone()
    assert row == (12, 2200, (1 << 12) - 1 - 1343)  # MBTiles rows count from the south
    assert store.db.execute("SELECT count(*) FROM tilepipe_staging").fetchone() == (0,)
    with pytest.raises(InvalidTile):
        store.commit(staged)  # the staged row is gone: nothing half-applied
    store.close()


def test_store_and_renderer_specs(tmp_path) -> None:
    assert isinstance(build_store(f"dir:{tmp_path}/a"), DirectoryStore)
    assert isinstance(build_store(f"mbtiles:{tmp_path}/a.mbtiles"), MBTilesStore)
    assert isinstance(build_renderer("builtin"), BuiltinRenderer)
    with pytest.raises(ValueError, match="unknown kind"):
        build_store(f"s3:{tmp_path}")
    with pytest.raises(ValueError, match="unknown kind"):
        build_renderer("martin")


def test_command_renderer_substitutes_the_tile_and_reads_stdout(tmp_path) -> None:
    script = "import sys; sys.stdout.write('/'.join(sys.argv[1:]))"
    r = CommandRenderer([sys.executable, "-c", script, "{z}", "{x}", "{y}", "{version}"], "mvt")
    assert r.render(JOB) == b"12/2200/1343/4.2.0"
    failing = CommandRenderer(["sh", "-c", "echo upstream 503 >&2; exit 3"])
    with pytest.raises(RenderError, match="exited with 3: upstream 503"):
        failing.render(JOB)
    slow = CommandRenderer(["sleep", "5"], timeout_s=0.2)
    with pytest.raises(RenderError, match="no tile after"):
        slow.render(JOB)


def test_backoff_is_capped_full_jitter() -> None:
    b = Backoff(initial_s=1, max_s=8)
    for attempt in range(1, 10):
        cap = min(8, 2 ** (attempt - 1))
        assert all(0 <= b.delay(attempt) <= cap for _ in range(50))


def test_circuit_breaker_opens_then_lets_one_trial_through() -> None:
    now = [0.0]
    cb = CircuitBreaker(threshold=3, cooldown_s=10, clock=lambda: now[0])
    for _ in range(3):
        assert cb.allow()
        cb.failure()
    assert cb.is_open and not cb.allow()
    now[0] = 11
    assert cb.allow()  # the trial
    assert not cb.allow()  # only one at a time
    cb.failure()  # trial failed: open for another cooldown
    assert not cb.allow()
    now[0] = 22
    assert cb.allow()
    cb.success()
    assert not cb.is_open and cb.allow() and cb.allow()


def test_render_worker_config_errors_exit_2_with_one_line(monkeypatch, capsys) -> None:
    from tilepipe.cli import main

    monkeypatch.delenv("TILEPIPE_RENDER_LEDGER", raising=False)
    assert main(["render-worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "tilepipe render-worker: no job ledger: set TILEPIPE_RENDER_LEDGER (or --ledger)"
        " to a PostgreSQL DSN"
    )
    assert main(["render-worker", "--ledger", "postgresql://x@127.0.0.1/x", "--store", "s3:b"]) == 2
    assert "use dir:PATH or mbtiles:PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["render-worker", "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out
