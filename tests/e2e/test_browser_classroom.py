"""The Classroom profile in a real browser: pick it, ask a starter, open the raw chunks, the
token view and the timeline (on the dark theme, every request of the page answered); Stop in
slow motion; side by side with a Stop per lane. The screenshot goes to docs/classroom.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.e2e.watch import PageWatch
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DOCS = Path(__file__).resolve().parents[2] / "docs"
ANSWERS = ".ai-message .message-content"


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "200", "OFFLINE_TTFT_MS": "50"}) as running:
        yield running


@pytest.fixture(scope="module")
def slow_app() -> Iterator[AppProcess]:
    """A model as slow as a real one, so Stop comes while it is still writing."""
    with AppProcess({"OFFLINE_TPS": "30", "OFFLINE_TTFT_MS": "50"}) as running:
        yield running


def open_classroom(browser, app: AppProcess, **options):
    page = browser.new_page(**options)
    watch = PageWatch(page, app.url)
    page.goto(app.url)
    page.locator("#chat-input").wait_for(timeout=30_000)
    page.get_by_role("combobox").first.click()
    page.get_by_role("option", name="Classroom").click()
    page.get_by_text("What is a token?", exact=True).first.wait_for(timeout=30_000)
    return page, watch


def answer_lengths(page) -> list[int]:
    return [len(text) for text in page.locator(ANSWERS).all_inner_texts()]


def test_classroom_profile_shows_chunks_tokens_and_timeline(browser, app):
    page, watch = open_classroom(
        browser, app, viewport={"width": 1280, "height": 2400}, color_scheme="dark"
    )
    try:
        # The classroom's starters: one click asks a lesson question.
        page.get_by_text("What is a token?", exact=True).first.click(timeout=30_000)

        page.get_by_role("button", name="Token boundaries").wait_for(timeout=60_000)
        page.get_by_text("raw chunks", exact=False).first.click()
        page.get_by_text('"role":"assistant"', exact=False).first.wait_for(timeout=10_000)
        # The usage line is the longest: it wraps inside the step instead of running off it.
        usage = page.get_by_text('"usage"', exact=False).last
        block = usage.locator("xpath=ancestor::pre[1]")
        assert block.evaluate("node => node.scrollWidth <= node.clientWidth + 1")

        page.get_by_role("button", name="Token boundaries").click()
        view = page.locator("[data-testid=token-view]")
        view.wait_for(timeout=30_000)
        shaded = view.locator("span[data-token-index]")
        assert shaded.count() > 50
        assert "A token is" in view.inner_text() or "token" in view.inner_text()

        page.get_by_role("button", name="Latency timeline").click()
        chart = page.locator(".js-plotly-plot").first
        chart.locator(".trace").first.wait_for(timeout=30_000)
        # It follows the theme: no white box, text in the page's own colour; no toolbar on it.
        background = chart.locator("rect.bg").first.evaluate("n => getComputedStyle(n).fill")
        assert "255, 255, 255" not in background
        colours = page.evaluate(
            """() => [getComputedStyle(document.body).color,
                     getComputedStyle(document.querySelector('.js-plotly-plot .gtitle')).fill]"""
        )
        assert colours[0] == colours[1], colours
        assert chart.locator(".modebar").count() == 0
        page.get_by_text("first token (", exact=False).wait_for(timeout=5_000)
        chart.scroll_into_view_if_needed()
        page.screenshot(path=str(DOCS / "classroom.png"), full_page=True)

        assert watch.failed == [], "every request of the page is answered"
        assert watch.outside == []
    finally:
        page.close()


def test_stop_in_slow_motion_ends_the_screen_at_once(browser, slow_app):
    page, watch = open_classroom(browser, slow_app)
    try:
        page.locator("#chat-settings-open-modal").click()
        page.locator("button#slow_motion").click()
        page.get_by_role("option", name="0.25x").click()
        page.get_by_role("button", name="Confirm").click()
        page.locator("#chat-input").fill("What is a token?")
        page.keyboard.press("Enter")
        page.wait_for_function(
            f"""() => {{ const all = document.querySelectorAll('{ANSWERS}');
                return all.length && all[all.length - 1].innerText.length > 60; }}""",
            timeout=30_000,
        )
        page.locator("#stop-button").click()
        marker = page.locator(ANSWERS).filter(has_text="Stopped by you after")
        marker.wait_for(timeout=3_000)  # at once, not when slow motion would have finished
        shown = answer_lengths(page)
        page.wait_for_timeout(1_500)  # a slow-motion answer that still grew would show it now
        assert answer_lengths(page) == shown, "nothing more appears after Stop"
        # Chainlit's own notice is not shown beside ours.
        assert page.get_by_text("Task manually stopped.").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-classroom-stop.png"))
        assert watch.failed == []
    finally:
        page.close()


def test_side_by_side_lanes_say_what_they_are_and_stop_one_by_one(browser, slow_app):
    page, watch = open_classroom(browser, slow_app, viewport={"width": 1280, "height": 1600})
    try:
        page.locator("#chat-input").fill("/SideBySide")
        page.get_by_text("Side by side: the same question", exact=False).wait_for(timeout=10_000)
        page.keyboard.press("Enter")  # picks the command
        page.get_by_role("button", name="SideBySide").wait_for(timeout=10_000)
        page.locator("#chat-input").fill("What is a token?")
        page.keyboard.press("Enter")
        controls = page.locator("[data-testid=lane-controls]")
        controls.wait_for(timeout=30_000)
        stops = controls.locator("button")
        assert stops.count() == 2
        lane_a, lane_b = (
            page.locator(ANSWERS)
            .filter(has_text=f"{letter} · streamchat-demo · temperature")
            .filter(has_not=page.locator("[data-testid=lane-controls]"))
            for letter in ("A", "B")
        )
        lane_a.wait_for(timeout=30_000)
        lane_b.wait_for(timeout=30_000)
        stops.first.click()
        lane_a.filter(has_text="Stopped by you after").wait_for(timeout=10_000)
        assert controls.locator("button[data-state=stopped]").count() == 1
        # The other lane goes on to the end (at temperature 1.2 the short telling).
        lane_b.filter(has_text="the short way").wait_for(timeout=5_000)
        controls.locator("button[data-state=complete]").wait_for(timeout=60_000)
        assert "Stopped by you" not in lane_b.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-classroom-side-by-side.png"))
        assert watch.failed == [], "lane and step avatars load"
    finally:
        page.close()
