"""Slow motion's measured pace against the pace asked for.

Streams one offline-model lesson (about 300 tokens at 200 tokens/s upstream) through the app's
own chain (StreamRun -> CoalescingSink -> PacedSink -> a recording sink) at several speeds,
and reports what reached the screen:

- for a rate (words/s): words shown per second, from the first to the last;
- for a factor (0.5x, 0.25x): display time divided by arrival time (should be 1 / factor).

Tests check that slow motion keeps the text whole; this script checks the pace, which is a
matter of timing and so is measured here rather than asserted in tests.
Run: python benchmarks/slow_motion.py
"""

from __future__ import annotations

import asyncio
import time

from streamchat.classroom.tools import PacedSink, Speed
from streamchat.core.coalesce import CoalescingSink
from streamchat.core.provider import Provider
from streamchat.core.relay import StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest
from streamchat.offline import OfflineServer

SPEEDS = ("1x", "0.5x", "0.25x", "20 words/s", "10 words/s")


class TimedSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def write(self, text: str) -> None:
        self.times.append(time.perf_counter())
        await super().write(text)


async def measure(provider: Provider, speed_text: str) -> tuple[str, float, float, int]:
    speed = Speed.parse(speed_text)
    arrivals = TimedSink()  # text as it was passed on to the pacing (after coalescing)
    shown = TimedSink()
    paced = PacedSink(shown, speed)

    class Tee(MemorySink):
        async def write(self, text: str) -> None:
            await arrivals.write(text)
            await paced.write(text)

        async def finish(self, result) -> None:  # type: ignore[no-untyped-def]
            await paced.finish(result)

    request = ChatRequest(messages=(ChatMessage("user", "What is a token?"),), model="")
    await StreamRun(provider, CoalescingSink(Tee(), interval_s=0.04)).run(request)
    arrival_span = arrivals.times[-1] - arrivals.times[0]
    shown_span = shown.times[-1] - shown.times[0]
    words = len(shown.text.split())
    return speed_text, arrival_span, shown_span, words


async def main() -> None:
    with OfflineServer(tokens_per_second=200, first_token_delay_ms=10) as server:
        provider = Provider(base_url=server.base_url)
        print(f"{'speed':<12} {'arrival s':>10} {'display s':>10} {'words':>6}  measured pace")
        for speed_text in SPEEDS:
            name, arrival, display, words = await measure(provider, speed_text)
            speed = Speed.parse(name)
            if speed.words_per_second is not None:
                pace = f"{(words - 1) / display:.2f} words/s (asked {speed.words_per_second:g})"
            else:
                pace = f"{display / arrival:.2f}x as long (asked {1 / speed.factor:g}x)"  # type: ignore[operator]
            print(f"{name:<12} {arrival:>10.2f} {display:>10.2f} {words:>6}  {pace}")
        await provider.aclose()


if __name__ == "__main__":
    asyncio.run(main())
