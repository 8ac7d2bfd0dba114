"""Every benchmark module imports: mypy does not check bench/, and a module moved under it
(the tile store out of sinks/redis.py) would otherwise break a benchmark nobody runs in CI."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_every_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
