"""Updates paced by the browser's paint: once a page acknowledges, the next update waits until
it has painted the last, and carries everything that came meanwhile; a page that never
acknowledges is paced as before; nothing is lost or reordered; Stop and finish never wait."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random

import pytest

from streamchat.core.coalesce import CoalescingSink
from streamchat.core.metrics import StreamStats
from streamchat.core.paint import MessagePaint, PaintAcks
from streamchat.core.relay import StreamResult, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason
from tests.scripted import ScriptedSource

STATS = StreamStats(None, 0.0, 0, 0, False, 0)
RESULT = StreamResult("s", "", EndReason.COMPLETE, STATS)
REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
NEVER = 3600.0  # a hold that does not run out within a test


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class BrowserSink(MemorySink):
    """A client whose every write after the first is a `stream_token` update it must paint."""

    def __init__(self, paint: MessagePaint) -> None:
        super().__init__()
        self.paint = paint
        self.wrote = asyncio.Event()

    async def write(self, text: str) -> None:
        if self.writes:
            self.paint.sending()
        await super().write(text)
        self.wrote.set()


def paced(*, max_hold_s: float = NEVER) -> tuple[CoalescingSink, BrowserSink, FakeClock]:
    clock = FakeClock()
    inner = BrowserSink(MessagePaint(max_hold_s=max_hold_s, clock=clock))
    return CoalescingSink(inner, interval_s=0.04, clock=clock), inner, clock


def no_stray_tasks() -> bool:
    current = asyncio.current_task()
    return all(t is current or t.done() for t in asyncio.all_tasks())


async def live(sink: CoalescingSink, inner: BrowserSink, clock: FakeClock) -> None:
    """First text, one update, and the page's word that it painted it."""
    await sink.write("a")
    clock.now += 0.05
    await sink.write("b")
    inner.paint.acknowledge(1)


async def test_update_is_held_until_the_page_has_painted_the_last_one():
    sink, inner, clock = paced()
    await live(sink, inner, clock)
    clock.now += 0.05
    await sink.write("c")  # due, and the page has painted "b": goes
    assert inner.writes == ["a", "b", "c"]
    for piece in "def":
        clock.now += 0.05
        await sink.write(piece)  # due by time, but "c" is not painted yet
    assert inner.writes == ["a", "b", "c"]
    assert sink.next_write_at() is None, "the source need not wait for a time: none is known"
    inner.wrote.clear()
    inner.paint.acknowledge(2)
    await asyncio.wait_for(inner.wrote.wait(), 2)
    assert inner.writes == ["a", "b", "c", "def"], "everything that came meanwhile, in one"
    await sink.finish(RESULT)
    assert no_stray_tasks()


async def test_a_page_that_never_acknowledges_gets_updates_by_time_and_the_whole_answer():
    sink, inner, clock = paced()
    await sink.write("a")
    for piece in "bcd":
        clock.now += 0.05
        await sink.write(piece)
    assert inner.writes == ["a", "b", "c", "d"], "nothing held before a first acknowledgement"
    await sink.write("e")
    await sink.finish(RESULT)
    assert inner.text == "abcde"
    assert no_stray_tasks()


async def test_finish_sends_held_text_at_once_and_cancels_the_wait():
    sink, inner, clock = paced()
    await live(sink, inner, clock)
    clock.now += 0.05
    await sink.write("c")
    clock.now += 0.05
    await sink.write("d")  # held
    await sink.finish(RESULT)
    assert inner.writes == ["a", "b", "c", "d"]
    assert inner.result is RESULT
    inner.paint.acknowledge(2)  # too late to matter, and harmless
    assert inner.writes == ["a", "b", "c", "d"]
    assert no_stray_tasks()


async def test_replace_is_never_held_and_keeps_order():
    sink, inner, clock = paced()
    await live(sink, inner, clock)
    clock.now += 0.05
    await sink.write("c")
    clock.now += 0.05
    await sink.write("d")  # held
    await sink.replace("ab")
    assert inner.writes == ["a", "b", "c", "d"]
    assert inner.text == "ab"
    await sink.finish(RESULT)


async def test_a_lost_acknowledgement_holds_an_update_only_until_the_hold_runs_out():
    clock = FakeClock()
    # The hold is measured on the paint's clock (moved here by hand) and its timer on the
    # loop's: a tiny hold lets the timer fire at once.
    inner = BrowserSink(MessagePaint(max_hold_s=0.001, clock=clock))
    sink = CoalescingSink(inner, interval_s=0.04, clock=clock)
    await live(sink, inner, clock)
    clock.now += 0.05
    await sink.write("c")
    await sink.write("d")  # not due yet: a timer
    inner.wrote.clear()
    clock.now += 0.05
    await asyncio.wait_for(inner.wrote.wait(), 2)  # "c" never acknowledged: sent anyway
    assert inner.writes == ["a", "b", "c", "d"]
    await sink.finish(RESULT)
    assert no_stray_tasks()


async def test_stop_while_an_update_is_held_finishes_with_everything_shown():
    inner = BrowserSink(MessagePaint(max_hold_s=NEVER))
    inner.paint.live = True  # a page that acknowledges, and has not painted a thing yet
    source = ScriptedSource(["a", "b", "c", "d"], hang_after=3)
    task = asyncio.create_task(
        StreamRun(source, CoalescingSink(inner, interval_s=1e-9)).run(REQUEST)
    )
    await asyncio.wait_for(source.reached_hang.wait(), 2)
    assert inner.writes == ["a", "b"], "c waits for the paint of b"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert inner.result is not None and inner.result.reason is EndReason.STOPPED_BY_USER
    assert inner.result.text == "abc"
    assert inner.writes == ["a", "b", "c"], "held text goes out with the end"
    assert source.closed.is_set()
    assert no_stray_tasks()


@pytest.mark.parametrize("seed", range(20))
async def test_nothing_is_lost_or_reordered_whatever_the_acknowledgements(seed):
    rng = random.Random(seed)
    sink, inner, clock = paced(max_hold_s=NEVER)
    pieces = [f"<{i}>" for i in range(200)]
    for piece in pieces:
        clock.now += rng.choice([0.0, 0.01, 0.05])
        await sink.write(piece)
        if rng.random() < 0.2:
            inner.paint.acknowledge(rng.randint(0, inner.paint.sent + 1))
        if rng.random() < 0.3:
            await asyncio.sleep(0)  # lets a write released by an acknowledgement run
    await sink.finish(RESULT)
    assert inner.text == "".join(pieces)
    assert all(inner.writes), "no empty updates"
    assert no_stray_tasks()


def test_acknowledgements_from_the_network_are_checked_and_unknown_ids_ignored():
    acks = PaintAcks()
    paint = acks.track("m1")
    paint.sending()
    paint.sending()
    for bad in (None, "m1", [1], {"id": "m1"}, {"id": 1, "n": 1}, {"id": "m1", "n": "2"}):
        acks.receive(bad)
    acks.receive({"id": "m1", "n": True})  # a bool is not a count
    assert not paint.live
    acks.receive({"id": "other", "n": 5})
    assert not paint.live
    acks.receive({"id": "m1", "n": 99})
    assert paint.live and paint.painted == 2, "never more than was sent"


def test_a_finished_message_is_not_kept_for_acknowledgements():
    acks = PaintAcks()
    paint = acks.track("m1")
    paint.sending()
    del paint
    gc.collect()
    acks.receive({"id": "m1", "n": 1})  # nothing to find, nothing kept
    kept = acks.track("m2")
    assert list(acks._messages) == ["m2"]
    assert kept.sent == 0


def test_holding_ends_when_the_page_has_painted_every_update_sent():
    clock = FakeClock()
    paint = MessagePaint(max_hold_s=NEVER, clock=clock)
    paint.sending()
    assert not paint.holding(), "not before the page has said anything"
    paint.acknowledge(0)
    assert paint.holding()
    paint.sending()
    paint.acknowledge(1)
    assert paint.holding()
    paint.acknowledge(2)
    assert not paint.holding()
    paint.sending()
    clock.now += NEVER
    assert not paint.holding(), "the hold runs out"


def test_after_a_slow_paint_the_page_rests_as_long_before_the_next_update():
    clock = FakeClock()
    paint = MessagePaint(max_hold_s=NEVER, clock=clock)
    paint.sending()
    paint.acknowledge(0)
    clock.now += 0.3
    paint.acknowledge(1)  # painted 0.3 s after it was sent
    clock.now += 0.2
    assert paint.holding(), "the page has its rest"
    clock.now += 0.11
    assert not paint.holding()


async def test_a_held_update_goes_when_the_page_has_had_its_rest():
    paint_clock = FakeClock()
    inner = BrowserSink(MessagePaint(max_hold_s=NEVER, clock=paint_clock))
    sink = CoalescingSink(inner, interval_s=1e-9)
    await sink.write("a")
    await sink.write("b")
    inner.paint.acknowledge(0)  # the page acknowledges; "b" not painted yet
    await sink.write("c")
    paint_clock.now += 0.2
    inner.paint.acknowledge(1)  # painted after 0.2 s: the page rests 0.2 s
    await sink.write("d")
    assert inner.writes == ["a", "b"], "held through the rest"
    inner.wrote.clear()
    await asyncio.wait_for(inner.wrote.wait(), 5)
    assert inner.writes == ["a", "b", "cd"]
    await sink.finish(RESULT)
    assert no_stray_tasks()


STREAM: contextvars.ContextVar[str] = contextvars.ContextVar("stream")


class ContextSink(BrowserSink):
    """Like Chainlit's own emit: writes only work with the stream's context variables."""

    async def write(self, text: str) -> None:
        assert STREAM.get(None) == "the stream", "written outside the stream's context"
        await super().write(text)


async def test_an_update_released_by_the_page_is_written_in_the_streams_context():
    clock = FakeClock()
    inner = ContextSink(MessagePaint(max_hold_s=NEVER, clock=clock))
    sink = CoalescingSink(inner, interval_s=0.04, clock=clock)

    async def stream() -> None:
        STREAM.set("the stream")
        await live(sink, inner, clock)
        clock.now += 0.05
        await sink.write("c")
        clock.now += 0.05
        await sink.write("d")  # held

    await asyncio.create_task(stream())
    inner.wrote.clear()
    inner.paint.acknowledge(2)  # from a task without the stream's context, as a socket handler
    await asyncio.wait_for(inner.wrote.wait(), 2)
    assert inner.writes == ["a", "b", "c", "d"]
    await sink.finish(RESULT)
    assert no_stray_tasks()
