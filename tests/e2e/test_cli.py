"""The ``tilepipe`` command as a user runs it: embedded default, files,
stdin, ``python -m bytewax.run``, help, and configuration mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.events import NOW_MS, tile_event
from tests.support.job import summary, tilepipe, write_jsonl

pytestmark = pytest.mark.e2e

Y = 1343  # the row of every tile here, at 52.5 deg N


def test_the_readme_default_runs_on_the_generator_and_accounts_for_everything():
    done = tilepipe("run")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    total, broadcast, dup, stale, dead = summary(done.stderr)
    assert total == 2000 and broadcast + dup + stale + dead == total
    assert broadcast > 0 and dup > 0 and dead > 0
    msgs = [json.loads(line) for line in done.stdout.splitlines()]
    assert msgs and all(m["type"] == "tile_updated" for m in msgs)
    assert sum(m["events"] for m in msgs) == broadcast
    last: dict = {}
    for m in msgs:  # per tile, versions only go forward
        tile = (m["z"], m["x"], m["y"])
        assert m["version"] > last.get(tile, 0)
        last[tile] = m["version"]


def test_file_in_file_out_with_dead_letters(tmp_path: Path):
    src = write_jsonl(
        tmp_path / "events.jsonl",
        [
            tile_event(event_id="a1", version=1, x=10, y=Y),
            tile_event(event_id="a3", version=3, x=10, ts=NOW_MS + 20, y=Y),
            tile_event(
                event_id="a2", version=2, x=10, ts=NOW_MS + 10, y=Y
            ),  # shuffled within lateness
            tile_event(event_id="a3", version=3, x=10, ts=NOW_MS + 20, y=Y),  # duplicate event id
            tile_event(event_id="b1", version="1.9.0", x=11, y=Y),
            tile_event(event_id="b2", version="1.10.0", x=11, ts=NOW_MS + 5, y=Y),
            "",  # blank lines are not records
            "{not json",
            tile_event(event_id="bad-y", version=1, x=10, y=99999),
            tile_event(event_id="bad-ts", version=1, x=10, ts="last tuesday", y=Y),
            tile_event(event_id="bad-bbox", version=1, x=10, bbox=[0, 0, 1, 1], y=Y),
        ],
    )
    out, dlq = tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    done = tilepipe("run", "--source", f"file:{src}", "--sink", f"file:{out}",
                    "--dlq", f"file:{dlq}")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert summary(done.stderr) == (10, 5, 1, 0, 4)
    msgs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(m["x"], m["version"], m["events"]) for m in sorted(msgs, key=lambda m: m["x"])] == [
        (10, 3, 3),
        (11, "1.10.0", 2),
    ]
    m10 = next(m for m in msgs if m["x"] == 10)
    # z12 row 1343: north = atan(sinh(pi * (1 - 2 * 1343 / 4096))) = 52.5363 deg
    assert m10["bbox"] == pytest.approx([-179.12109375, 52.48278022, -179.033203125, 52.53627304])
    assert m10["quadkey"] and m10["tms"] == "WebMercatorQuad" and len(m10["hash"]) == 16
    dead = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [(d["reason"], d["origin"]["line"]) for d in dead] == [
        ("invalid_json", 8),
        ("tile_out_of_range", 9),
        ("invalid_timestamp", 10),
        ("bbox_mismatch", 11),
    ]
    assert dead[0]["raw"] == "{not json" and dead[0]["origin"]["file"] == str(src)
    assert all(d["received_at"].endswith("Z") and d["error"] for d in dead)


def test_stdin_to_stdout(tmp_path: Path):
    body = "\n".join(
        json.dumps(tile_event(event_id=f"s{i}", version=i, x=i % 3, y=Y)) for i in range(1, 31)
    ).encode()
    done = tilepipe("run", "--source", "file:-", "--dlq", f"file:{tmp_path / 'dlq'}", stdin=body)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert summary(done.stderr) == (30, 30, 0, 0, 0)
    finals = {}
    for line in done.stdout.splitlines():
        m = json.loads(line)
        finals[m["x"]] = m["version"]
    assert finals == {0: 30, 1: 28, 2: 29}


def test_python_m_bytewax_run_uses_the_same_settings(tmp_path: Path):
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            tile_event(event_id="e1", version=1, x=1, y=Y),
            tile_event(event_id="e2", version=2, x=1, y=Y),
        ],
    )
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "TILEPIPE_SOURCE": f"file:{src}", "TILEPIPE_SINK": f"file:{out}",
           "TILEPIPE_DLQ": f"file:{tmp_path / 'dlq'}"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.tile_updates:flow()"],
        capture_output=True, timeout=120, env=env, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    [msg] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (msg["x"], msg["version"], msg["events"]) == (1, 2, 2)


@pytest.mark.parametrize("command", [(), ("run",)])
def test_help_has_examples(command):
    done = tilepipe(*command, "--help")
    assert done.returncode == 0
    assert b"tilepipe run" in done.stdout
    if command:
        assert b"examples:" in done.stdout and b"TILEPIPE_" in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--source", "ftp://x/y"), "unknown scheme 'ftp'"),
        (("--sink", "redis://127.0.0.1:1/0"), "Redis at redis://127.0.0.1:1/0 did not answer"),
        (("--source", "kafka://127.0.0.1:1/events"), "did not answer"),
        (("--source", "file:/nonexistent/events.jsonl"), "does not exist"),
        (("--max-delay", "soon"), "invalid setting max_delay"),
        (("--source", "generator:?speed=9"), "unknown option 'speed'"),
    ],
)
def test_bad_configuration_is_one_clear_line(args, says):
    done = tilepipe("run", *args, timeout=60)
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert says in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "examples:"),
        (("--redis", "redis://127.0.0.1:1/0"), "Redis at redis://127.0.0.1:1/0 does not answer"),
        (("--redis", "http://x/0"), "invalid setting redis"),
        (("--max-tiles", "0"), "invalid setting max_tiles"),
        (("--listen", "nowhere"), "invalid setting listen"),
    ],
)
def test_gateway_help_and_bad_configuration(args, says):
    done = tilepipe("gateway", *(args or ("--help",)), timeout=60)
    if not args:
        assert done.returncode == 0 and b"TILEPIPE_GATEWAY_" in done.stdout
        assert says.encode() in done.stdout
        return
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert says in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
