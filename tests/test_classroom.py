"""Classroom tools, without a UI: the raw chunk log, the token view, the timeline, slow motion,
the client-side fault and the normal-vs-streaming race, against scripted and offline models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from streamchat.classroom.tools import (
    CHART_CONFIG,
    MUTED,
    ChunkLog,
    DroppingSource,
    PacedSink,
    Speed,
    Timeline,
    chunk_summary,
    race,
    race_table,
    token_view,
)
from streamchat.core.metrics import StreamStats
from streamchat.core.provider import Provider, WholeAnswer
from streamchat.core.relay import Resilience, StreamResult, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason, Usage
from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.scripted import ScriptedSource

QUESTION = "What is a token?"


def request(text: str = QUESTION) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", text),), model="")


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    with OfflineServer(tokens_per_second=400, first_token_delay_ms=5) as server:
        provider = Provider(base_url=server.base_url)
        provider.server = server  # type: ignore[attr-defined]
        yield provider
        await provider.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_the_chunk_log_sees_every_upstream_chunk_in_order(provider):
    log = ChunkLog()
    sink = MemorySink()
    result = await StreamRun(provider, sink, on_delta=log).run(request())
    record = provider.server.records.last()
    assert log.count == record.chunks_sent, "one entry per chunk the server sent"
    assert "".join(log.pieces) == sink.text == choose_answer(record.messages)
    summaries = [chunk_summary(e.raw) for e in [*log.first, *log.last]]
    assert json.loads(summaries[0]) == {"delta": {"role": "assistant", "content": ""}}
    assert json.loads(summaries[-1])["usage"]["completion_tokens"] == record.tokens_sent
    assert any('"finish_reason":"stop"' in s for s in summaries)
    times = [e.at_s for e in log.first]
    assert times == sorted(times)

    view = token_view(log, result)
    assert view.count == view.usage_tokens == record.tokens_sent == result.stats.completion_tokens
    assert "".join(view.props()["tokens"]) == sink.text


async def test_a_long_chunk_log_keeps_its_ends_and_says_how_many_are_left_out():
    log = ChunkLog(keep_first=10, keep_last=3)
    pieces = [f"t{n} " for n in range(100)]
    await StreamRun(ScriptedSource(pieces), MemorySink(), on_delta=log).run(request())
    assert log.count == 101 and log.skipped == 101 - 10 - 3
    assert len(log.pieces) == 100, "the text of every chunk is kept"
    rendered = log.render(first=5, last=2).splitlines()
    assert rendered[0].startswith("#1  ") and '"content":"t0 "' in rendered[0]
    assert rendered[5] == "… 94 more chunks …"
    assert rendered[-1].startswith("#101") and '"finish_reason":"stop"' in rendered[-1]
    short = ChunkLog()
    await StreamRun(ScriptedSource(["a", "b"]), MemorySink(), on_delta=short).run(request())
    assert len(short.render().splitlines()) == 3 and "more chunks" not in short.render()


def test_chunk_summaries_handle_every_shape():
    assert chunk_summary('{"choices":[],"usage":{"completion_tokens":3}}') == (
        '{"usage":{"completion_tokens":3}}'
    )
    assert chunk_summary('{"choices":[{"delta":{},"finish_reason":"length"}]}') == (
        '{"delta":{},"finish_reason":"length"}'
    )
    assert chunk_summary("not json") == "not json"
    assert chunk_summary('{"id":"x"}') == '{"id":"x"}'


async def test_the_timeline_marks_the_milestones_and_counts_tokens():
    log = ChunkLog()
    result = await StreamRun(
        ScriptedSource(["a", "b", "c"], usage=Usage(5, 3)), MemorySink(), on_delta=log
    ).run(request())
    timeline = Timeline.of(log, result)
    assert len(timeline.token_times) == 3
    assert timeline.first_chunk_s is not None and timeline.first_token_s is not None
    # Compared on one clock each: the log's times count from the log's start, the stats' from
    # the run's, a moment later, so a log time may exceed a very short run's duration.
    assert timeline.first_chunk_s <= timeline.token_times[0]
    assert timeline.first_token_s <= timeline.done_s
    figure = timeline.figure(title="t", tokens_label="tokens")
    steps = figure.data[0]
    assert list(steps.y) == [0, 1, 2, 3]
    notes = figure.layout.annotations
    assert [note.text.split(" (")[0] for note in notes] == [
        "request sent",
        "first chunk",
        "first token",
        "done",
    ]
    assert len({note.y for note in notes}) == 4, "each label on its own row: none overlap"


def test_the_timeline_follows_the_theme_and_has_no_toolbar():
    figure = Timeline(first_chunk_s=0.05, first_token_s=0.1, done_s=0.3, token_times=(0.1, 0.2))
    layout = figure.figure().layout
    assert layout.paper_bgcolor == layout.plot_bgcolor == "rgba(0,0,0,0)", "no white box"
    assert layout.font.color == MUTED
    assert CHART_CONFIG["displayModeBar"] is False


def test_speeds_parse_and_explain_bad_values():
    assert Speed.parse("0.25x") == Speed(factor=0.25)
    assert Speed.parse("1x").is_real_time
    assert Speed.parse("5 words/s") == Speed(words_per_second=5)
    assert Speed.parse("2/s") == Speed(words_per_second=2)
    assert str(Speed.parse("0.5x")) == "0.5x" and str(Speed(words_per_second=5)) == "5 words/s"
    for bad in ("fast", "3x", "0x", "0 words/s"):
        with pytest.raises(ValueError):
            Speed.parse(bad)


async def test_a_rate_paces_every_word_and_keeps_the_text_whole():
    clock = FakeClock()
    inner = MemorySink()
    paced = PacedSink(inner, Speed(words_per_second=4), clock=clock, sleep=clock.sleep)
    await paced.write("one two ")
    await paced.write("three")
    assert inner.writes == ["one ", "two ", "three"]
    assert clock.sleeps == [0.25, 0.25]
    assert paced.show_times == [0.0, 0.25, 0.5]


async def test_a_factor_stretches_the_arrival_times():
    clock = FakeClock()
    inner = MemorySink()
    paced = PacedSink(inner, Speed(factor=0.25), clock=clock, sleep=clock.sleep)
    await paced.write("a")  # arrives at 0
    clock.now = 1.0
    await paced.write("b c")  # arrives over (0, 1]: its pieces count as at 0.5 and 1.0
    assert inner.text == "ab c"
    assert paced.show_times == [0.0, 2.0, 4.0], "four times the arrival times"


class CountingSink(MemorySink):
    """A memory sink that says when it has been written `count` times."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.reached = asyncio.Event()

    async def write(self, text: str) -> None:
        await super().write(text)
        if len(self.writes) >= self.count:
            self.reached.set()


async def test_stop_in_slow_motion_shows_nothing_more_and_ends_with_what_was_shown():
    inner = CountingSink(2)
    paced = PacedSink(inner, Speed(words_per_second=2))
    writing = asyncio.create_task(paced.write("one two three four five six"))
    await asyncio.wait_for(inner.reached.wait(), timeout=5)  # "two " half a second after "one "
    paced.stop()
    await asyncio.wait_for(writing, timeout=1)  # at once, not in the two seconds left
    await paced.write("seven eight")
    assert inner.text == "one two "
    stats = StreamStats(0.0, 1.0, 8, 0, False, 8)
    everything = "one two three four five six seven eight"
    await paced.finish(StreamResult("s", everything, EndReason.STOPPED_BY_USER, stats))
    assert inner.result is not None and inner.result.text == "one two "


async def test_stop_after_the_model_finished_but_before_slow_motion_showed_it_all():
    inner = MemorySink()
    paced = PacedSink(inner, Speed(words_per_second=1000))
    await paced.write("one two ")
    paced.stop()
    stats = StreamStats(0.0, 1.0, 3, 0, False, 3)
    await paced.finish(StreamResult("s", "one two three", EndReason.COMPLETE, stats))
    assert inner.result is not None
    assert inner.result.text == "one two " and inner.result.reason is EndReason.STOPPED_BY_USER


async def test_slow_motion_streams_a_real_answer_unchanged(provider):
    inner = MemorySink()
    paced = PacedSink(inner, Speed(words_per_second=1000))
    result = await StreamRun(provider, paced).run(request())
    assert inner.text == result.text == choose_answer(provider.server.records.last().messages)
    assert paced.pieces_shown == len(inner.writes) > 10


async def test_the_fault_demo_breaks_any_stream_and_resume_repairs_it(provider):
    source = DroppingSource(provider, after=15)
    sink = MemorySink()
    result = await StreamRun(source, sink, resilience=Resilience(resumes=1)).run(request())
    records = provider.server.records.all()
    assert len(records) == 2 and records[0].client_disconnected, "the first request was closed"
    assert result.reason is EndReason.COMPLETE and result.stats.resumes == 1
    assert sink.text == choose_answer(records[0].messages)
    assert result.note() == "Resumed once after the stream broke."


async def test_the_fault_demo_without_resumes_leaves_an_interrupted_answer(provider):
    result = await StreamRun(
        DroppingSource(provider, after=5), MemorySink(), resilience=Resilience(resumes=0)
    ).run(request())
    assert result.reason is EndReason.ERROR and result.text
    assert "Interrupted: connection lost after" in (result.note() or "")


async def test_normal_vs_streaming_shows_the_streamed_text_first(provider):
    streamed, whole = MemorySink(), MemorySink()
    lanes = await race(
        [
            ("Not streamed", lambda sink: StreamRun(WholeAnswer(provider), sink), whole),
            ("Streamed", lambda sink: StreamRun(provider, sink), streamed),
        ],
        request(),
    )
    normal, stream = lanes
    assert streamed.text == whole.text == choose_answer(provider.server.records.last().messages)
    assert stream.first_text_s is not None and normal.first_text_s is not None
    assert stream.first_text_s < normal.first_text_s, "streaming shows text sooner"
    assert normal.first_text_s <= normal.total_s
    table = race_table(lanes, first_text="First text", total="Total")
    assert "| **Not streamed** |" in table and "| **Streamed** |" in table
