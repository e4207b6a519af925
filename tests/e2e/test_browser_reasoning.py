"""A reasoning model in a real browser: the thinking streams into a "reasoning" step above the
answer, open while it streams, collapsed and named with its duration once the answer starts;
the answer holds only the answer. Headless Chromium against the offline demo model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

THINKING_START = "The question is about reasoning models."


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    # Slow enough that the thinking streams for several seconds before the answer starts, so a
    # page rendered late on a busy machine still sees it open.
    with AppProcess({"OFFLINE_TPS": "6", "OFFLINE_TTFT_MS": "50"}) as running:
        yield running


def test_thinking_shows_in_a_step_that_collapses_when_the_answer_starts(browser, app):
    page = browser.new_page()
    try:
        page.goto(app.url)
        composer = page.locator("#chat-input")
        composer.wait_for(timeout=30_000)
        composer.fill("How do reasoning models think?")
        page.locator("#chat-submit").click()

        thinking = page.get_by_text(THINKING_START)
        # While it thinks: the step is open and its text grows in place.
        page.get_by_text("Using reasoning").wait_for(timeout=30_000)
        thinking.wait_for(state="visible", timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-thinking-open.png"), full_page=True)

        # Once the answer starts: the step is named with its duration and collapsed.
        page.get_by_text("Used reasoning for").wait_for(timeout=60_000)
        thinking.wait_for(state="hidden", timeout=30_000)
        answer = page.locator(".ai-message .message-content").last
        answer.get_by_text("Reasoning models: thinking before the answer").wait_for(timeout=30_000)
        assert THINKING_START not in answer.inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser-thinking-collapsed.png"), full_page=True)
        assert "Traceback" not in page.content()
    finally:
        page.close()
