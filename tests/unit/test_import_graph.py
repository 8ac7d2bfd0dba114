"""Imports go one way: each top-level package uses only the layers below it.

``python -m tests.import_graph`` prints the graph this checks. The vocabulary
(``tilepipe``) is at the bottom and imports no other package; the command line
(``tilepipe.cli``) is at the top. A new edge is a design decision: add it here,
in the same change, with the reason.
"""

from __future__ import annotations

from tests.import_graph import cycles, module_graph, package_graph

ALLOWED: dict[str, set[str]] = {
    "tilepipe": set(),  # records, wire, versions, tiles, config, errors, store, ...
    "operators": {"tilepipe"},  # the stages' pure logic and their Bytewax steps
    "sources": {"tilepipe"},
    "render": {"tilepipe"},  # jobs, queue, ledger, workers: no Bytewax
    "sinks": {"tilepipe", "render"},  # the render-queue sink enqueues render jobs
    "dataflows": {"tilepipe", "operators", "sources", "sinks"},
    "ingress": {"tilepipe", "operators", "render"},  # validation; the job API's queue
    "gateway": {"tilepipe"},
    "tiles": {"tilepipe", "render"},  # serves the render store
    "demo": {"tilepipe"},  # starts every service as a process of its own
    "cli": {"tilepipe", "dataflows", "ingress", "render", "gateway", "tiles", "demo"},
}


def test_every_package_imports_only_the_layers_it_may() -> None:
    graph = package_graph()
    assert set(graph) <= set(ALLOWED), f"a package with no place yet: {set(graph) - set(ALLOWED)}"
    wrong = {pkg: sorted(deps - ALLOWED[pkg]) for pkg, deps in graph.items() if deps - ALLOWED[pkg]}
    assert not wrong, f"imports against the layering (see docs/ARCHITECTURE.md): {wrong}"


def test_there_is_no_import_cycle_between_packages_or_modules() -> None:
    assert cycles(package_graph()) == []
    assert cycles(module_graph()) == []


def test_the_graph_sees_function_local_imports() -> None:
    # The CLI imports the services inside its functions; they still count.
    assert {"dataflows", "ingress", "render"} <= package_graph()["cli"]
