"""Render jobs without services: job keys, the builtin renderer, validation, both stores,
the command renderer, back-off and the circuit breaker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis

from render.invalidate import CacheInvalidator
from render.jobs import RenderJob, job_key
from render.renderers import BuiltinRenderer, CommandRenderer, RenderError, build_renderer
from render.settings import RenderSettings
from render.stores import DirectoryStore, InvalidTile, MBTilesStore, build_store, validate_tile
from render.worker import CircuitBreaker, WorkerConfig
from tilepipe.retry import RetryPolicy

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


def test_render_retries_back_off_by_the_one_capped_full_jitter_policy() -> None:
    default = WorkerConfig(name="w").backoff
    assert isinstance(default, RetryPolicy)  # the sinks' policy, not a copy of its formula
    assert (default.initial_s, default.max_s) == (1.0, 300.0)
    b = RetryPolicy(initial_s=1, max_s=8)
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


@pytest.mark.parametrize(
    ("env", "value", "setting"),
    [
        # L2: the SLA must outlast a render at its timeout, the PURGE and a margin.
        ("TILEPIPE_RENDER_SLA", "60s", "sla"),
        # L3: every template is checked at startup, not at the first job.
        ("TILEPIPE_RENDER_CACHE_KEY", "tilecache:{z}:{x}:{y}:{style}", "cache_key"),
        ("TILEPIPE_RENDER_RENDERER", "http:http://up/{z}/{x}/{y}.png?s={style}", "renderer"),
        ("TILEPIPE_RENDER_RENDERER", 'command:render --json {"z": {z}}', "renderer"),
        ("TILEPIPE_RENDER_RENDERER", "command:render 'unbalanced", "renderer"),
        ("TILEPIPE_RENDER_PURGE_URL", "http://cache/{zoom}.png", "purge_url"),
        ("TILEPIPE_RENDER_CACHE_KEY", "tilecache:{z}:{version:05d}", "cache_key"),  # "4.2.0"
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env, value, setting
) -> None:
    from tilepipe.cli import main

    monkeypatch.setenv(env, value)
    monkeypatch.setenv("TILEPIPE_RENDER_LEDGER", "postgresql://x@127.0.0.1:1/x")
    assert main(["render-worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"tilepipe render-worker: invalid setting {setting}: "), err


def test_the_defaults_are_consistent_and_every_template_field_is_accepted() -> None:
    s = RenderSettings()
    assert s.sla > s.timeout + s.purge_timeout  # L2: 60 s each before
    fields = "{tms}/{z}/{x}/{y}/{version}/{key}"
    RenderSettings(cache_key="tilecache:" + fields, purge_url="http://c/" + fields,
                   renderer="http:http://up/" + fields)  # fmt: skip
    RenderSettings(renderer="command:render " + fields + " '{{literal}}'")
    RenderSettings(timeout="10s", sla="25s")  # 10 + 5 (purge) + 10 (margin)
    with pytest.raises(ValueError, match="at least 25s"):
        RenderSettings(timeout="10s", sla="24s")


def test_a_failing_cache_never_raises_out_of_invalidate() -> None:
    """L3: a cache that fails (here a Redis that is not there) is counted and logged; the
    worker thread that committed the tile must not die of it."""
    dead_redis = redis.Redis(port=1, socket_connect_timeout=0.5)
    inv = CacheInvalidator(dead_redis, "tilecache:{z}:{x}:{y}:{version}")
    assert inv.invalidate(JOB) == "cache error"
    assert inv.counts == {"error": 1}


def test_the_staging_directory_is_outside_the_served_tree(tmp_path) -> None:
    """L10: staged and discarded tiles are never under the tree the tile server serves."""
    store = DirectoryStore(tmp_path / "tiles")
    assert not store.staging.resolve().is_relative_to(store.root.resolve())
    assert store.staging.parent == store.root.parent  # same volume: the move is a rename
    staged = store.stage(JOB, BuiltinRenderer().render(JOB))
    assert not Path(staged.location).is_relative_to(store.root)
    with pytest.raises(ValueError, match="inside the served tile tree"):
        DirectoryStore(tmp_path / "t2", staging=tmp_path / "t2" / ".staging")
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        with pytest.raises(ValueError, match="not on the filesystem"):
            DirectoryStore(tmp_path / "t3", staging=shm / f"tp-{os.getpid()}")


def test_staging_never_writes_through_a_planted_symlink(tmp_path) -> None:
    """L10: O_EXCL | O_NOFOLLOW: a symlink at the staging name fails the attempt instead of
    redirecting the write to wherever it points."""
    store = DirectoryStore(tmp_path / "tiles")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    for name in (f"{JOB.key}.png", f"{JOB.key}.0.png"):
        (store.staging / name).symlink_to(victim)
    with pytest.raises(OSError):
        store.stage(JOB, BuiltinRenderer().render(JOB))
    assert victim.read_bytes() == b"keep"


@pytest.mark.parametrize("kind", ["dir", "mbtiles"])
def test_attempts_of_one_job_stage_apart(tmp_path, kind: str) -> None:
    """A stalled attempt and its reclaim never remove each other's staged tile; a later
    attempt removes what an earlier (crashed) one left."""
    store = DirectoryStore(tmp_path / "tiles") if kind == "dir" else MBTilesStore(tmp_path / "t.mb")
    png = BuiltinRenderer().render(JOB)
    first = store.stage(JOB, png, 1)
    second = store.stage(JOB, png, 2)  # the reclaim: attempt 1's leftover goes
    store.stage(JOB, png, 1)  # the stalled attempt wakes up and stages again
    store.discard(first)  # ... and is fenced out by the ledger
    store.commit(second)
    assert store.read(12, 2200, 1343) == png
