"""In a real browser: an answer carrying a <script> tag and an <img onerror> handler is shown
as text in the chat and in the SSE page, and neither runs. The offline model's lesson on
untrusted output streams both lines, split over many chunks as a real model would send them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamchat.offline.lessons import choose_answer
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]

QUESTION = "Show me an HTML injection demo"
SCRIPT_LINE = '<script>window.streamchatXss = "a script in the answer ran"</script>'
IMG_LINE = '<img src="x" onerror="window.streamchatXss = \'an onerror handler in the answer ran\'">'


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "400", "OFFLINE_TTFT_MS": "10"}) as running:
        yield running


def test_the_lesson_really_carries_the_payload():
    answer = choose_answer([{"role": "user", "content": QUESTION}])
    assert SCRIPT_LINE in answer and IMG_LINE in answer


def test_html_in_an_answer_is_shown_as_text_in_the_chat_and_never_runs(browser, app):
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(app.url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.locator("#chat-input").fill(QUESTION)
        page.locator("#chat-submit").click()
        answer = page.locator(".ai-message .message-content").last
        answer.get_by_text("What keeps them inert").wait_for(timeout=60_000)
        # The answer is finished when its stats line is shown; an <img src=x> that had become an
        # element would have asked for `x` by then, and its handler runs when that request ends.
        answer.get_by_text(" tok/s · ").wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")

        shown = answer.inner_text()
        assert "window.streamchatXss" in shown, "the tags are visible as text"
        assert page.evaluate("() => window.streamchatXss") is None
        assert dialogs == []
        # Nothing the answer said became an element.
        assert answer.locator("script").count() == 0
        assert answer.locator("img").count() == 0
        assert page.locator("[onerror]").count() == 0
    finally:
        page.close()


def test_html_in_an_answer_is_shown_as_text_on_the_sse_page(browser, app):
    page = browser.new_page()
    try:
        page.goto(f"{app.url}/public/stream.html")
        page.fill("#prompt", QUESTION)
        page.click("#send")
        page.get_by_text("What keeps them inert").wait_for(timeout=60_000)
        page.locator("#status").filter(has_text="Done").wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")  # the request an <img src=x> would make
        text = page.inner_text("#answer")
        assert SCRIPT_LINE in text and IMG_LINE in text
        assert page.evaluate("() => window.streamchatXss") is None
        assert page.locator("#answer script, #answer img").count() == 0
    finally:
        page.close()
