"""The coalescer: first token at once, later tokens merged per interval, bounded by size,
flushed at the end; never reordered, lost or duplicated, also when cancelled mid-flush."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamchat.core.coalesce import CoalescingSink
from streamchat.core.metrics import StreamStats
from streamchat.core.relay import StreamResult, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason
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


async def test_writes_within_an_interval_are_merged_into_one_update_sent_by_the_timer():
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
            await asyncio.sleep(rng.random() * 0.004)  # the random timing under test
    await sink.finish(RESULT)
    assert "".join(inner.writes) == "".join(pieces)
    assert len(inner.writes) < len(pieces)


async def test_slow_client_gets_merged_updates_not_one_per_token():
    class SlowSink(SignallingSink):
        async def write(self, text: str) -> None:
            await asyncio.sleep(0.02)  # a slow client: not a wait
            await super().write(text)

    inner = SlowSink()
    sink = CoalescingSink(inner, interval_s=0.005)
    for i in range(200):
        await sink.write(f"{i},")
        await asyncio.sleep(0)  # one token per loop turn
    await sink.finish(RESULT)
    assert "".join(inner.writes) == "".join(f"{i}," for i in range(200))
    assert len(inner.writes) < 50


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TaskRecordingSink(SignallingSink):
    """Keeps up with every write; notes which task each write ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task | None] = []

    async def write(self, text: str) -> None:
        self.tasks.append(asyncio.current_task())
        await super().write(text)


class BlockingSink(SignallingSink):
    """A client that stopped reading: every write waits for `release`, and says so."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()

    def would_wait(self) -> bool:
        return not self.release.is_set()

    async def write(self, text: str) -> None:
        self.blocked.set()
        await self.release.wait()
        await super().write(text)


async def test_text_due_when_the_next_token_arrives_goes_out_in_the_streaming_task():
    clock, inner = FakeClock(), TaskRecordingSink()
    sink = CoalescingSink(inner, interval_s=0.04, clock=clock)
    tasks_before = len(asyncio.all_tasks())
    await sink.write("a")
    clock.now += 0.02
    await sink.write("b")
    assert inner.writes == ["a"], "not due yet"
    clock.now += 0.03
    await sink.write("c")
    assert inner.writes == ["a", "bc"], "due: sent with the token that found it due"
    assert inner.tasks == [asyncio.current_task()] * 2
    assert len(asyncio.all_tasks()) == tasks_before, "no task per update"
    await sink.finish(RESULT)
    assert no_stray_tasks()


async def test_the_next_update_comes_a_whole_interval_after_the_last_write_ended():
    clock = FakeClock()

    class SlowToAccept(TaskRecordingSink):
        async def write(self, text: str) -> None:
            clock.now += 0.03  # the client took 30 ms to accept the update
            await super().write(text)

    inner = SlowToAccept()
    sink = CoalescingSink(inner, interval_s=0.04, clock=clock)
    await sink.write("a")  # ends at +0.03
    clock.now += 0.05
    await sink.write("b")  # due (+0.08 >= +0.07); ends at +0.11
    clock.now += 0.03
    await sink.write("c")  # +0.14: 0.03 after that write ended, though 0.06 after it began
    assert inner.writes == ["a", "b"]
    clock.now += 0.01
    await sink.write("d")  # +0.16: due
    assert inner.writes == ["a", "b", "cd"]
    await sink.finish(RESULT)


async def test_a_timer_armed_for_text_a_token_already_sent_does_not_send_early(monkeypatch):
    clock, inner = FakeClock(), TaskRecordingSink()
    sink = CoalescingSink(inner, interval_s=0.02, clock=clock)
    timer_fired = asyncio.Event()
    due = sink._due
    monkeypatch.setattr(sink, "_due", lambda: (due(), timer_fired.set()))
    await sink.write("a")
    await sink.write("b")  # pending: the timer is armed (0.02 + 0.005 s)
    clock.now += 0.021
    await sink.write("c")  # due: "bc" goes out now
    clock.now += 0.001
    await sink.write("d")  # due 0.02 after "bc", not when the old timer fires
    inner.wrote.clear()
    await asyncio.wait_for(timer_fired.wait(), 2)  # the old timer has fired
    assert inner.writes == ["a", "bc"], "no update 0.001 s after the last one"
    clock.now += 0.02
    await asyncio.wait_for(inner.wrote.wait(), 2)  # the timer, re-armed, sends it when due
    assert inner.writes == ["a", "bc", "d"]
    await sink.finish(RESULT)
    assert no_stray_tasks()


async def test_a_write_that_sends_the_waiting_text_stops_the_timer_armed_for_it(monkeypatch):
    clock, inner = FakeClock(), TaskRecordingSink()
    sink = CoalescingSink(inner, interval_s=0.2, clock=clock)
    fired: list[float] = []
    due = sink._due
    monkeypatch.setattr(sink, "_due", lambda: (fired.append(clock.now), due()))
    for _ in range(5):  # tokens every 150 ms: every other one finds the text due
        await sink.write("t")
        clock.now += 0.15
        await asyncio.sleep(0)  # the next token comes long before a timer could fire
    # Past when any timer armed for text already sent would fire: an absence takes its time.
    await asyncio.sleep(0.3)
    assert "".join(inner.writes) == "ttttt" and len(inner.writes) == 3
    assert fired == [], "while tokens flow, no timer wakes the loop"
    await sink.finish(RESULT)


async def test_the_next_write_is_due_an_interval_after_the_last_one():
    clock, inner = FakeClock(), TaskRecordingSink()
    sink = CoalescingSink(inner, interval_s=0.04, clock=clock)
    assert sink.next_write_at() is None, "the first text goes out at once"
    await sink.write("a")
    assert sink.next_write_at() == pytest.approx(clock.now + 0.04)
    clock.now += 0.01
    await sink.write("b")
    assert sink.next_write_at() == pytest.approx(clock.now + 0.03), "waiting text: same time"
    await sink.finish(RESULT)
    assert CoalescingSink(MemorySink(), interval_s=0).next_write_at() is None


async def test_while_a_slow_client_takes_an_update_text_is_wanted_at_once():
    inner = BlockingSink()
    sink = CoalescingSink(inner, interval_s=0.001)
    await sink.write("a")  # the client is stuck: written from a task of its own
    await asyncio.wait_for(inner.blocked.wait(), 2)
    assert sink.next_write_at() is None, "what comes meanwhile merges into the next write"
    await sink.write("b")
    inner.release.set()
    await sink.finish(RESULT)
    assert "".join(inner.writes) == "ab"


async def test_a_sink_that_would_wait_never_holds_up_the_caller_and_text_merges():
    inner = BlockingSink()
    sink = CoalescingSink(inner, interval_s=0.001)
    for i in range(50):
        await sink.write(f"{i},")  # returns at once although the client takes nothing
        await asyncio.sleep(0.0005)  # tokens paced as a model sends them: not a wait
    await asyncio.wait_for(inner.blocked.wait(), 2)
    assert inner.writes == []
    inner.release.set()
    await sink.finish(RESULT)
    assert "".join(inner.writes) == "".join(f"{i}," for i in range(50))
    assert len(inner.writes) <= 3, "what came while the client was stuck went out together"
    assert no_stray_tasks()


async def test_a_sink_that_does_not_say_gets_the_first_token_at_once_and_the_rest_from_a_task():
    class Unknown:
        def __init__(self) -> None:
            self.inner = TaskRecordingSink()

        async def start(self) -> None: ...

        async def write(self, text: str) -> None:
            await self.inner.write(text)

        async def replace(self, text: str) -> None: ...

        async def finish(self, result: StreamResult) -> None:
            await self.inner.finish(result)

    clock, unknown = FakeClock(), Unknown()
    sink = CoalescingSink(unknown, interval_s=0.04, clock=clock)
    await sink.write("a")
    clock.now += 0.05
    await sink.write("b")
    await sink.finish(RESULT)
    assert unknown.inner.writes == ["a", "b"]
    assert unknown.inner.tasks[0] is asyncio.current_task()
    assert unknown.inner.tasks[1] is not asyncio.current_task()


async def test_cancel_mid_flush_still_finishes_with_everything_shown():
    inner = BlockingSink()
    source = ScriptedSource(["a", "b", "c", "d"], hang_after=3)
    sink = CoalescingSink(inner, interval_s=0.001)
    request = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
    task = asyncio.create_task(StreamRun(source, sink).run(request))
    # The stream reads on while the client's first update is stuck.
    await asyncio.wait_for(source.reached_hang.wait(), 2)
    await asyncio.wait_for(inner.blocked.wait(), 2)
    task.cancel()
    inner.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert inner.result is not None and inner.result.reason is EndReason.STOPPED_BY_USER
    assert inner.result.text == "abc"
    assert "".join(inner.writes) == "abc"
    assert source.closed.is_set()
    assert no_stray_tasks()
