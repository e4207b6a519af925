"""CPU per streamed token of the HTTP stack under the openai SDK: httpx2 (the SDK's default)
against aiohttp (the SDK's DefaultAioHttpClient, streamchat's default: OPENAI_HTTP_CLIENT).

Starts the fixed-rate upstream (benchmarks/upstream.py: one token per chunk, 200 tokens at 50
tokens/s) and reads N answers at once through streamchat's Provider with each stack in turn,
alternating, in this one process: CPU seconds (user+system) per 1000 tokens read. Only the read
path is measured here; benchmarks/load.py measures the whole app.
Run: python benchmarks/transport.py
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamchat.core.provider import Provider  # noqa: E402
from streamchat.core.types import ChatMessage, ChatRequest  # noqa: E402
from tests.harness import free_port  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def read(stack: str, base_url: str, sessions: int) -> float:
    provider = Provider(api_key="bench", base_url=base_url, http_stack=stack)

    async def one(index: int) -> int:
        question = f"transport {stack} {index} {time.time()}"
        request = ChatRequest(messages=(ChatMessage("user", question),), model="bench")
        return len([delta async for delta in provider.stream(request) if delta.text])

    started = cpu()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(sessions))))
    used = cpu() - started
    await provider.aclose()
    return 1000 * used / tokens


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def main() -> None:
    port = free_port()
    upstream = start_upstream(port)
    try:
        await asyncio.sleep(3)
        base_url = f"http://127.0.0.1:{port}/v1"
        print("| N | httpx2 CPU s / 1000 tokens | aiohttp CPU s / 1000 tokens | ratio |")
        print("|---|---|---|---|")
        for sessions in (10, 25, 50, 100):
            figures: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
            for _ in range(2):
                for stack in ("httpx", "aiohttp"):
                    figures[stack].append(await read(stack, base_url, sessions))
            httpx_cost, aiohttp_cost = min(figures["httpx"]), min(figures["aiohttp"])
            print(
                f"| {sessions} | {httpx_cost:.3f} | {aiohttp_cost:.3f} | "
                f"{aiohttp_cost / httpx_cost:.2f} |"
            )
    finally:
        upstream.terminate()


if __name__ == "__main__":
    asyncio.run(main())
