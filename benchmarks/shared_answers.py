"""Shared answers under load: N chat sessions ask the very same question at once, with
SHARED_ANSWERS=on and off, against a fixed-rate upstream that counts requests; then `on` with
the sessions split between two app processes sharing one Redis (when redis-server is found).

The upstream (this file with --upstream, its own process) answers `w0 w1 ...` (`--tokens` at
`--tps`), counts the chat completion requests and records when it sent each token of each
request. Each app (`chainlit run`, its own process) is asked by N Socket.IO clients at once.
Reported per mode: upstream requests, answers that differ from the upstream's text (must be 0),
time to first token p50/p95 and delivery lag p50/p95: the arrival of a UI event minus the
latest upstream send of the newest token it holds that came before it (with one shared request
there is one send per token; with one request per session, the closest one before the arrival,
which makes the figure a lower bound there).

Run: python benchmarks/shared_answers.py [--sessions 50] [--tps 50] [--tokens 100]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import re
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.databases import redis_server  # noqa: E402
from tests.harness import (  # noqa: E402
    AppProcess,
    ChainlitClient,
    free_port,
    start_upstream,
    strip_footer,
)

TOKEN = re.compile(r"w(\d+) ")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def serve_upstream(port: int, tps: float, tokens: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    sent: dict[int, list[float]] = {}  # token index -> every send time
    counted = {"requests": 0}

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
        return b"data: " + json.dumps({**body, "choices": [choice]}).encode() + b"\n\n"

    async def models(request: Request) -> Response:
        model = {"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}
        return JSONResponse({"object": "list", "data": [model]})

    async def completions(request: Request) -> Response:
        await request.body()
        counted["requests"] += 1

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            start = time.time() + 0.1
            for index in range(tokens):
                delay = start + index / tps - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.setdefault(index, []).append(time.time())
                yield chunk({"content": f"w{index} "})
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def stats(request: Request) -> Response:
        return JSONResponse({"requests": counted["requests"], "sent": sent})

    async def reset(request: Request) -> Response:
        sent.clear()
        counted["requests"] = 0
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/_stats", stats),
            Route("/_reset", reset, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def one_mode(
    mode: str, upstream: str, sessions: int, tokens: int, redis_url: str | None = None
) -> dict[str, float]:
    """One app, or with `redis_url` two apps sharing that Redis (sessions alternating)."""
    env = {
        "OPENAI_BASE_URL": f"{upstream}/v1",
        "SHARED_ANSWERS": mode,
        "SYSTEM_PROMPT": "",
        "GUARDRAILS": "off",
        "SHOW_METRICS": "false",
    }
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    expected = "".join(f"w{i} " for i in range(tokens))
    with ExitStack() as stack:
        apps = [stack.enter_context(AppProcess(env)) for _ in range(1 if redis_url is None else 2)]
        clients = [ChainlitClient(apps[i % len(apps)].url) for i in range(sessions)]
        await asyncio.gather(*(client.connect() for client in clients))
        async with httpx2.AsyncClient(base_url=upstream, timeout=30) as http:
            await http.post("/_reset")
            marks = await asyncio.gather(*(c.send("the same question") for c in clients))
            sent_at = time.monotonic(), time.time()
            answers = await asyncio.gather(
                *(c.finished(m, within=300) for c, m in zip(clients, marks, strict=True))
            )
            record = (await http.get("/_stats")).json()
        for client in clients:
            await client.close()
    sends = {int(index): sorted(times) for index, times in record["sent"].items()}
    lags, ttfts, mismatches = [], [], 0
    for answer in answers:
        first = True
        for event, text in answer.progress():
            found = TOKEN.findall(text)
            if not found:
                continue
            arrival = sent_at[1] + (event.at - sent_at[0])
            if first:
                ttfts.append((event.at - sent_at[0]) * 1000)
                first = False
            times = sends.get(int(found[-1]), [])
            before = bisect.bisect_right(times, arrival)
            if before:
                lags.append((arrival - times[before - 1]) * 1000)
        if strip_footer(answer.final_assistant_text()) != expected:
            mismatches += 1
    return {
        "requests": record["requests"],
        "mismatches": mismatches,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p95": percentile(ttfts, 95),
        "lag_p50": percentile(lags, 50),
        "lag_p95": percentile(lags, 95),
    }


def row(mode: str, f: dict[str, float]) -> None:
    print(
        f"| {mode} | {f['requests']} | {f['mismatches']} | "
        f"{f['ttft_p50']:.0f} / {f['ttft_p95']:.0f} ms | "
        f"{f['lag_p50']:.0f} / {f['lag_p95']:.0f} ms |"
    )


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    command = [sys.executable, __file__, "--upstream", str(port)]
    command += ["--tps", str(args.tps), "--tokens", str(args.tokens)]
    proc, url = start_upstream(command, port)
    try:
        print(f"{args.sessions} sessions, one identical question, {args.tokens} tokens at "
              f"{args.tps:g} tok/s")  # fmt: skip
        print(
            "| SHARED_ANSWERS | upstream requests | wrong answers | TTFT p50 / p95 "
            "| lag p50 / p95 |"
        )
        print("|---|---|---|---|---|")
        for mode in ("off", "on"):
            row(mode, await one_mode(mode, url, args.sessions, args.tokens))
        if shutil.which("redis-server") is None:
            print("(no redis-server: the two-replica row is left out)")
            return
        with redis_server() as redis_url:
            f = await one_mode("on", url, args.sessions, args.tokens, redis_url)
            row("on, 2 replicas + Redis", f)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--tps", type=float, default=50)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.upstream:
        serve_upstream(parsed.upstream, parsed.tps, parsed.tokens)
    else:
        asyncio.run(main(parsed))
