"""Shared fixtures: the standalone offline server, running apps, and the rule for components
that may be missing (fail in CI, skip with a reason on a developer's machine). Also the test
tiers (which tests are `slow`) and the rule that a run in which no test ran is no pass."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from streamchat.offline import OfflineServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def require_component(available: bool, reason: str) -> None:
    """Tests that need a real component fail in CI when it is missing, and skip elsewhere."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)


def require_chromium() -> str:
    require_component(
        os.path.exists(CHROMIUM) or shutil.which("chromium") is not None,
        f"Chromium not found at {CHROMIUM} (install it: apt-get install -y chromium)",
    )
    return CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))


@pytest.fixture(scope="session")
def offline_server() -> Iterator[OfflineServer]:
    """A standalone offline model, fast, shared by tests that point the app at a base URL."""
    with OfflineServer(tokens_per_second=200, first_token_delay_ms=10) as server:
        yield server


@pytest.fixture(scope="session")
def slow_offline_server() -> Iterator[OfflineServer]:
    """Paced like a real model, so a Stop can land in the middle of an answer."""
    with OfflineServer(tokens_per_second=20, first_token_delay_ms=50) as server:
        yield server


# Test files left out of the fast tier (`python -m pytest -m "not slow"`), and why. Every
# browser test is slow too. The fast tier still starts the real app over loopback.
SLOW_FILES = {
    "test_many_streams.py": "a load test: hundreds of chat sessions at once",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES or item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which no test ran says so; in CI it fails (exit code 1), as does one in which
    every test was skipped: a wrong path, `-m` or `-k` must not look like a green suite."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        problem = "no tests ran (pytest exit code 5): check the paths and the -m / -k expressions"
    elif exitstatus == pytest.ExitCode.OK and reporter is not None and _nothing_ran(reporter):
        problem = "every selected test was skipped: nothing was checked"
    else:
        return
    if reporter is not None:
        reporter.write_line(problem, red=True, bold=True)
    if IN_CI:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _nothing_ran(reporter: Any) -> bool:
    stats = reporter.stats
    ran = ("passed", "failed", "xfailed", "xpassed", "error")
    return bool(stats.get("skipped")) and not any(stats.get(outcome) for outcome in ran)
