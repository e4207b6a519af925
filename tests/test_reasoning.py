"""Reasoning models: thinking is split from the answer in all three wire forms, at any chunk
split, checked by the guardrails, shown apart, never part of the answer or its history, and
counted as data by the timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamchat.chat import ChatOptions, ChatSession
from streamchat.core.coalesce import CoalescingSink
from streamchat.core.errors import StreamBroken
from streamchat.core.metrics import StatsRecorder
from streamchat.core.parser import ChunkParser
from streamchat.core.relay import ReadPace, Resilience, StreamRun
from streamchat.core.sinks import ConsoleSink, MemorySink
from streamchat.core.thinking import ThinkTagSplitter
from streamchat.core.types import ChatMessage, ChatRequest, Delta, EndReason, Usage
from streamchat.guardrails import build_guard
from streamchat.settings import guardrail_config

REQUEST = ChatRequest(messages=(ChatMessage("user", "q"),), model="m")
EMAIL = "jane.doe@example.com"
TAGGED = "<think>Let me see: 2 + 2.</think>\n\nIt is 4."


def split_all(splitter: ThinkTagSplitter, pieces: Sequence[str]) -> tuple[str, str]:
    answer, thinking = [], []
    for piece in pieces:
        a, t = splitter.feed(piece)
        answer.append(a)
        thinking.append(t)
    a, t = splitter.finish()
    return "".join([*answer, a]), "".join([*thinking, t])


def cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- the splitter -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 97, len(TAGGED)])
def test_think_tags_are_split_out_at_any_chunk_size(size):
    assert split_all(ThinkTagSplitter(), cut(TAGGED, size)) == ("It is 4.", "Let me see: 2 + 2.")


def test_think_tags_split_at_every_position_give_the_same_result():
    for first in range(len(TAGGED) + 1):
        for second in range(first, len(TAGGED) + 1):
            pieces = [TAGGED[:first], TAGGED[first:second], TAGGED[second:]]
            assert split_all(ThinkTagSplitter(), pieces) == ("It is 4.", "Let me see: 2 + 2.")


@given(st.lists(st.integers(min_value=0, max_value=len(TAGGED)), max_size=8))
def test_think_tag_splitting_does_not_depend_on_where_chunks_end(cuts):
    points = sorted(set(cuts))
    pieces = [TAGGED[a:b] for a, b in zip([0, *points], [*points, len(TAGGED)], strict=True)]
    assert split_all(ThinkTagSplitter(), pieces) == ("It is 4.", "Let me see: 2 + 2.")


def test_a_reply_without_tags_passes_at_once_and_unchanged():
    splitter = ThinkTagSplitter()
    assert splitter.feed("Hello") == ("Hello", "")
    assert splitter.passing
    assert splitter.feed(" <think>not a tag here</think>") == (
        " <think>not a tag here</think>",
        "",
    )


def test_only_the_characters_that_might_open_a_tag_are_held():
    splitter = ThinkTagSplitter()
    assert splitter.feed("<th") == ("", "")
    assert splitter.feed("e answer") == ("<the answer", "")


def test_an_unclosed_tag_makes_the_rest_thinking_and_says_so():
    splitter = ThinkTagSplitter()
    assert split_all(splitter, ["<think>still going", " and going</thi"]) == (
        "",
        "still going and going</thi",
    )
    assert splitter.unclosed


# --- the wire forms, in the parser and the stats -----------------------------------------


def sse(delta: dict[str, object], usage: dict[str, object] | None = None) -> bytes:
    import json

    chunk: dict[str, object] = {"choices": [{"index": 0, "delta": delta}]}
    if usage is not None:
        chunk = {"choices": [], "usage": usage}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_parser_reads_thinking_beside_the_answer(field):
    parser = ChunkParser()
    deltas = parser.feed(sse({field: "hmm", "content": None}) + sse({"content": "Hi"}))
    assert [(d.reasoning, d.text) for d in deltas] == [("hmm", ""), ("", "Hi")]


def test_parser_reads_reasoning_tokens_from_usage_details():
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 30,
        "completion_tokens_details": {"reasoning_tokens": 21},
    }
    (delta,) = ChunkParser().feed(sse({}, usage))
    assert delta.usage == Usage(5, 30, 21)


def test_stats_time_thinking_and_answer_apart_and_count_thinking_tokens():
    now = [0.0]
    stats = StatsRecorder(clock=lambda: now[0])
    now[0] = 1.0
    stats.observe(Delta("", 0, reasoning="hm"))
    now[0] = 70.0
    stats.observe(Delta("Hi", 1))
    stats.observe(Delta("", 2, usage=Usage(3, 40, 38)))
    snapshot = stats.snapshot()
    assert snapshot.first_reasoning_s == 1.0
    assert snapshot.first_token_s == 70.0
    assert snapshot.reasoning_tokens == 38
    assert snapshot.as_log_fields()["reasoning_tokens"] == 38


# --- the relay ----------------------------------------------------------------------------


class ThinkingSource:
    """Plays (thinking, answer) pieces as Deltas; can fail after them or hang at one."""

    def __init__(
        self,
        pieces: Sequence[tuple[str, str]],
        *,
        fail_with: StreamBroken | None = None,
        hang_at: int | None = None,
        pause_s: float = 0.0,
    ) -> None:
        self.pieces = list(pieces)
        self.fail_with = fail_with
        self.hang_at = hang_at
        self.pause_s = pause_s
        self.closed = asyncio.Event()
        self.hanging = asyncio.Event()
        self.requests: list[ChatRequest] = []

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        try:
            for index, (thinking, text) in enumerate(self.pieces):
                if index == self.hang_at:
                    self.hanging.set()
                    await asyncio.Event().wait()
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)  # the upstream's pace, not a wait
                yield Delta(text=text, index=index, reasoning=thinking)
            if self.fail_with is not None:
                raise self.fail_with
            yield Delta(text="", index=len(self.pieces), finish_reason="stop")
        finally:
            self.closed.set()


class Sequenced:
    def __init__(self, *sources: ThinkingSource) -> None:
        self.sources = list(sources)

    def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        return self.sources.pop(0).stream(request, pace=pace)


THINK_THEN_ANSWER = [("Let me ", ""), ("think.", ""), ("", "The "), ("", "answer.")]


async def test_thinking_goes_to_the_sinks_reasoning_and_the_answer_holds_only_the_answer():
    sink = MemorySink()
    result = await StreamRun(ThinkingSource(THINK_THEN_ANSWER), sink).run(REQUEST)
    assert result.reason is EndReason.COMPLETE
    assert sink.text == result.text == "The answer."
    assert sink.reasoning_text == result.reasoning == "Let me think."
    assert sink.reasoning_ended == 1


@pytest.mark.parametrize("size", [1, 3, 97])
async def test_inline_think_tags_never_reach_the_answer(size):
    source = ThinkingSource([("", piece) for piece in cut(TAGGED, size)])
    sink = MemorySink()
    result = await StreamRun(source, CoalescingSink(sink, interval_s=0)).run(REQUEST)
    assert sink.text == result.text == "It is 4."
    assert sink.reasoning_text == "Let me see: 2 + 2."
    assert all("<" not in write for write in sink.writes)


async def test_a_think_only_reply_says_no_answer_came():
    sink = MemorySink()
    result = await StreamRun(ThinkingSource([("Hmm.", "")]), sink).run(REQUEST)
    assert result.text == "" and sink.reasoning_text == "Hmm."
    assert result.note() == "The model only thought: no answer came."


async def test_an_unclosed_think_tag_is_all_thinking_and_the_note_says_so():
    sink = MemorySink()
    source = ThinkingSource([("", "<think>I wonder"), ("", " about it")])
    result = await StreamRun(source, sink).run(REQUEST)
    assert sink.text == "" and sink.reasoning_text == "I wonder about it"
    assert result.reasoning_unclosed
    assert result.note() is not None and "still thinking" in result.note()


async def test_hidden_thinking_is_still_kept_out_of_the_answer():
    sink = MemorySink()
    source = ThinkingSource([("", piece) for piece in cut(TAGGED, 2)])
    result = await StreamRun(source, sink, show_reasoning=False).run(REQUEST)
    assert sink.text == "It is 4." and sink.reasoning_text == "" and sink.reasoning_ended == 0
    assert result.stats.first_reasoning_s is not None


def guard(**env: str):
    return build_guard(guardrail_config(env))


async def test_a_violation_inside_thinking_never_reaches_the_screen_and_stops_upstream():
    thinking = f"The user could write to {EMAIL} and then I would answer them at length."
    source = ThinkingSource([(piece, "") for piece in cut(thinking, 3)] + [("", "Answer.")])
    sink = MemorySink()
    run = StreamRun(source, sink, guard=guard(), reasoning_guards=guard)
    result = await run.run(REQUEST)
    assert result.reason is EndReason.GUARDRAIL
    assert result.violation is not None and result.violation.kind == "email"
    assert "@" not in sink.reasoning_text and "jane" not in sink.reasoning_text
    assert all("@" not in w for w in sink.reasoning_writes)
    assert sink.text == ""
    assert source.closed.is_set()


async def test_redact_inside_thinking_replaces_the_match_and_goes_on():
    thinking = f"Mail {EMAIL} maybe; that is all the thinking there is to do here."
    source = ThinkingSource([(piece, "") for piece in cut(thinking, 4)] + [("", "Done.")])
    sink = MemorySink()
    env = {"GUARDRAIL_ACTION": "redact"}
    run = StreamRun(source, sink, guard=guard(**env), reasoning_guards=lambda: guard(**env))
    result = await run.run(REQUEST)
    assert result.reason is EndReason.COMPLETE and sink.text == "Done."
    assert sink.reasoning_text == thinking.replace(EMAIL, "[email removed]")


async def test_a_stream_that_breaks_while_thinking_is_retried():
    broken = ThinkingSource([("Let me ", "")], fail_with=StreamBroken("lost", cause="dropped"))
    source = Sequenced(broken, ThinkingSource(THINK_THEN_ANSWER))
    sink = MemorySink()

    async def no_wait(_: float) -> None:
        return None

    run = StreamRun(source, sink, sleep=no_wait)
    result = await run.run(REQUEST)
    assert result.reason is EndReason.COMPLETE and result.text == "The answer."
    assert result.stats.attempts == 2


async def test_a_long_think_is_data_not_a_stall():
    # The default timeouts scaled down a hundredfold: a 70-second think against a 60-second
    # first-token timeout and a 30-second stall limit, its pieces a few seconds apart.
    scale = 100
    resilience = Resilience(
        retries=0, resumes=0, stall_s=30 / scale, first_token_timeout_s=60 / scale
    )
    pieces = [("thinking ", "")] * 14 + [("", "Answer.")]
    source = ThinkingSource(pieces, pause_s=5 / scale)
    result = await StreamRun(source, MemorySink(), resilience=resilience).run(REQUEST)
    assert result.reason is EndReason.COMPLETE, result.error
    assert result.stats.first_token_s is not None and result.stats.first_token_s > 60 / scale


async def test_silence_while_thinking_is_still_a_stall():
    # Once thinking flows, the stall limit applies, not the longer first-token timeout.
    resilience = Resilience(retries=0, resumes=0, stall_s=0.05, first_token_timeout_s=60)
    source = ThinkingSource([("Let me ", ""), ("think", "")], hang_at=1)
    run = StreamRun(source, MemorySink(), resilience=resilience)
    result = await asyncio.wait_for(run.run(REQUEST), 5)
    assert result.reason is EndReason.ERROR
    assert isinstance(result.error, StreamBroken) and result.error.cause == "stalled"
    assert source.closed.is_set()


async def test_stop_while_thinking_closes_upstream_at_once_and_ends_the_thinking():
    source = ThinkingSource([("Let me ", ""), ("think", "")], hang_at=1)
    sink = MemorySink()
    task = asyncio.create_task(StreamRun(source, sink).run(REQUEST))
    await asyncio.wait_for(source.hanging.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed.is_set()
    assert sink.result is not None and sink.result.reason is EndReason.STOPPED_BY_USER
    assert sink.reasoning_text == "Let me " and sink.reasoning_ended == 1


async def test_the_history_keeps_the_answer_without_its_thinking():
    source = ThinkingSource([("", piece) for piece in cut(TAGGED, 5)])
    chat = ChatSession(source, ChatOptions(model="m", temperature=0, system_prompt=""))
    await chat.answer("What is 2 + 2?", MemorySink())
    assert [m.content for m in chat.request().messages] == ["What is 2 + 2?", "It is 4."]


async def test_coalesced_thinking_is_all_sent_before_the_answer_starts():
    events: list[tuple[str, str]] = []

    class Recording(MemorySink):
        async def reasoning(self, text: str) -> None:
            events.append(("thinking", text))

        async def write(self, text: str) -> None:
            events.append(("answer", text))

    pieces = [(f"t{i} ", "") for i in range(20)] + [("", "a1"), ("", "a2")]
    await StreamRun(ThinkingSource(pieces), CoalescingSink(Recording(), interval_s=10)).run(REQUEST)
    kinds = [kind for kind, _ in events]
    assert kinds.index("answer") > max(i for i, k in enumerate(kinds) if k == "thinking")
    assert "".join(t for k, t in events if k == "thinking") == "".join(p[0] for p in pieces)
    assert len(events) < 10  # merged, not one update per piece


async def test_console_prints_thinking_to_stderr_and_the_answer_to_stdout():
    import io

    out, err = io.StringIO(), io.StringIO()
    await StreamRun(ThinkingSource(THINK_THEN_ANSWER), ConsoleSink(out, err)).run(REQUEST)
    assert out.getvalue() == "The answer.\n"
    assert "Let me think." in err.getvalue()
    assert "\x1b[" not in err.getvalue()  # not a terminal: no colour codes


async def test_the_classroom_chunk_view_shows_thinking_chunks_with_their_field():
    from streamchat.classroom.tools import ChunkLog

    parsed = ChunkParser().feed(
        sse({"reasoning_content": "hm"}) + sse({"reasoning": "ok"}) + sse({"content": "Hi"})
    )

    class Parsed:
        async def stream(
            self, request: ChatRequest, *, pace: ReadPace | None = None
        ) -> AsyncGenerator[Delta, None]:
            for delta in parsed:
                yield delta
            yield Delta("", len(parsed), finish_reason="stop")

    log = ChunkLog()
    await StreamRun(Parsed(), MemorySink(), on_delta=log).run(REQUEST)
    shown = log.render()
    assert '{"delta":{"reasoning_content":"hm"}}' in shown
    assert '{"delta":{"reasoning":"ok"}}' in shown
    assert log.pieces == ["Hi"]  # the token view: answer tokens only
