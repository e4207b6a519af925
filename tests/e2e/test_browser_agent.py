"""The Agent profile in a real browser: a tool call is a step named after the tool that shows
its arguments and its result, above the answer. Headless Chromium against an upstream that
streams the tool call's arguments in pieces."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.agent_upstream import Script, ToolUpstream, ends, text, tool_call
from tests.e2e.conftest import ARTIFACTS
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

ARGUMENTS = json.dumps({"expression": "17 * 23"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[ToolUpstream]:
    with ToolUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: ToolUpstream) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-scripted",
        "OPENAI_MODEL": "scripted",
        "STREAM_RETRIES": "0",
    }
    with AppProcess(env) as running:
        yield running


def test_a_tool_step_shows_its_arguments_and_result_above_the_answer(browser, app, upstream):
    upstream.scripts += [
        Script(tool_call("calculate", ARGUMENTS, size=2) + ends("tool_calls")),
        Script(text("17 × 23 = 391, by the calculator.") + ends("stop")),
    ]
    page = browser.new_page()
    try:
        page.goto(app.url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.get_by_role("combobox").first.click()
        page.get_by_role("option", name="Agent").click()
        # An Agent chat starts by saying which tools it has.
        page.get_by_text("search_lessons", exact=False).first.wait_for(timeout=30_000)
        page.locator("#chat-input").fill("What is 17 * 23?")
        page.keyboard.press("Enter")

        step = page.get_by_text("Used calculate in", exact=False).first
        step.wait_for(timeout=60_000)
        answer = page.locator(".ai-message .message-content").last
        answer.get_by_text("by the calculator", exact=False).wait_for(timeout=30_000)
        # The step is open: its input (the arguments) and its output (the result) show.
        page.get_by_text('"expression"', exact=False).first.wait_for(timeout=10_000)
        page.get_by_text("17 * 23", exact=False).first.wait_for(timeout=10_000)
        page.locator("text=391").first.wait_for(timeout=10_000)
        assert "expression" not in answer.inner_text()
        assert "Traceback" not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-agent.png"), full_page=True)
    finally:
        page.close()
