"""StreamRun: text flows provider -> sink in order; the sink is finished exactly once with an
honest outcome; Stop (cancellation) keeps the partial answer and closes the upstream."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamchat.chat import ChatOptions, ChatSession
from streamchat.core.coalesce import CoalescingSink
from streamchat.core.errors import RateLimited, StreamBroken
from streamchat.core.relay import Resilience, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, Delta, EndReason, Usage
from tests.scripted import ScriptedSource

REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
ONE_TRY = Resilience(retries=0, resumes=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


async def test_complete_answer_reaches_the_sink_in_order_with_stats():
    source = ScriptedSource(["Hel", "lo", " world"], usage=Usage(5, 3))
    sink = MemorySink()
    result = await StreamRun(source, sink, clock=FakeClock()).run(REQUEST)
    assert sink.writes == ["Hel", "lo", " world"]
    assert result.text == "Hello world" == sink.text
    assert result.reason is EndReason.COMPLETE
    assert sink.result is result
    assert result.stats.completion_tokens == 3 and result.stats.usage_reported
    assert result.stats.first_token_s == pytest.approx(0.5)
    assert result.note() is None
    assert source.closed.is_set()


async def test_tokens_are_counted_from_chunks_when_usage_is_missing():
    result = await StreamRun(ScriptedSource(["a", "b", "c", "d"]), MemorySink()).run(REQUEST)
    assert result.stats.completion_tokens == 4
    assert not result.stats.usage_reported
    assert result.stats.summary().count("~4 tokens") == 1


async def test_length_finish_reason_is_reported():
    result = await StreamRun(ScriptedSource(["a"], finish_reason="length"), MemorySink()).run(
        REQUEST
    )
    assert result.reason is EndReason.LENGTH
    assert "length limit" in (result.note() or "")


async def test_error_before_any_text_finishes_the_sink_with_the_error():
    error = RateLimited("The model provider is rate-limiting requests (429).", retry_after=2)
    sink = MemorySink()
    result = await StreamRun(ScriptedSource([], fail_with=error), sink, resilience=ONE_TRY).run(
        REQUEST
    )
    assert result.reason is EndReason.ERROR and result.error is error
    assert result.text == "" and sink.result is result
    assert result.note() is None  # nothing was shown, so there is nothing to mark


async def test_broken_stream_keeps_the_partial_answer_and_marks_it():
    error = StreamBroken("The connection to the provider was lost in the middle of the answer.")
    sink = MemorySink()
    source = ScriptedSource(["one ", "two "], fail_with=error)
    result = await StreamRun(source, sink, resilience=ONE_TRY).run(REQUEST)
    assert result.text == "one two " == sink.text
    assert result.interrupted
    assert result.note() == "Interrupted: connection lost after 2 tokens."


async def test_cancel_mid_stream_finishes_sink_as_stopped_and_closes_upstream():
    source = ScriptedSource(["a", "b", "c", "d"], hang_after=2)
    sink = MemorySink()
    run = StreamRun(source, sink)
    task = asyncio.create_task(run.run(REQUEST))
    await asyncio.wait_for(source.reached_hang.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed.is_set()
    assert sink.result is not None
    assert sink.result.reason is EndReason.STOPPED_BY_USER
    assert sink.result.text == "ab" == run.last_text
    assert sink.result.note() == "Stopped by you after 2 tokens."


async def test_cancel_while_the_sink_is_writing_still_closes_upstream():
    class SlowSink(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.writing = asyncio.Event()

        async def write(self, text: str) -> None:
            await super().write(text)
            self.writing.set()
            await asyncio.Event().wait()

    source = ScriptedSource(["a", "b"])
    sink = SlowSink()
    task = asyncio.create_task(StreamRun(source, sink).run(REQUEST))
    await asyncio.wait_for(sink.writing.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed.is_set()
    assert sink.result is not None and sink.result.reason is EndReason.STOPPED_BY_USER


async def test_chat_session_sends_history_and_records_the_answer():
    source = ScriptedSource(["Hi", " there"])
    chat = ChatSession(source, ChatOptions(model="m", temperature=0.3, system_prompt="sys"))
    await chat.answer("hello", MemorySink())
    await chat.answer("again", MemorySink())
    second = source.requests[1]
    assert [(m.role, m.content) for m in second.messages] == [
        ("system", "sys"),
        ("user", "hello"),
        ("assistant", "Hi there"),
        ("user", "again"),
    ]
    assert second.temperature == 0.3 and second.model == "m"


async def test_chat_session_keeps_a_stopped_partial_answer_in_history():
    source = ScriptedSource(["par", "tial", "never"], hang_after=2)
    chat = ChatSession(source, ChatOptions(model="m", temperature=0.3, system_prompt=""))
    task = asyncio.create_task(chat.answer("q", MemorySink()))
    await asyncio.wait_for(source.reached_hang.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    last = chat.history.turns[-1]
    assert (last.role, last.content, last.ended) == (
        "assistant",
        "partial",
        EndReason.STOPPED_BY_USER,
    )


async def test_chat_session_leaves_out_old_turns_over_budget_and_says_so():
    source = ScriptedSource(["x" * 400])
    chat = ChatSession(
        source,
        ChatOptions(model="m", temperature=0.3, system_prompt="sys"),
        max_history_tokens=300,
    )
    first = MemorySink()
    await chat.answer("one " + "q" * 400, first)
    assert first.result is not None and first.result.history_note() is None
    await chat.answer("two", MemorySink())
    third = MemorySink()
    await chat.answer("three", third)
    sent = source.requests[2].messages
    assert [m.content[:3] for m in sent] == ["sys", "two", "xxx", "thr"]
    assert third.result is not None and third.result.dropped_messages == 2
    assert (
        third.result.history_note()
        == "2 earlier messages were left out to fit the model's context."
    )
    assert len(chat.history.turns) == 6, "the chat's own history keeps everything"


async def test_a_request_beside_the_chat_has_its_history_and_records_nothing():
    source = ScriptedSource(["x" * 400])
    chat = ChatSession(
        source,
        ChatOptions(model="m", temperature=0.3, system_prompt="sys", language="hinglish"),
        max_history_tokens=300,
    )
    await chat.answer("one " + "q" * 1200, MemorySink())
    request = chat.request_for("compare this", model="other")
    assert request.model == "other" and request.temperature == 0.3
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[0].content == chat.options.effective_system_prompt != "sys"
    assert request.messages[-1].content == "compare this"
    assert request.dropped_messages == 2, "the old exchange does not fit beside it"
    assert len(chat.history.turns) == 2, "nothing recorded"
    chat.max_history_tokens = None
    whole = chat.request_for("compare this")
    assert [m.role for m in whole.messages] == ["system", "user", "assistant", "user"]
    assert whole.model == "m" and whole.dropped_messages == 0


class ReadsSource:
    """Plays network reads: each inner list is the text of the Deltas one read brought, all
    but the last saying `more`. Records the pace it was given."""

    def __init__(self, reads: list[list[str]], *, fail_with: StreamBroken | None = None) -> None:
        self.reads = reads
        self.fail_with = fail_with
        self.paces: list[object] = []

    async def stream(self, request: ChatRequest, *, pace=None):  # type: ignore[no-untyped-def]
        self.paces.append(pace)
        index = 0
        for read in self.reads:
            for i, text in enumerate(read):
                more = i < len(read) - 1 or self.fail_with is not None
                yield Delta(text=text, index=index, more=more)
                index += 1
        if self.fail_with is not None:
            raise self.fail_with
        yield Delta(text="", index=index, finish_reason="stop")


async def test_text_that_came_in_one_network_read_reaches_the_sink_in_one_write():
    source = ReadsSource([["a", "b", "c"], ["d"], ["", "e", "f"]])
    sink = MemorySink()
    result = await StreamRun(source, sink).run(REQUEST)
    assert sink.writes == ["abc", "d", "ef"]
    assert result.text == "abcdef"
    assert result.stats.completion_tokens == 6, "every chunk still counts"


async def test_text_before_a_failure_that_came_with_more_to_follow_is_still_shown():
    broken = StreamBroken("The connection to the provider was lost.", cause="connection lost")
    source = ReadsSource([["a", "b"]], fail_with=broken)
    sink = MemorySink()
    result = await StreamRun(source, sink, resilience=ONE_TRY).run(REQUEST)
    assert sink.text == "ab" == result.text
    assert result.reason is EndReason.ERROR and result.error is broken


async def test_the_source_is_told_when_the_coalescing_sink_next_shows_text():
    source = ReadsSource([["a"]])
    sink = CoalescingSink(MemorySink(), interval_s=0.04)
    await StreamRun(source, sink).run(REQUEST)
    [pace] = source.paces
    assert callable(pace) and sink.next_write_at() is not None
    assert pace() == sink.next_write_at(), "read when the next update is due"


async def test_reads_are_never_held_so_long_that_the_wait_could_pass_for_a_stall():
    source = ReadsSource([["a"]])
    sink = CoalescingSink(MemorySink(), interval_s=5)  # a long STREAM_FLUSH_MS
    run = StreamRun(source, sink, resilience=Resilience(stall_s=0.2))
    await run.run(REQUEST)
    [pace] = source.paces
    assert callable(pace)
    assert pace() <= time.monotonic() + 0.1, "at most half the stall limit"
    plain = ReadsSource([["a"]])
    await StreamRun(plain, MemorySink()).run(REQUEST)
    assert plain.paces == [None], "a sink that does not say: the source reads as it likes"


async def test_a_run_that_watches_every_chunk_reads_them_as_they_arrive():
    # The classroom's chunk log and timeline show when each chunk arrived: no read pacing.
    source = ReadsSource([["a"], ["b"]])
    seen: list[str] = []
    sink = CoalescingSink(MemorySink(), interval_s=0.04)
    await StreamRun(source, sink, on_delta=lambda d: seen.append(d.text)).run(REQUEST)
    assert source.paces == [None] and seen == ["a", "b", ""]
