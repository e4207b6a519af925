"""The paint acknowledgements in real Chromium: the page loads public/paint_ack.js, says which
updates it has painted, and the server sends the next update only after that word."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.harness import AppProcess
from tests.waiting import browser_pause, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# How many updates after the page first caught up may have left the server before it heard
# that page's first acknowledgement (it holds nothing until then).
SENT_BEFORE_FIRST_ACK_HEARD = 4


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    # Updates as often as tokens come (1 ms) and a hold that never runs out: without the
    # acknowledgements the page would get many updates per frame. The answer lasts over a
    # second, so the page catches up while it streams even on a busy machine.
    env = {
        "OFFLINE_TPS": "400",
        "OFFLINE_TTFT_MS": "20",
        "STREAM_FLUSH_MS": "1",
        "STREAM_PAINT_HOLD_MS": "60000",
        "SHOW_METRICS": "true",
    }
    with AppProcess(env) as running:
        yield running


def socket_event(payload: str) -> tuple[str, dict[str, object]] | None:
    """A Socket.IO event frame (`42[name, data]`) as (name, data), or None."""
    if not payload.startswith("42["):
        return None
    name, *args = json.loads(payload[2:])
    return name, (args[0] if args and isinstance(args[0], dict) else {})


def tally(
    frames: list[tuple[str, str, dict[str, object]]],
) -> tuple[int, int, list[int]]:
    """For the last streamed answer: updates received, updates acknowledged, and, once the page
    had caught up, how many updates it had received beyond the last one it acknowledged."""
    started = [data["id"] for d, name, data in frames if d == "in" and name == "stream_start"]
    assert started, "the answer streamed"
    answer = started[-1]
    updates = acked = 0
    caught_up = False  # the page has painted every update sent before the server heard it
    ahead: list[int] = []
    for direction, name, data in list(frames):
        if data.get("id") != answer:
            continue
        if direction == "in" and name == "stream_token":
            updates += 1
            if caught_up:
                ahead.append(updates - acked)
        elif direction == "out" and name == "stream_painted":
            painted = int(str(data["n"]))
            assert acked < painted <= updates, "acknowledged: what was received, in order"
            acked = painted
            caught_up = caught_up or acked == updates
    return updates, acked, ahead


def all_acknowledged(counts: tuple[int, int, list[int]]) -> bool:
    updates, acked, _ = counts
    return acked == updates


def test_page_acknowledges_painted_updates_and_server_waits_for_each(browser, app):
    page = browser.new_page()
    frames: list[tuple[str, str, dict[str, object]]] = []  # (direction, event, data) in order

    def record(direction: str, payload: str | bytes) -> None:
        if isinstance(payload, str) and (event := socket_event(payload)) is not None:
            frames.append((direction, *event))

    page.on(
        "websocket",
        lambda ws: (
            ws.on("framereceived", lambda p: record("in", p)),
            ws.on("framesent", lambda p: record("out", p)),
        ),
    )
    try:
        page.goto(app.url)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.locator("#chat-input").fill("How do guardrails work on a stream?")
        page.locator("#chat-submit").click()
        wait_until(
            lambda: any(name == "task_end" for _, name, _ in frames[3:]),
            within=60,
            what="the answer to end",
            pause=browser_pause(page),
        )
        wait_until(
            lambda: " tok/s · " in "".join(page.locator(".ai-message").all_inner_texts()),
            within=30,
            what="the finished answer on the page",
            pause=browser_pause(page),
        )
        # The last acknowledgement leaves after the frame that painted it: wait for it.
        wait_until(
            lambda: all_acknowledged(tally(frames)),
            within=10,
            what="the page to acknowledge its last painted update",
            pause=browser_pause(page),
        )
    finally:
        page.close()

    updates, acked, ahead = tally(frames)
    assert updates >= 3, f"the long answer came in several updates, got {updates}"
    assert acked == updates, "the page acknowledged every update it painted"
    # Once the page has caught up, the server holds each update until the last is painted;
    # only the answer's end goes at once (CoalescingSink.finish), so the last word is not late.
    # The server holds nothing until it has heard the page's first acknowledgement: updates it
    # sent before (one every few ms here) can still arrive after the page caught up, so the
    # first few are let be. A server that did not hold would send several per frame throughout.
    *streaming, final = ahead
    assert len(streaming) > 3 * SENT_BEFORE_FIRST_ACK_HEARD, f"a long answer: {ahead}"
    held = streaming[SENT_BEFORE_FIRST_ACK_HEARD:]
    assert max(held) == 1, f"never more than one update unpainted: {ahead}"
    assert final <= 2, f"the end goes after at most one unpainted update: {ahead}"
