"""public/stream.html reads like the chat: the answer's Markdown is rendered (safely, from DOM
nodes), and a guardrail's verdict is said once in the status line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "400", "OFFLINE_TTFT_MS": "20"}) as running:
        yield running


def test_stream_page_renders_the_answers_markdown(browser, app):
    page = browser.new_page()
    try:
        page.goto(f"{app.url}/public/stream.html")
        page.fill("#prompt", "What is a token?")
        page.click("#send")
        page.locator("#status").filter(has_text="Done").wait_for(timeout=60_000)
        answer = page.locator("#answer")
        assert answer.locator("h3, h2").count() >= 1, "the lesson's ## title is a heading"
        assert answer.locator("em, strong").count() >= 1
        shown = answer.inner_text()
        assert "##" not in shown and "**" not in shown
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-stream-page.png"), full_page=True)
    finally:
        page.close()


def test_stream_page_markdown_never_runs_html(browser, app):
    page = browser.new_page()
    try:
        page.goto(f"{app.url}/public/stream.html")
        hostile = '## <img src=x onerror="window.pwned=1">\n\n**<script>window.pwned=2</script>**'
        page.evaluate("(hostile) => { text = hostile; render(); }", hostile)
        assert page.evaluate("() => window.pwned === undefined")
        assert page.locator("#answer img, #answer script").count() == 0
        assert "<img" in page.inner_text("#answer h3")
    finally:
        page.close()


def test_stream_page_says_a_guardrail_stop_once(browser, app):
    page = browser.new_page()
    try:
        page.goto(f"{app.url}/public/stream.html")
        page.fill("#prompt", "Guardrail demo with an email address")
        page.click("#send")
        status = page.locator("#status").filter(has_text="Stopped")
        status.wait_for(timeout=60_000)
        page.locator("#send:not([disabled])").wait_for(timeout=60_000)
        text = page.inner_text("#status")
        assert text.count("Stopped") == 1, text
    finally:
        page.close()
