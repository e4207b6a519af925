"""What a person sees: a long Markdown answer streamed into Chainlit's page in real Chromium.

A local OpenAI-compatible upstream (this script, run with --upstream) streams the project's own
long Markdown answer (the offline model's lessons, the README's configuration table, code from
streamchat/core, the architecture's rules: headings, lists, fenced code, tables; about 4,000
word-piece tokens) at a fixed pace. Each app is started with `chainlit run` (tests/harness.py)
and opened in Debian's Chromium through Playwright. The page records, with a MutationObserver
on the answer and a PerformanceObserver for long tasks (> 50 ms on the main thread):
- first text: from the click on Send to the answer's first text on the page;
- last word: from the upstream's last chunk to the answer's last word on the page;
- longest freeze: the longest time the answer did not grow, between its first and last word;
- busy: main-thread time in long tasks while the answer streamed; longest task: how long an
  input (a key press, Stop) could wait at worst.
The answer's text is counted across its messages (a long answer streams in parts).
Apps: streamchat with its defaults (updates paced by the page's paint acknowledgements, a long
answer in parts of STREAM_PART_CHARS), the same with STREAM_PART_CHARS=0 (one message) or
with GUARDRAILS=off, streamchat with STREAM_PAINT_HOLD_MS=0 (updates paced by time alone), and
the per-token baseline (benchmarks/baseline_app.py). `--profile Classroom` asks in that chat
profile (picked on the page as a person does); `--resumed` asks in a thread reopened from the
history (SQLite, a logged-in user) that already holds the same long answer, streamed into it
beforehand without the pace. Run: python benchmarks/browser_render.py [--tps 100,200]
[--apps paint,whole,noguard,time,baseline] [--profile Classroom] [--resumed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamchat.hosting.users import UsersFile  # noqa: E402
from streamchat.offline.lessons import lessons  # noqa: E402
from streamchat.offline.tokens import tokenize  # noqa: E402
from tests.harness import AppProcess, free_port  # noqa: E402
from tests.harness import start_upstream as start_upstream_process  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAST_WORD = "Fin-of-the-long-answer"
QUESTION = "Please write the long guide to streaming."
# A question holding this is answered at once (no pace): the answer a resumed thread holds.
AT_ONCE = "[at once]"
USER, PASSWORD = "bench", "a password for the benchmark"
AUTH_SECRET = "a-benchmark-secret-that-is-long-enough-for-hs256-0123456789"


def long_answer() -> str:
    """The project's own long Markdown answer, ending with LAST_WORD."""
    parts = ["# Streaming LLM answers: the long guide\n"]
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    code = {
        "coalesce.py": (REPO / "streamchat/core/coalesce.py").read_text(),
        "paint.py": (REPO / "streamchat/core/paint.py").read_text(),
    }
    architecture = (REPO / "docs/architecture.md").read_text()
    rules = [line for line in architecture.splitlines() if line.startswith("- **")]
    for index, lesson in enumerate(lessons()):
        parts.append(f"## {index + 1}. {lesson.title}\n\n{lesson.body.strip()}\n")
        if index % 3 == 0:
            chunk = rows[index * 3 : index * 3 + 8] or rows[:8]
            parts.append("| Variable | Default | Meaning |\n|---|---|---|\n" + "\n".join(chunk))
        if index % 3 == 1:
            name, source = list(code.items())[(index // 3) % 2]
            lines = source.splitlines()[20 + index * 4 : 56 + index * 4]
            parts.append(f"From `{name}`:\n\n```python\n" + "\n".join(lines) + "\n```\n")
        if index % 3 == 2:
            parts.append("Rules every front end relies on:\n\n" + "\n".join(rules) + "\n")
    parts.append(f"That is the whole guide. {LAST_WORD}")
    return "\n\n".join(parts)


def answer_tokens(target: int) -> list[str]:
    """The answer as the upstream streams it, about `target` chunks of the size a model's
    tokens have (the offline tokenizer's pieces, joined to at least 4 characters): the guide,
    its body again until it is long enough, then the last word."""
    guide = long_answer()
    body, _, ending = guide.rpartition("That is the whole guide.")
    text = body
    while len(text) < target * 5.5:
        text += body.partition("\n\n")[2]  # again, without the title
    chunks: list[str] = []
    for piece in tokenize(text[: int(target * 5.5)] + "\n\nThat is the whole guide." + ending):
        if chunks and len(chunks[-1]) < 4:
            chunks[-1] += piece
        else:
            chunks.append(piece)
    return chunks


# ---- the upstream: its own process, so the browser and the apps do not share its loop ----


def serve_upstream(port: int, tps: float, tokens: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    pieces = answer_tokens(tokens)
    sent: dict[str, list[float]] = {}

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-render",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    async def models(request: Request) -> Response:
        model = {"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}
        return JSONResponse({"object": "list", "data": [model]})

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body())
        question = str(body["messages"][-1]["content"])
        times = sent.setdefault(question, [])

        pace = float("inf") if AT_ONCE in question else tps

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            start = time.time()
            for index, piece in enumerate(pieces):
                delay = start + index / pace - time.time()  # a schedule, not fixed sleeps
                if delay > 0:
                    await asyncio.sleep(delay)
                times.append(time.time())
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def record(request: Request) -> Response:
        times = sent.get(request.query_params["q"], [])
        first, last = (times[0], times[-1]) if times else (None, None)
        return JSONResponse({"first": first, "last": last, "count": len(times)})

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/_sent", record),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_upstream(tps: float, tokens: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    return start_upstream_process(
        [sys.executable, __file__, "--upstream", str(port), "--tps", str(tps),
         "--tokens", str(tokens)],
        port,
    )  # fmt: skip


# ---- the page's own record ----

RECORDER = """
(() => {
  const bench = { clickAt: null, firstTextAt: null, lastWordAt: null, grew: [], longTasks: [] };
  window.__bench = bench;
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      bench.longTasks.push([performance.timeOrigin + entry.startTime, entry.duration]);
    }
  }).observe({ type: "longtask", buffered: true });
  // The answers' text on the page: a long answer may be shown in several messages (parts).
  // Its length and how many times the last word is in it (a resumed thread already has one).
  const shown = () => {
    let length = 0, last = 0;
    for (const answer of document.querySelectorAll(".ai-message .message-content")) {
      const text = answer.textContent || "";
      length += text.length;
      last += text.split("LAST_WORD").length - 1;
    }
    return [length, last];
  };
  let seen = 0, lastBefore = 0;
  const observe = () => {
    new MutationObserver(() => {
      if (bench.clickAt === null || bench.lastWordAt !== null) return;
      const [length, last] = shown();
      if (length > seen) {
        const now = Date.now();
        seen = length;
        bench.grew.push(now);
        if (bench.firstTextAt === null) bench.firstTextAt = now;
        if (last > lastBefore) bench.lastWordAt = now;
      }
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
    document.addEventListener("click", (event) => {
      if (event.target.closest && event.target.closest("#chat-submit")) {
        bench.clickAt = Date.now();
        [seen, lastBefore] = shown();  // what was on the page before the question
      }
    }, true);
  };
  if (document.body) observe(); else addEventListener("DOMContentLoaded", observe);
})();
""".replace("LAST_WORD", LAST_WORD)


@dataclass
class Run:
    app: str
    tps: float
    first_text_s: float | None
    last_word_s: float | None  # after the upstream's last chunk; None: not within the wait
    freeze_s: float | None
    busy_s: float
    longest_task_s: float
    provider_s: float


# The long answer is on the page (every part of it, live or reopened from the history).
ANSWER_SHOWN = """() => Array.from(document.querySelectorAll(".ai-message .message-content"),
  (answer) => answer.textContent || "").join("").includes("LAST_WORD")""".replace(
    "LAST_WORD", LAST_WORD
)


def open_chat(page: Any, url: str, profile: str) -> None:
    """The app's page ready for a question, in `profile` (picked as a person picks it)."""
    page.goto(url)
    page.locator("#chat-input").wait_for(timeout=60_000)
    if profile != "Chat":
        page.get_by_role("combobox").first.click()
        page.get_by_role("option", name=profile).click()
        page.get_by_text("What is a token?", exact=True).first.wait_for(timeout=30_000)


def reopen_thread_with_an_answer(page: Any, app: AppProcess, profile: str) -> None:
    """Opens in `page` a thread from the history that holds the long answer: asked first in a
    page of its own (streamed at once), then reopened by its address as a person does."""
    first = page.context.new_page()
    try:
        open_chat(first, app.url, profile)
        first.locator("#chat-input").fill(f"{QUESTION} {AT_ONCE}")
        first.locator("#chat-submit").click()
        first.wait_for_function(ANSWER_SHOWN, timeout=180_000)
        first.locator("#chat-submit").wait_for(timeout=60_000)  # the answer has ended
        first.wait_for_url("**/thread/**", timeout=30_000)
        thread = first.url
    finally:
        first.close()
    page.goto(thread)
    page.locator("#chat-input").wait_for(timeout=60_000)
    page.wait_for_function(ANSWER_SHOWN, timeout=60_000)


def login_cookie(app: AppProcess) -> dict[str, str]:
    token = httpx2.post(
        f"{app.url}/login", data={"username": USER, "password": PASSWORD}, timeout=30
    ).cookies.get("access_token")
    if not token:
        raise SystemExit("could not log in to the app (resumed mode)")
    return {"name": "access_token", "value": token, "url": app.url}


def measure(
    browser: Any,
    app: AppProcess,
    upstream: str,
    name: str,
    tps: float,
    tokens: int,
    wait_s: float,
    *,
    profile: str = "Chat",
    resumed: bool = False,
    screenshot: Path | None = None,
) -> Run:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        if resumed:
            context.add_cookies([login_cookie(app)])
        page = context.new_page()
        page.add_init_script(RECORDER)
        if resumed:
            reopen_thread_with_an_answer(page, app, profile)
        else:
            open_chat(page, app.url, profile)
        question = f"{QUESTION} ({name}, {tps:g} tok/s, {time.time():.3f})"
        page.locator("#chat-input").fill(question)
        page.locator("#chat-submit").click()
        with contextlib.suppress(Exception):  # not within the wait: reported as such
            page.wait_for_function(
                "window.__bench.lastWordAt !== null", timeout=(tokens / tps + wait_s) * 1000
            )
        record = page.evaluate("window.__bench")
        if screenshot is not None:
            page.screenshot(path=str(screenshot))
    finally:
        context.close()
    sent = httpx2.get(f"{upstream}/_sent", params={"q": question}, timeout=10).json()
    click, first, last = record["clickAt"], record["firstTextAt"], record["lastWordAt"]
    end = last if last is not None else time.time() * 1000
    grew = [t for t in record["grew"] if t <= end]
    freeze = max((b - a for a, b in itertools.pairwise(grew)), default=None)
    tasks = [(at, d) for at, d in record["longTasks"] if click is not None and click <= at <= end]
    return Run(
        app=name,
        tps=tps,
        first_text_s=(first - click) / 1000 if first is not None and click is not None else None,
        last_word_s=(last / 1000 - sent["last"]) if last is not None and sent["last"] else None,
        freeze_s=freeze / 1000 if freeze is not None else None,
        busy_s=sum(d for _, d in tasks) / 1000,
        longest_task_s=max((d for _, d in tasks), default=0.0) / 1000,
        provider_s=(sent["last"] - sent["first"]) if sent["first"] else 0.0,
    )


def fmt(value: float | None, unit: str = "s") -> str:
    return "never" if value is None else f"{value:.2f} {unit}"


def report(runs: list[Run], tokens: int, chars: int) -> None:
    print(f"\nanswer: {tokens} tokens, {chars} characters of Markdown; one browser, one answer")
    header = "| app | pace | first text | last word after provider | longest freeze | busy (long tasks) | longest task |"  # noqa: E501
    print(header)
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run.app} | {run.tps:g} tok/s | {fmt(run.first_text_s)} | "
            f"{fmt(run.last_word_s)} | {fmt(run.freeze_s)} | {run.busy_s:.2f} s | "
            f"{run.longest_task_s * 1000:.0f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tps", default="100,200,1000", help="provider paces, tokens/s")
    parser.add_argument("--tokens", type=int, default=4000, help="about this many tokens")
    parser.add_argument("--wait", type=float, default=60, help="s to wait after the provider")
    parser.add_argument("--apps", default="paint,time,baseline", help="which apps, in order")
    parser.add_argument("--repeat", type=int, default=1, help="runs per app and pace")
    parser.add_argument(
        "--set", action="append", default=[], metavar="VAR=VALUE", help="for the streamchat apps"
    )
    parser.add_argument("--profile", default="Chat", help="chat profile to ask in (Classroom)")
    parser.add_argument(
        "--resumed", action="store_true", help="ask in a thread reopened from the history"
    )
    parser.add_argument("--screenshot", type=Path, help="the page after the last run, as PNG")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.upstream, float(args.tps), args.tokens)
        return
    from playwright.sync_api import sync_playwright

    tokens = answer_tokens(args.tokens)
    print(f"the answer: {len(tokens)} tokens, {len(''.join(tokens))} characters")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    choices = {
        "paint": ("streamchat (paced by paint, long answers in parts)", REPO / "app.py", {}),
        "whole": (
            "streamchat, STREAM_PART_CHARS=0 (one message)",
            REPO / "app.py",
            {"STREAM_PART_CHARS": "0"},
        ),
        "noguard": (
            "streamchat, GUARDRAILS=off",
            REPO / "app.py",
            {"GUARDRAILS": "off"},
        ),
        "time": (
            "streamchat, STREAM_PAINT_HOLD_MS=0",
            REPO / "app.py",
            {"STREAM_PAINT_HOLD_MS": "0"},
        ),
        "baseline": ("baseline (stream_token per chunk)", REPO / "benchmarks/baseline_app.py", {}),
    }
    suffix = (f", {args.profile} profile" if args.profile != "Chat" else "") + (
        ", resumed thread" if args.resumed else ""
    )
    history = Path(tempfile.mkdtemp(prefix="browser-render-"))
    if args.resumed:  # the history (SQLite) and a user to log in as
        UsersFile(history / "users.txt").add(USER, PASSWORD)
    runs: list[Run] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            for tps in [float(t) for t in args.tps.split(",")]:
                upstream, url = start_upstream(tps, args.tokens)
                try:
                    for key in args.apps.split(","):
                        name, path, extra = choices[key]
                        env = {
                            "OPENAI_BASE_URL": f"{url}/v1",
                            "OPENAI_API_KEY": "not-needed",
                            "OPENAI_MODEL": "bench",
                            "STREAM_RETRIES": "0",
                            "LOG_LEVEL": "WARNING",
                            **extra,
                        }
                        if path.name == "app.py":
                            env.update(pair.split("=", 1) for pair in args.set)
                        if args.resumed:
                            env.update(
                                {
                                    "CHAINLIT_AUTH_SECRET": AUTH_SECRET,
                                    "AUTH_USERS_FILE": str(history / "users.txt"),
                                    "DATABASE_URL": f"sqlite:///{history / f'{key}-{tps:g}.db'}",
                                }
                            )
                        with AppProcess(env, app_path=path) as app:
                            for _ in range(args.repeat):
                                run = measure(
                                    browser, app, url, name + suffix, tps, len(tokens), args.wait,
                                    profile=args.profile, resumed=args.resumed,
                                    screenshot=args.screenshot,
                                )  # fmt: skip
                                runs.append(run)
                                print(run, flush=True)
                finally:
                    upstream.kill()
                    upstream.wait()
        finally:
            browser.close()
    report(runs, len(tokens), len("".join(tokens)))
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    lags = [r.last_word_s for r in runs if r.last_word_s is not None]
    if lags:
        print(f"median last-word lag over all runs: {statistics.median(lags):.2f} s")


if __name__ == "__main__":
    main()
