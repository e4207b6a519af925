"""The first page a newcomer sees: a branded welcome naming the app and what answers, starter
questions, and a page that asks nothing of any other site and gets no failed response."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.watch import PageWatch
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "200", "OFFLINE_TTFT_MS": "50"}) as running:
        yield running


def test_welcome_names_the_app_and_its_model_and_offers_starters(browser, app):
    page = browser.new_page(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    watch = PageWatch(page, app.url)
    try:
        page.goto(app.url)
        welcome = page.locator("#welcome-screen")
        welcome.get_by_text("streamchat", exact=True).wait_for(timeout=30_000)
        assert "offline demo model" in welcome.inner_text()
        assert "gear" in welcome.inner_text()
        starter = page.get_by_text("What is a token?", exact=True)
        starter.wait_for(timeout=10_000)
        page.wait_for_function(  # the welcome screen fades in
            "() => getComputedStyle(document.querySelector('#welcome-screen')).opacity === '1'"
        )
        page.screenshot(path=str(DOCS / "screenshot.png"))
        starter.click()
        page.locator(".ai-message .message-content").filter(has_text="A token").first.wait_for(
            timeout=60_000
        )
        assert watch.outside == [], "the page asked another site"
        assert watch.failed == [], "a request of the page failed"
        assert not [text for text in watch.console if "MIME type" in text]
    finally:
        page.close()


def test_the_page_asks_no_other_site_for_fonts_or_styles(browser, app):
    page = browser.new_page()
    watch = PageWatch(page, app.url)
    try:
        response = page.goto(app.url)
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "googleapis" not in policy and "jsdelivr" not in policy
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle")
        assert watch.outside == []
        assert not [text for text in watch.console if "Refused" in text or "ERR_" in text]
    finally:
        page.close()


def test_settings_say_the_guardrail_action_once(browser, app):
    page = browser.new_page()
    try:
        page.goto(app.url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.locator("#chat-settings-open-modal").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Guardrail mode").wait_for(timeout=10_000)
        assert dialog.inner_text().count("Action: stop.") == 1
    finally:
        page.close()
