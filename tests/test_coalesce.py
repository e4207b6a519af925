"""The coalescer: first token at once, later tokens merged per interval, bounded by size,
flushed at the end; never reordered, lost or duplicated, also when cancelled mid-flush."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamchat.coalesce import CoalescingSink
from streamchat.metrics import StreamStats
from streamchat.relay import StreamResult, StreamRun
from streamchat.sinks import MemorySink
from streamchat.types import ChatMessage, ChatRequest, EndReason
from tests.scripted import ScriptedSource

STATS = StreamStats(None, 0.0, 0, 0, False, 0)
RESULT = StreamResult("s", "", EndReason.COMPLETE, STATS)


class SignallingSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.wrote = asyncio.Event()
        self.ops: list[tuple[str, str]] = []

    async def write(self, text: str) -> None:
        await super().write(text)
        self.ops.append(("write", text))
        self.wrote.set()

    async def replace(self, text: str) -> None:
        await super().replace(text)
        self.ops.append(("replace", text))


def no_stray_tasks() -> bool:
    current = asyncio.current_task()
    return all(t is current or t.done() for t in asyncio.all_tasks())


async def test_first_write_goes_out_immediately():
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=10)
    await sink.write("first")
    assert inner.writes == ["first"]
    await sink.finish(RESULT)


async def test_writes_within_an_interval_are_merged_into_one_update():
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=0.05)
    await sink.write("a")
    inner.wrote.clear()
    for piece in ["b", "c", "d"]:
        await sink.write(piece)
    assert inner.writes == ["a"], "later tokens wait for the interval"
    await asyncio.wait_for(inner.wrote.wait(), 2)
    assert inner.writes == ["a", "bcd"]
    await sink.finish(RESULT)
    assert no_stray_tasks()


async def test_size_bound_flushes_without_waiting_for_the_timer():
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=60, max_chars=5)
    await sink.write("x")
    await sink.write("12")
    await sink.write("345")
    assert inner.writes == ["x", "12345"]
    await sink.finish(RESULT)


async def test_finish_sends_what_is_waiting_and_leaves_no_timer_running():
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=60)
    await sink.write("a")
    await sink.write("b")
    await sink.finish(RESULT)
    assert inner.writes == ["a", "b"] and inner.result is RESULT
    assert no_stray_tasks()


async def test_replace_sends_pending_text_first_so_order_holds():
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=60)
    await sink.write("a")
    await sink.write("b")
    await sink.replace("safe")
    assert inner.ops == [("write", "a"), ("write", "b"), ("replace", "safe")]
    await sink.finish(RESULT)


async def test_zero_interval_passes_every_token_through():
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=0)
    for piece in "abc":
        await sink.write(piece)
    assert inner.writes == ["a", "b", "c"]
    await sink.finish(RESULT)


@pytest.mark.parametrize("seed", range(5))
async def test_random_timing_never_reorders_loses_or_duplicates(seed):
    rng = random.Random(seed)
    pieces = [f"<{i}>" for i in range(300)]
    inner = SignallingSink()
    sink = CoalescingSink(inner, interval_s=0.002, max_chars=rng.randint(5, 200))
    for piece in pieces:
        await sink.write(piece)
        if rng.random() < 0.2:
            await asyncio.sleep(rng.random() * 0.004)
    await sink.finish(RESULT)
    assert "".join(inner.writes) == "".join(pieces)
    assert len(inner.writes) < len(pieces)


async def test_slow_client_gets_merged_updates_not_one_per_token():
    class SlowSink(SignallingSink):
        async def write(self, text: str) -> None:
            await asyncio.sleep(0.02)
            await super().write(text)

    inner = SlowSink()
    sink = CoalescingSink(inner, interval_s=0.005)
    for i in range(200):
        await sink.write(f"{i},")
        await asyncio.sleep(0)
    await sink.finish(RESULT)
    assert "".join(inner.writes) == "".join(f"{i}," for i in range(200))
    assert len(inner.writes) < 50


async def test_cancel_mid_flush_still_finishes_with_everything_shown():
    class BlockingSink(SignallingSink):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def write(self, text: str) -> None:
            if len(self.writes) == 1:
                self.wrote.set()
                await self.release.wait()
            await super().write(text)

    inner = BlockingSink()
    source = ScriptedSource(["a", "b", "c", "d"], hang_after=3)
    sink = CoalescingSink(inner, interval_s=0.001)
    request = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
    task = asyncio.create_task(StreamRun(source, sink).run(request))
    await asyncio.wait_for(source.reached_hang.wait(), 2)
    await asyncio.wait_for(inner.wrote.wait(), 2)
    task.cancel()
    inner.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert inner.result is not None and inner.result.reason is EndReason.STOPPED_BY_USER
    assert inner.result.text == "abc"
    assert "".join(inner.writes) == "abc"
    assert source.closed.is_set()
