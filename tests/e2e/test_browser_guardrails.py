"""In a real browser: a guardrail stop shows its notice and the match is nowhere in the DOM."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "60", "OFFLINE_TTFT_MS": "50"}) as running:
        yield running


def test_stop_notice_is_visible_and_the_match_is_not_in_the_page(browser, app):
    page = browser.new_page()
    try:
        page.goto(app.url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.locator("#chat-input").fill("Show me a guardrail demo with a credit card")
        page.locator("#chat-submit").click()
        notice = "Stopped: the answer contained a credit card number."
        seen_dom: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            html = page.content()
            seen_dom.append(html)
            if notice in page.inner_text("body"):
                break
            page.wait_for_timeout(50)  # the sampling interval: not a wait
        assert notice in page.inner_text("body")
        assert all("4111" not in html for html in seen_dom), "never in the DOM, at any moment"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-guardrail.png"), full_page=True)
    finally:
        page.close()
