"""A long answer in parts, in real Chromium (core/segments.py, public/paint_ack.js): it streams
as several messages and reads as one answer (one avatar, the buttons and the stats line only
under its last part, its whole text in order, no block cut in two), Stop ends it where it is,
the thread opened again from the history (SQLite) shows it the same way, the copy button under
it copies all of it, and a page without the script gets it as one message, as before."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from streamchat.hosting.users import UsersFile
from tests.harness import AppProcess, long_answer_app
from tests.waiting import browser_pause, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks/browser_render.py"
SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
PASSWORD = "correct horse battery"
TOKENS = 12_000  # about 66,000 characters: eight parts
QUESTION = "Please write the long guide to streaming."

# Per answer message on the page: whether its avatar shows, whether anything under its text
# shows (copy, actions), its text, its headings and how many code blocks and tables it has.
PARTS = """() => Array.from(
  document.querySelectorAll('[data-step-type="assistant_message"]'),
  (outer) => {
    const step = outer.querySelector('[id^="step-"]');
    const content = step.querySelector(".message-content");
    const avatar = step.querySelector(".ai-message").firstElementChild;
    const under = [];
    for (let s = content.nextElementSibling; s; s = s.nextElementSibling) under.push(s);
    return {
      id: step.id,
      avatar: getComputedStyle(avatar).visibility === "visible",
      buttons: under.some((e) => getComputedStyle(e).display !== "none"),
      text: content.textContent,
      headings: Array.from(content.querySelectorAll("h2"), (h) => h.textContent),
      code: content.querySelectorAll("pre").length,
      tables: content.querySelectorAll("table").length,
    };
  })"""


def bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("browser_render", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source() -> str:
    """The answer's Markdown, as the upstream streams it."""
    return "".join(bench_module().answer_tokens(TOKENS))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    folder = Path(tmp_path_factory.mktemp("parts"))
    UsersFile(folder / "users.txt").add("alice", PASSWORD)
    env = {
        "SHOW_METRICS": "true",
        "CHAINLIT_AUTH_SECRET": SECRET,
        "AUTH_USERS_FILE": str(folder / "users.txt"),
        "DATABASE_URL": f"sqlite:///{folder / 'history.db'}",
    }
    with long_answer_app(tps=1000, tokens=TOKENS, env=env) as running:
        yield running


@pytest.fixture
def page(browser: Any, app: AppProcess) -> Iterator[Any]:
    token = httpx2.post(
        f"{app.url}/login", data={"username": "alice", "password": PASSWORD}, timeout=30
    ).cookies.get("access_token")
    assert token, "logged in"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": "access_token", "value": token, "url": app.url}])
    try:
        yield context.new_page()
    finally:
        context.close()


def ask(page: Any, url: str) -> None:
    page.goto(url)
    page.locator("#chat-input").wait_for(timeout=30_000)
    page.locator("#chat-input").fill(QUESTION)
    page.locator("#chat-submit").click()


def finished(page: Any) -> list[dict[str, Any]]:
    """The answer's parts once its stats line is on the page."""
    wait_until(
        lambda: " tok/s · " in "".join(part["text"] for part in page.evaluate(PARTS)),
        within=90,
        what="the finished answer",
        pause=browser_pause(page),
    )
    parts: list[dict[str, Any]] = page.evaluate(PARTS)
    return parts


def reads_as_one_answer(parts: list[dict[str, Any]], source: str) -> None:
    assert len(parts) >= 5, f"a long answer streams in parts: {len(parts)}"
    assert [p["avatar"] for p in parts] == [True] + [False] * (len(parts) - 1), "one avatar"
    assert [p["buttons"] for p in parts[:-1]] == [False] * (len(parts) - 1), "none above"
    assert parts[-1]["buttons"], "the buttons under the last part"
    assert [" tok/s · " in p["text"] for p in parts] == [False] * (len(parts) - 1) + [True]
    whole_and_in_order(parts, source)


def whole_and_in_order(parts: list[dict[str, Any]], source: str) -> None:
    """Every section, code block and table of the answer once and in order, none cut in two."""
    headings = [h for p in parts for h in p["headings"]]
    expected = re.findall(r"^## (\d+)\. ", source, flags=re.MULTILINE)
    assert [h.split(".")[0] for h in headings] == expected
    assert sum(p["code"] for p in parts) == source.count("```python")
    assert sum(p["tables"] for p in parts) == source.count("|---|---|---|")
    text = "".join(p["text"] for p in parts)
    assert text.startswith("Streaming LLM answers: the long guide")
    assert text.count("Fin-of-the-long-answer") == 1
    assert "Interrupted" not in text


def test_a_long_answer_streams_in_parts_and_reads_as_one(page, app, source):
    ask(page, app.url)
    reads_as_one_answer(finished(page), source)


def test_stop_ends_a_long_answer_in_parts_where_it_is(page, app):
    ask(page, app.url)
    wait_until(
        lambda: len(page.evaluate(PARTS)) >= 2,
        within=60,
        what="the answer's second part",
        pause=browser_pause(page),
    )
    page.locator("#stop-button").click()
    wait_until(
        lambda: "Stopped by you" in page.evaluate(PARTS)[-1]["text"],
        within=30,
        what="the stop marker under the last part",
        pause=browser_pause(page),
    )
    page.locator("#chat-submit").wait_for(timeout=30_000)  # the page takes a question again
    parts = page.evaluate(PARTS)
    text = "".join(p["text"] for p in parts)
    assert "Fin-of-the-long-answer" not in text, "stopped before its end"
    assert text.count("Stopped by you") == 1 and " tok/s · " in parts[-1]["text"]
    assert [p["avatar"] for p in parts] == [True] + [False] * (len(parts) - 1)
    assert parts[-1]["buttons"] and not any(p["buttons"] for p in parts[:-1])


def test_a_thread_opened_from_the_history_shows_the_answer_as_one(page, app, source):
    ask(page, app.url)
    live = finished(page)
    wait_until(
        lambda: "/thread/" in page.url,
        within=30,
        what="the thread's address",
        pause=page.wait_for_timeout,
    )
    again = page.context.new_page()
    again.goto(page.url)
    stored = finished(again)
    assert [p["id"] for p in stored] == [p["id"] for p in live], "the same parts, in order"
    reads_as_one_answer(stored, source)


def test_the_copy_button_under_a_long_answer_copies_all_of_its_parts(page, app, source):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app.url)
    ask(page, app.url)
    parts = finished(page)
    last = page.locator(f"#{parts[-1]['id']}")
    last.hover()
    last.locator(".message-content ~ * button:has(svg.lucide-copy)").click()
    copied = ""

    def read() -> str:
        nonlocal copied
        copied = page.evaluate("navigator.clipboard.readText()")
        return copied

    wait_until(lambda: read(), within=10, what="the copied answer", pause=browser_pause(page))
    assert copied == source, (len(copied), len(source), copied[:80])
    # A code block's own copy button still copies its code alone.
    code = page.locator(f"#{parts[0]['id']} .message-content button:has(svg.lucide-copy)").first
    code.hover()
    code.click()
    wait_until(
        lambda: read() != source, within=10, what="the copied code", pause=browser_pause(page)
    )
    assert copied.strip() and copied.strip() in source and len(copied) < len(source) // 4


def test_a_page_without_the_paint_script_gets_a_long_answer_as_one_message(page, app, source):
    blocked: list[str] = []

    def block(route: Any) -> None:
        blocked.append(route.request.url)
        route.abort()

    page.route("**/paint_ack.js", block)
    ask(page, app.url)
    parts = finished(page)
    assert blocked, "the page asked for the script and did not get it"
    assert page.evaluate("window.WebSocket.__streamchatPaintAck === undefined"), "not run"
    assert len(parts) == 1, f"one message: {len(parts)}"
    assert parts[0]["avatar"] and parts[0]["buttons"] and " tok/s · " in parts[0]["text"]
    whole_and_in_order(parts, source)
