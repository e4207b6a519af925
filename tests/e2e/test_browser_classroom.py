"""The Classroom profile in a real browser: pick it, ask a starter, open the raw chunks, the
token view and the timeline. The screenshot goes to docs/classroom.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "200", "OFFLINE_TTFT_MS": "50"}) as running:
        yield running


def test_classroom_profile_shows_chunks_tokens_and_timeline(browser, app):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    try:
        page.goto(app.url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.get_by_role("combobox").first.click()
        page.get_by_role("option", name="Classroom").click()
        # The classroom's starters: one click asks a lesson question.
        page.get_by_text("What is a token?", exact=True).first.click(timeout=30_000)

        page.get_by_role("button", name="Token boundaries").wait_for(timeout=60_000)
        page.get_by_text("Raw chunks (", exact=False).first.click()
        page.get_by_text('"role":"assistant"', exact=False).first.wait_for(timeout=10_000)

        page.get_by_role("button", name="Token boundaries").click()
        view = page.locator("[data-testid=token-view]")
        view.wait_for(timeout=30_000)
        shaded = view.locator("span[data-token-index]")
        assert shaded.count() > 50
        assert "A token is" in view.inner_text() or "token" in view.inner_text()

        page.get_by_role("button", name="Latency timeline").click()
        page.locator(".js-plotly-plot .trace").first.wait_for(timeout=30_000)
        page.screenshot(path=str(DOCS / "classroom.png"), full_page=True)
    finally:
        page.close()
