"""Print tilepipe's import graph: which top-level package imports which, and any cycle.

Run it from the repository root::

    python -m tests.import_graph            # the package graph and its cycles
    python -m tests.import_graph --modules  # every module-to-module edge inside the project

It reads the source with :mod:`ast` (nothing is imported or run), and counts every
``import`` wherever it stands: one inside a function is as much a dependency as one at
the top of the file, it is only hidden. ``tests/unit/test_import_graph.py`` holds the
allowed direction and fails on any edge outside it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The project's own top-level packages, in the order of the layers, bottom first.
PACKAGES = (
    "tilepipe",
    "operators",
    "sources",
    "render",
    "sinks",
    "dataflows",
    "ingress",
    "gateway",
    "tiles",
    "demo",
)

#: Modules that stand for a layer of their own in the package graph: the command line
#: lives in the ``tilepipe`` distribution's namespace (``tilepipe.cli:main`` is the entry
#: point) but is the top of the graph, not part of the vocabulary at the bottom.
LAYERS = {"tilepipe.cli": "cli", "tilepipe.__main__": "cli"}


def layer_of(module: str) -> str:
    """The package-graph node a module belongs to."""
    return LAYERS.get(module, module.split(".")[0])


def _package_dirs(root: Path) -> list[str]:
    return [p for p in PACKAGES if (root / p / "__init__.py").is_file()]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # ``from pkg import module`` names a module too
                yield f"{target}.{alias.name}"


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every project module mapped to the project modules it imports."""
    packages = _package_dirs(root)
    sources = {
        _module_name(root, path): path for pkg in packages for path in (root / pkg).rglob("*.py")
    }
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target in _imports(tree, name, path.name == "__init__.py"):
            if target in sources and target != name:
                graph[name].add(target)
    return graph


def package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every top-level package mapped to the other top-level packages it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for src, targets in module_graph(root).items():
        top = layer_of(src)
        graph[top]
        for dst in targets:
            if layer_of(dst) != top:
                graph[top].add(layer_of(dst))
    return dict(graph)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.import_graph",
        description="Print the project's import graph and its cycles.",
        epilog="example: python -m tests.import_graph --modules | grep '^render'",
    )
    parser.add_argument("--modules", action="store_true", help="module edges, not package edges")
    args = parser.parse_args(argv)
    graph = module_graph() if args.modules else package_graph()
    width = max(map(len, graph), default=0)
    for name in sorted(graph):
        print(f"{name:<{width}} -> {', '.join(sorted(graph[name])) or '(nothing)'}")
    found = cycles(graph) + ([] if args.modules else cycles(module_graph()))
    print(f"\n{len(found)} cycle(s)")
    for component in found:
        print("  " + " <-> ".join(component))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
