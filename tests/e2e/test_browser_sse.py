"""public/stream.html in Chromium: an answer streams over EventSource, metrics appear, and a
forced network blip mid-answer is survived with nothing lost or repeated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.e2e.conftest import ARTIFACTS
from tests.harness import AppProcess

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=25, first_token_delay_ms=50) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    with AppProcess({"OPENAI_BASE_URL": upstream.base_url, "SSE_GRACE_S": "10"}) as running:
        yield running


def test_stream_page_survives_a_network_blip_without_losing_or_repeating_text(
    browser, app, upstream
):
    page = browser.new_page()
    try:
        upstream.records.clear()
        page.goto(f"{app.url}/public/stream.html")
        page.fill("#prompt", "Explain buffering and backpressure")
        page.click("#send")
        page.wait_for_function(
            "() => document.querySelector('#answer').innerText.length > 40", timeout=30_000
        )
        page.click("#blip")
        page.locator("#status").filter(has_text="Done").wait_for(timeout=60_000)

        record = upstream.records.wait_for(1, timeout=5)[0]
        assert len(upstream.records.all()) == 1, "the reconnect resumed, it did not ask again"
        received = page.evaluate("() => text")  # the Markdown source, before it is rendered
        assert received.strip() == choose_answer(record.messages).strip()
        status = page.inner_text("#status")
        assert "Reconnected 1×, nothing lost." in status
        assert "TTFT" in page.inner_text("#metrics")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-sse.png"), full_page=True)
    finally:
        page.close()


def test_model_output_is_shown_as_text_never_run(browser, app):
    page = browser.new_page()
    try:
        page.goto(f"{app.url}/public/stream.html")
        hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
        page.evaluate("(hostile) => { text = hostile; render(); }", hostile)
        assert page.evaluate("() => window.pwned === undefined")
        assert "<img" in page.inner_text("#answer")
    finally:
        page.close()
