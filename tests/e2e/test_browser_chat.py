"""A person's first run, in a real browser: open the page, ask, watch the answer grow, see it
complete. Headless Debian Chromium driven by Playwright, against the offline demo model."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.harness import AppProcess, speedups_on
from tests.waiting import browser_pause, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    with AppProcess({"OFFLINE_TPS": "40", "OFFLINE_TTFT_MS": "100"}) as running:
        yield running


def answer_texts(page) -> list[str]:
    return page.locator(".ai-message .message-content").all_inner_texts()


def test_answer_grows_token_by_token_and_ends_complete(browser, app):
    page = browser.new_page()
    try:
        page.goto(app.url)
        composer = page.locator("#chat-input")
        composer.wait_for(timeout=30_000)
        composer.fill("What is time to first token?")
        page.locator("#chat-submit").click()

        # Sample the answer's length while it streams: it must be seen growing in several steps.
        lengths: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            texts = answer_texts(page)
            if texts:
                lengths.append(len(texts[-1]))
            # The stats line is added when the answer is finished.
            if texts and " tok/s · " in texts[-1]:
                break
            page.wait_for_timeout(50)  # the sampling interval: not a wait
        distinct = sorted(set(lengths))
        assert len(distinct) >= 5, f"the answer should grow visibly over time, saw {distinct}"
        # Shown text only grows while streaming; when a markdown mark such as `*` or a backtick
        # is closed, the rendered text may lose that one character.
        assert all(after >= before - 2 for before, after in itertools.pairwise(lengths))
        assert " tok/s · " in answer_texts(page)[-1], "the answer finished in time"

        final = answer_texts(page)[-1]
        assert "offline demo model" in final.lower()
        assert "first token" in final.lower()
        assert "Traceback" not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-chat.png"), full_page=True)
    finally:
        page.close()


def websocket_handshake(browser, url: str) -> dict[str, str]:
    """The headers of the app's answer to the page's websocket handshake, as Chromium saw
    them (names in lower case)."""
    page = browser.new_page()
    try:
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        answers: list[dict[str, str]] = []
        cdp.on(
            "Network.webSocketHandshakeResponseReceived",
            lambda event: answers.append(event["response"]["headers"]),
        )
        page.goto(url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        wait_until(
            lambda: answers,
            within=30,
            what="the page's websocket handshake",
            every=0.05,
            pause=browser_pause(page),  # CDP events are delivered meanwhile
        )
        return {name.lower(): value for name, value in answers[0].items()}
    finally:
        page.close()


def test_the_browser_gets_no_websocket_compression_by_default(browser, app):
    # Chromium offers permessage-deflate on every websocket; the app declines it (with
    # STREAM_SPEEDUPS=off, Chainlit's own default applies: it takes it).
    compressed = "sec-websocket-extensions" in websocket_handshake(browser, app.url)
    assert compressed is not speedups_on()


def test_websocket_compression_when_asked_for(browser):
    with AppProcess({"UVICORN_WS_PER_MESSAGE_DEFLATE": "true"}) as compressing:
        headers = websocket_handshake(browser, compressing.url)
    assert "permessage-deflate" in headers.get("sec-websocket-extensions", "")
