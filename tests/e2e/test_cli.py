"""The ``tilepipe`` command as a user runs it: embedded default, files,
stdin, ``python -m bytewax.run``, help, and configuration mistakes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SUMMARY = re.compile(
    r"tilepipe: (\d+) records in: (\d+) broadcast, (\d+) duplicate, (\d+) stale,"
    r" (\d+) dead-lettered; ran [0-9.]+ s, \d+ records/s, peak RSS \d+ MiB$"
)
NOW_MS = int(time.time() * 1000)


def tilepipe(*args: str, stdin: bytes | None = None, env: dict | None = None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "tilepipe", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "TILEPIPE_PROGRESS_INTERVAL": "3600", **(env or {})},
    )


def summary(stderr: bytes) -> tuple[int, ...]:
    lines = [ln for ln in stderr.decode().splitlines() if ln.startswith("tilepipe: ")]
    assert len(lines) == 1, stderr.decode()[-2000:]
    m = SUMMARY.match(lines[0])
    assert m, lines[0]
    return tuple(int(g) for g in m.groups())


def event(event_id: str, version, x: int, ts: int = NOW_MS, **extra) -> dict:
    return {"event_id": event_id, "kind": "tile", "version": version, "source": "e2e",
            "ts": ts, "z": 12, "x": x, "y": 1343, **extra}  # fmt: skip


def write_jsonl(path: Path, records: list) -> Path:
    with path.open("w") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")
    return path


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
            event("a1", 1, x=10),
            event("a3", 3, x=10, ts=NOW_MS + 20),
            event("a2", 2, x=10, ts=NOW_MS + 10),  # shuffled within lateness
            event("a3", 3, x=10, ts=NOW_MS + 20),  # duplicate event id
            event("b1", "1.9.0", x=11),
            event("b2", "1.10.0", x=11, ts=NOW_MS + 5),
            "",  # blank lines are not records
            "{not json",
            event("bad-y", 1, x=10, y=99999),
            event("bad-ts", 1, x=10, ts="last tuesday"),
            event("bad-bbox", 1, x=10, bbox=[0, 0, 1, 1]),
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
    body = "\n".join(json.dumps(event(f"s{i}", i, x=i % 3)) for i in range(1, 31)).encode()
    done = tilepipe("run", "--source", "file:-", "--dlq", f"file:{tmp_path / 'dlq'}", stdin=body)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert summary(done.stderr) == (30, 30, 0, 0, 0)
    finals = {}
    for line in done.stdout.splitlines():
        m = json.loads(line)
        finals[m["x"]] = m["version"]
    assert finals == {0: 30, 1: 28, 2: 29}


def test_python_m_bytewax_run_uses_the_same_settings(tmp_path: Path):
    src = write_jsonl(tmp_path / "in.jsonl", [event("e1", 1, x=1), event("e2", 2, x=1)])
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "TILEPIPE_SOURCE": f"file:{src}", "TILEPIPE_SINK": f"file:{out}",
           "TILEPIPE_DLQ": f"file:{tmp_path / 'dlq'}"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.tile_updates:flow"],
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
