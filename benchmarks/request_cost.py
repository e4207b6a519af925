"""CPU to send one chat request, by history length: the SDK's typed method against ours.

`chat.completions.create(...)` walks the request body against the SDK's parameter types before
sending it; streamchat posts its body (plain strings and numbers) through the same client as it
is (`Provider._open`, tests/test_providers.py checks the upstream sees the same request). Both
run here against an in-process transport that answers at once with an empty stream, so only
the client's work is measured: building, sending and opening the response.

Run: python benchmarks/request_cost.py
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamchat.core.provider import Provider  # noqa: E402
from streamchat.core.types import ChatMessage, ChatRequest  # noqa: E402

EMPTY_STREAM = (
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)


def handler(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=EMPTY_STREAM)


def provider() -> Provider:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return Provider(api_key="x", base_url="http://bench.test/v1", http_client=client)


def request(messages: int) -> ChatRequest:
    history = [ChatMessage("system", "You are a helpful assistant.")]
    for i in range(messages - 1):
        role = "user" if i % 2 == 0 else "assistant"
        history.append(ChatMessage(role, f"message {i}: " + "some words of history " * 8))
    return ChatRequest(messages=tuple(history), model="bench", temperature=0.7)


async def typed(p: Provider, req: ChatRequest) -> None:
    completions = p.client.chat.completions.with_streaming_response
    kwargs = req.as_kwargs()
    async with completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    ) as response:
        await response.read()


async def ours(p: Provider, req: ChatRequest) -> None:
    async with contextlib.AsyncExitStack() as stack:
        response = await p._open(stack, req, p._fast_post)
        await response.read()


async def cost(send, p: Provider, req: ChatRequest, rounds: int) -> float:
    await send(p, req)  # warm up
    started = time.process_time()
    for _ in range(rounds):
        await send(p, req)
    return (time.process_time() - started) / rounds * 1000


async def main() -> None:
    p = provider()
    print("| history messages | SDK typed create, CPU ms | streamchat, CPU ms | ratio |")
    print("|---|---|---|---|")
    for messages in (2, 10, 20, 50):
        req = request(messages)
        figures: dict[str, list[float]] = {"typed": [], "ours": []}
        for _ in range(3):  # alternating, best of three each
            figures["typed"].append(await cost(typed, p, req, 100))
            figures["ours"].append(await cost(ours, p, req, 100))
        t, o = min(figures["typed"]), min(figures["ours"])
        print(f"| {messages} | {t:.2f} | {o:.2f} | {o / t:.2f} |")
    await p.aclose()


if __name__ == "__main__":
    asyncio.run(main())
