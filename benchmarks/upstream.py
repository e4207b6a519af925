"""A fixed-rate OpenAI-compatible upstream for benchmarks/load.py, run as its own process.

Every answer is `w0 w1 w2 ...` (one chunk per token, `tokens` tokens at `tps` tokens/s). The
server records when it sent each token of each answer, keyed by the question, and serves the
record at GET /_sent?q=QUESTION, so the benchmark can compute delivery lag honestly.
Run: python benchmarks/upstream.py --port 8100 --tps 50 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SENT: dict[str, list[float]] = {}


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def build(tps: float, tokens: int, ttft_s: float) -> Starlette:
    async def models(request: Request) -> Response:
        model = {"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}
        return JSONResponse({"object": "list", "data": [model]})

    async def completions(request: Request) -> Response:
        body = json.loads(await request.body())
        question = body["messages"][-1]["content"]
        sent = SENT.setdefault(question, [])

        async def stream():  # type: ignore[no-untyped-def]
            yield chunk({"role": "assistant", "content": ""})
            start = time.time() + ttft_s
            for index in range(tokens):
                # Paced against a schedule, not by sleeping a fixed interval, so the rate holds
                # under load; lateness shows up as lag in the benchmark, where it belongs.
                delay = start + index / tps - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(time.time())
                yield chunk({"content": f"w{index} "})
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def sent_times(request: Request) -> Response:
        return JSONResponse(SENT.get(request.query_params["q"], []))

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/_sent", sent_times),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tps", type=float, default=50)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--ttft-ms", type=float, default=100)
    args = parser.parse_args()
    app = build(args.tps, args.tokens, args.ttft_ms / 1000)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
