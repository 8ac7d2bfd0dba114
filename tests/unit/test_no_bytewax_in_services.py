"""The HTTP services (the ingress, the gateway) do not load Bytewax.

It runs the dataflow's own checks (:func:`operators.validate.validate_record`)
but not the dataflow: the Bytewax steps live in :mod:`operators.steps`, so a
service that only validates pays neither Bytewax's import nor its Rust runtime.
A fresh interpreter is needed: this test process has imported Bytewax already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


SERVICES = ["ingress.app", "ingress.intake", "gateway.app", "gateway.server", "tiles.server",
            "operators.validate", "operators.enrich", "tilepipe.cover"]  # fmt: skip


@pytest.mark.parametrize("module", SERVICES)
def test_importing_it_does_not_load_bytewax(module: str) -> None:
    code = f"import {module}, sys; assert 'bytewax' not in sys.modules, 'bytewax was loaded'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
