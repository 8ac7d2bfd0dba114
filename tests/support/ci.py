"""Under CI, a skipped test fails the run unless it is marked optional with a reason.

A test that skips because a real part is missing (Prometheus, Varnish, a browser) proves
nothing, and on a fresh machine ``tests/system-packages.sh`` installs those parts, so in CI
(``CI`` set, as ``.ci/run`` runs) a skip is a defect in the set-up, not an outcome. A test
that may legitimately not run somewhere says so: ``@pytest.mark.optional(reason="...")``.
"""

from __future__ import annotations

import os

import pytest

_unexpected: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "optional(reason): may skip in CI; the reason says where and why"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and item.get_closest_marker("optional") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        _unexpected.append(f"{item.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _unexpected:
        terminalreporter.section("skipped under CI (install the missing part, or mark optional)")
        for line in _unexpected:
            terminalreporter.line(line)
