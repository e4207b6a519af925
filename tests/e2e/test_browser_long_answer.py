"""A long answer in real Chromium: its blocks far above the growing end are skipped by layout
and paint while off screen (public/style.css), a short answer's never are, and the whole text
stays in the page either way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import AppProcess, long_answer_app
from tests.waiting import browser_pause, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

LAST_WORD = "Fin-of-the-long-answer"  # benchmarks/browser_render.py ends its answer with it

# Per block of the last answer: its computed content-visibility and whether it is on screen.
BLOCKS = """() => {
  const answers = document.querySelectorAll(".ai-message .message-content .prose");
  const prose = answers[answers.length - 1];
  return Array.from(prose.children, (block) => {
    const box = block.getBoundingClientRect();
    return [getComputedStyle(block).contentVisibility, box.bottom > 0 && box.top < innerHeight];
  });
}"""


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    # One message: its own blocks are skipped off screen.
    with long_answer_app(tps=4000, tokens=4000, env={"STREAM_PART_CHARS": "0"}) as running:
        yield running


def finished_answer(page: Any, url: str, question: str) -> Any:
    """Ask `question` on the app at `url`; the answer's element once its stats line is shown."""
    page.goto(url)
    page.locator("#chat-input").wait_for(timeout=30_000)
    page.locator("#chat-input").fill(question)
    page.locator("#chat-submit").click()
    answer = page.locator(".ai-message .message-content").last
    wait_until(
        lambda: " tok/s · " in (answer.text_content() or ""),
        within=90,
        what="the finished answer",
        pause=browser_pause(page),
    )
    return answer


def test_a_long_answers_blocks_off_screen_are_skipped_and_its_text_is_whole(browser, app):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        answer = finished_answer(page, app.url, "Please write the long guide to streaming.")
        assert LAST_WORD in (answer.text_content() or ""), "the whole long answer on the page"
        blocks = page.evaluate(BLOCKS)
        assert len(blocks) >= 40, f"a long answer: {len(blocks)} blocks"
        assert all(mode == "auto" for mode, _ in blocks[: len(blocks) - 10]), "far blocks skippable"
        assert all(mode == "visible" for mode, _ in blocks[-9:]), "the growing end never skipped"
        assert any(not shown for _, shown in blocks[:-10]), "some of it is off screen"
        # Skipped or not, every block's text is in the page (find in page, copy, screen readers).
        text = answer.text_content() or ""
        assert text.startswith("Streaming LLM answers: the long guide") and LAST_WORD in text
    finally:
        page.close()


def test_a_short_answer_is_laid_out_whole(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    with AppProcess({"OFFLINE_TPS": "2000", "OFFLINE_TTFT_MS": "10"}) as offline:
        try:
            finished_answer(page, offline.url, "What is time to first token?")
            blocks = page.evaluate(BLOCKS)
            assert 2 <= len(blocks) < 40, f"a short answer: {len(blocks)} blocks"
            assert all(mode == "visible" for mode, _ in blocks), "nothing of it is skipped"
        finally:
            page.close()
