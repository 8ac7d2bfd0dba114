"""The CI rule of tests/support/ci.py, run on a throwaway test file in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = """
import pytest

def test_needs_a_missing_part():
    pytest.skip("needs a binary that is not installed")

@pytest.mark.optional(reason="runs only where a GPU is lent")
def test_optional():
    pytest.skip("no GPU here")
"""


def _pytest(tmp_path: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.ci",
         "--rootdir", str(tmp_path), *args, str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert "test_needs_a_missing_part: Skipped: needs a binary" in done.stdout
    assert "test_optional" not in done.stdout.split("skipped under CI")[1]


def test_an_optional_skip_passes_under_ci(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "true", "-k", "optional")
    assert done.returncode == 0, done.stdout


def test_outside_ci_a_skip_is_only_reported(tmp_path: Path) -> None:
    done = _pytest(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "2 skipped" in done.stdout
