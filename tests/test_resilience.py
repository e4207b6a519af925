"""Retries before the first token, resume after it, stall detection, honest stats."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamchat.core.errors import (
    AuthenticationFailed,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
)
from streamchat.core.relay import CONTINUE_INSTRUCTION, Resilience, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason, Usage
from tests.scripted import RecordingSleep, ScriptedSource, SequenceSource

REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")


def run(source, sink=None, sleep=None, **policy):
    return StreamRun(
        source,
        sink or MemorySink(),
        resilience=Resilience(**policy),
        sleep=sleep or RecordingSleep(),
        rng=random.Random(0),
    )


def broken(cause="dropped"):
    return StreamBroken("The connection to the provider was lost.", cause=cause)


async def test_rate_limit_then_success_waits_at_least_retry_after():
    sleep = RecordingSleep()
    source = SequenceSource(
        ScriptedSource([], fail_with=RateLimited("429", retry_after=3)),
        ScriptedSource(["fine"]),
    )
    result = await run(source, sleep=sleep, retries=2).run(REQUEST)
    assert result.reason is EndReason.COMPLETE and result.text == "fine"
    assert sleep.delays and sleep.delays[0] >= 3
    assert result.stats.attempts == 2 and result.stats.resumes == 0


async def test_retry_after_is_capped():
    sleep = RecordingSleep()
    source = SequenceSource(
        ScriptedSource([], fail_with=RateLimited("429", retry_after=3600)),
        ScriptedSource(["ok"]),
    )
    await run(source, sleep=sleep, retry_after_cap_s=30).run(REQUEST)
    assert sleep.delays == [30]


async def test_backoff_grows_and_is_bounded():
    policy = Resilience(backoff_base_s=0.5, backoff_cap_s=4)
    rng = random.Random(1)
    error = ProviderUnavailable("500")
    delays = [policy.backoff(n, error, rng) for n in range(8)]
    assert all(0.25 <= d <= 4 for d in delays)
    assert delays[-1] > delays[0]


async def test_server_errors_exhaust_retries_then_report_one_clear_error():
    sleep = RecordingSleep()
    failures = [
        ScriptedSource([], fail_with=ProviderUnavailable("had an error (500)")) for _ in range(3)
    ]
    sink = MemorySink()
    result = await run(SequenceSource(*failures), sink=sink, sleep=sleep, retries=2).run(REQUEST)
    assert result.reason is EndReason.ERROR
    assert result.error is not None and "500" in result.error.user_message
    assert len(sleep.delays) == 2 and result.stats.attempts == 3
    assert sink.result is result


async def test_non_retryable_errors_are_not_retried():
    source = SequenceSource(ScriptedSource([], fail_with=AuthenticationFailed("401")))
    result = await run(source, retries=5).run(REQUEST)
    assert result.reason is EndReason.ERROR and result.stats.attempts == 1


async def test_drop_after_first_token_resumes_into_the_same_sink_without_repeats():
    source = SequenceSource(
        ScriptedSource(["Streaming sends ", "small pieces ", "called"], fail_with=broken()),
        ScriptedSource([" pieces called", " tokens."]),
    )
    sink = MemorySink()
    result = await run(source, sink=sink, resumes=1).run(REQUEST)
    assert result.text == sink.text == "Streaming sends small pieces called tokens."
    assert result.reason is EndReason.COMPLETE
    assert result.stats.resumes == 1 and result.stats.attempts == 2
    assert result.note() == "Resumed once after the stream broke."
    resume_request = source.requests[1]
    assert resume_request.messages[-2:] == (
        ChatMessage("assistant", "Streaming sends small pieces called"),
        ChatMessage("user", CONTINUE_INSTRUCTION),
    )


async def test_resumes_are_bounded_then_the_answer_is_marked_interrupted():
    source = SequenceSource(
        ScriptedSource(["one ", "two "], fail_with=broken()),
        ScriptedSource([" three "], fail_with=broken()),
    )
    result = await run(source, resumes=1).run(REQUEST)
    assert result.reason is EndReason.ERROR and result.interrupted
    assert result.text == "one two  three "
    assert result.note() == "Interrupted: connection lost after 3 tokens."


async def test_stall_after_first_token_is_detected_and_resumed():
    stalled = ScriptedSource(["alpha ", "beta ", "never"], hang_after=2)
    source = SequenceSource(stalled, ScriptedSource(["gamma."]))
    result = await run(source, stall_s=0.05, resumes=1).run(REQUEST)
    assert result.text == "alpha beta gamma."
    assert stalled.closed.is_set(), "the stalled upstream response is closed"
    assert result.stats.resumes == 1


class SlowSink(MemorySink):
    """A screen that takes `delay` for every write (a slow client)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def write(self, text: str) -> None:
        await asyncio.sleep(self.delay)  # the slow screen under test: not a wait
        await super().write(text)


async def test_a_slow_screen_is_not_taken_for_a_stalled_provider():
    # Each write takes twice the stall limit; only the waits for the provider count.
    source = ScriptedSource(["a ", "b ", "c "])
    result = await run(source, SlowSink(0.1), stall_s=0.05, resumes=0).run(REQUEST)
    assert result.reason is EndReason.COMPLETE and result.text == "a b c "


async def test_the_stall_limit_applies_at_once_after_a_longer_first_token_limit():
    stalled = ScriptedSource(["alpha ", "never"], hang_after=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run(stalled, stall_s=0.05, first_token_timeout_s=30, resumes=0).run(REQUEST)
    assert result.reason is EndReason.ERROR and result.error is not None
    assert result.error.cause == "stalled"
    assert "nothing for 0.05 s" in result.error.user_message
    assert loop.time() - started < 10, "detected by the 0.05 s limit, not the 30 s one"


async def test_stall_detection_sets_no_timer_per_chunk(monkeypatch):
    loop = asyncio.get_running_loop()
    timers = 0
    call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):
        nonlocal timers
        timers += 1
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    pieces = [f"w{i} " for i in range(500)]
    result = await run(ScriptedSource(pieces), stall_s=5).run(REQUEST)
    assert result.text == "".join(pieces)
    assert timers <= 5


async def test_no_first_token_within_the_timeout_is_retried():
    silent = ScriptedSource(["never"], hang_after=0)
    source = SequenceSource(silent, ScriptedSource(["late but fine"]))
    result = await run(source, first_token_timeout_s=0.05, retries=1).run(REQUEST)
    assert result.text == "late but fine" and result.stats.attempts == 2
    assert silent.closed.is_set()


async def test_malformed_chunk_after_first_token_is_resumed():
    source = SequenceSource(
        ScriptedSource(["a b c "], fail_with=broken("malformed")),
        ScriptedSource(["d e f."]),
    )
    result = await run(source).run(REQUEST)
    assert result.text == "a b c d e f." and result.reason is EndReason.COMPLETE


async def test_tokens_are_summed_over_attempts():
    source = SequenceSource(
        ScriptedSource(["one ", "two "], fail_with=broken()),
        ScriptedSource(["three"], usage=Usage(prompt_tokens=10, completion_tokens=1)),
    )
    result = await run(source).run(REQUEST)
    assert result.stats.completion_tokens == 3  # 2 counted in the broken attempt + 1 reported
    assert result.stats.prompt_tokens == 10
    assert not result.stats.usage_reported
    assert "2 attempts, resumed 1×" in result.stats.summary()


async def test_stop_during_backoff_finishes_the_sink_as_stopped():
    waiting = asyncio.Event()

    async def slow_sleep(delay: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    sink = MemorySink()
    source = SequenceSource(ScriptedSource([], fail_with=ProviderUnavailable("503")))
    stream = StreamRun(source, sink, sleep=slow_sleep, resilience=Resilience(retries=1))
    task = asyncio.create_task(stream.run(REQUEST))
    await asyncio.wait_for(waiting.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.result is not None and sink.result.reason is EndReason.STOPPED_BY_USER


async def test_continue_on_demand_appends_to_the_interrupted_answer():
    from streamchat.chat import ChatOptions, ChatSession

    source = SequenceSource(
        ScriptedSource(["Tokens are ", "pieces of "], fail_with=broken()),
        ScriptedSource([" pieces of text."]),
    )
    chat = ChatSession(
        source,
        ChatOptions(model="m", temperature=0, system_prompt=""),
        resilience=Resilience(retries=0, resumes=0),
    )
    first = await chat.answer("What is a token?", MemorySink())
    assert first.reason is EndReason.ERROR and first.text == "Tokens are pieces of "
    sink = MemorySink()
    continued = await chat.continue_answer(sink)
    assert continued is not None and sink.text == "text."
    assert chat.history.turns[-1].content == "Tokens are pieces of text."
    assert chat.history.turns[-1].ended is EndReason.COMPLETE
    assert source.requests[1].messages[-2] == ChatMessage("assistant", "Tokens are pieces of ")
    assert await chat.continue_answer(MemorySink()) is None, "nothing left to continue"


async def test_retry_takes_back_the_question_that_failed_before_any_text():
    from streamchat.chat import ChatOptions, ChatSession

    source = SequenceSource(
        ScriptedSource([], fail_with=ProviderUnavailable("500")),
        ScriptedSource(["Now it works."]),
    )
    chat = ChatSession(
        source,
        ChatOptions(model="m", temperature=0, system_prompt=""),
        resilience=Resilience(retries=0),
    )
    await chat.answer("q1", MemorySink())
    question = chat.take_unanswered_question()
    assert question == "q1" and chat.history.turns == ()
    result = await chat.answer(question, MemorySink())
    assert result.text == "Now it works."
    assert [t.role for t in chat.history.turns] == ["user", "assistant"]
