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


# The fast tier (`python -m pytest -m "not slow"`) runs the unit tests and a chosen spread of
# integration tests that start the real app over loopback (chat, SSE, CLI, classroom,
# guardrails). An integration test (marked `integration`) is slow unless FAST_INTEGRATION names
# it or its file, so new ones start in the slow tier; a test named in SLOW is slow wherever it
# is, and so is every browser test.
# Names are node-id prefixes: a file, or a test in it.
FAST_INTEGRATION = (
    "tests/test_offline.py",
    "tests/test_app_integration.py",
    "tests/test_cli.py::test_streams_the_answer_to_stdout_and_stats_to_stderr",
    "tests/test_cli.py::test_ctrl_c_stops_the_answer_and_closes_the_upstream",
    "tests/test_cli.py::test_provider_error_exits_1_with_a_clear_message",
    "tests/test_cli.py::test_bad_configuration_exits_2",
    "tests/test_cli.py::test_missing_question_exits_2_with_usage_hint",
    "tests/test_sse_integration.py::test_get_answers_with_an_event_stream_not_the_ui_page",
    "tests/test_sse_integration.py::test_reconnecting_with_last_event_id_gives_exactly_the_remainder[1]",
    "tests/test_sse_integration.py::test_bad_requests_get_clear_json_errors",
    "tests/test_guardrails_integration.py::test_pii_in_the_answer_stops_the_stream",
    "tests/test_guardrails_integration.py::test_a_message_with_pii_is_not_sent_upstream",
    "tests/test_classroom_integration.py::test_the_classroom_offers_its_commands",
    "tests/test_classroom_integration.py::test_raw_chunks_token_view_and_timeline",
    "tests/test_classroom_integration.py::test_guardrail_demo_holds_back_and_stops",
    "tests/test_classroom_integration.py::test_fault_demo_cuts_the_stream",
    "tests/test_offline_tools.py",
    "tests/test_agent_offline_integration.py::test_the_offline_model_calls_the_calculator_",
    "tests/test_agent_offline_integration.py::test_sse_agent_mode_on_the_offline_model",
    "tests/test_agent_offline_integration.py::test_the_console_agent_on_the_offline_model",
)
SLOW = {
    "tests/test_many_streams.py": "a load test: hundreds of chat sessions at once",
    "tests/test_tiers.py": "runs pytest five times",
    "tests/test_app_integration.py::test_stop_ends_the_answer": "a paced answer, stopped midway",
    "tests/test_app_integration.py::test_websocket_compression_is_declined": "an app per case",
    "tests/test_app_integration.py::test_event_loop_setting_is_followed": "an app per case",
    "tests/test_app_integration.py::test_a_browser_back_on_its_session": "a paced answer, twice",
    "tests/test_app_integration.py::test_only_the_first_answer_says": "two whole answers",
    "tests/test_app_integration.py::test_wrong_key_gets_a_401": "an app of its own",
    "tests/test_app_integration.py::test_unreachable_provider": "an app of its own",
    "tests/test_app_integration.py::test_bad_setting_in_the_environment": "an app of its own",
    "tests/test_eventloop.py::test_event_loop_setting": "an app process per case",
    "tests/test_eventloop.py::test_chainlit_runs_on_uvloop": "an app process",
    "tests/test_eventloop.py::test_c_tasks_come_back_under_chainlit": "an app process",
    "tests/test_speedups.py::test_with_speedups_o": "an app process per case",
    "tests/test_speedups.py::test_a_private_import_that_fails": "an app process",
    "tests/test_users.py::test_cli_adds_lists_and_removes_users": "four CLI runs",
    "tests/test_serving.py::test_the_app_has_chainlit_": "an app process per test",
    "tests/test_serving.py::test_with_speedups_off_chainlit_starts": "an app process",
    "tests/test_serving.py::test_a_served_date_header_moves_on": "waits for the clock to tick",
    "tests/test_persistence.py::test_threads_steps_and_feedback_round_trip[postgresql]": (
        "runs PostgreSQL (SQLite covers it in the fast tier)"
    ),
    "tests/test_persistence.py::test_feedback_only_on_answers_in_the_users_own_chats[postgresql]": (
        "runs PostgreSQL (SQLite covers it in the fast tier)"
    ),
    "tests/test_persistence.py::test_replicas_starting_together": "runs PostgreSQL",
    "tests/test_persistence.py::test_writes_during_an_outage": "stops and starts PostgreSQL",
    "tests/test_persistence.py::test_a_database_down_at_start": "stops and starts PostgreSQL",
    "tests/test_persistence.py::test_closing_during_an_outage": "stops and starts PostgreSQL",
}


def is_slow(item: pytest.Item) -> bool:
    if item.get_closest_marker("browser") is not None:
        return True
    if any(item.nodeid.startswith(name) for name in SLOW):
        return True
    chosen = any(item.nodeid.startswith(name) for name in FAST_INTEGRATION)
    return item.get_closest_marker("integration") is not None and not chosen


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
    # A renamed test or file must not slip from one tier to the other unnoticed.
    files = {item.nodeid.split("::", 1)[0] for item in items}
    stale = [
        name
        for name in (*SLOW, *FAST_INTEGRATION)
        if name.split("::", 1)[0] in files
        and not any(item.nodeid.startswith(name) for item in items)
    ]
    if stale:
        message = f"tests/conftest.py names tests that were not collected: {stale}"
        if IN_CI:
            raise pytest.UsageError(message)
        config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)


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
