"""Shared answers: identical requests at the same time share one upstream stream, every viewer
gets the whole answer with its own Stop, and complete answers are replayed from a cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator

import pytest

from streamchat.core.errors import StreamBroken
from streamchat.core.metrics import ProcessMetrics
from streamchat.core.relay import ReadPace, Resilience, StreamResult
from streamchat.core.sharing import AnswerCache, SharedAnswers, fingerprint, without_history
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, Delta, EndReason, Usage
from streamchat.hosting.answer_cache import RedisAnswerCache, decode, encode
from streamchat.pipeline import Pipeline
from streamchat.settings import Settings, guardrail_config
from tests.databases import redis_server
from tests.harness import free_port
from tests.scripted import RecordingSleep, ScriptedSource
from tests.waiting import eventually

QUESTION = ChatRequest(
    messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "What is a stream?")),
    model="m",
    temperature=0.7,
)
PIECES = ["A stream ", "is data ", "that arrives ", "in pieces."]
ANSWER = "".join(PIECES)
NO_RETRIES = Resilience(retries=0, resumes=0)


class GatedSource:
    """Sends its pieces one per `release()`, counts requests, records closing."""

    def __init__(self, pieces: list[str], *, fail_at: int | None = None) -> None:
        self.pieces = pieces
        self.fail_at = fail_at
        self.requests: list[ChatRequest] = []
        self.sent = 0
        self.closed = asyncio.Event()
        self._gate = asyncio.Semaphore(0)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._gate.release()

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        try:
            for index, piece in enumerate(self.pieces):
                await self._gate.acquire()
                if index == self.fail_at:
                    raise StreamBroken("The connection dropped.", cause="dropped")
                self.sent += 1
                yield Delta(text=piece, index=index)
            yield Delta(text="", index=len(self.pieces), finish_reason="stop")
        finally:
            self.closed.set()


def pipeline(source: object, hub: SharedAnswers, **kwargs: object) -> Pipeline:
    return Pipeline(
        source,  # type: ignore[arg-type]
        sharing=hub,
        flush_interval_s=0,
        resilience=NO_RETRIES,
        metrics=ProcessMetrics(),
        **kwargs,  # type: ignore[arg-type]
    )


async def answer(p: Pipeline, request: ChatRequest = QUESTION) -> tuple[MemorySink, StreamResult]:
    sink = MemorySink()
    result = await p.run(sink).run(request)
    return sink, result


async def test_thirty_identical_questions_at_once_make_one_upstream_request_and_thirty_answers():
    source = GatedSource(PIECES)
    hub = SharedAnswers()
    p = pipeline(source, hub)
    tasks = [asyncio.create_task(answer(p)) for _ in range(30)]
    await eventually(lambda: len(source.requests) == 1, within=5, what="the first request upstream")
    source.release(len(PIECES))
    done = await asyncio.gather(*tasks)
    assert len(source.requests) == 1
    assert [sink.text for sink, _ in done] == [ANSWER] * 30
    origins = sorted(result.stats.source for _, result in done)
    assert origins == ["live"] + ["shared"] * 29
    assert p.metrics.shared_answers._value.get() == 29
    shared = next(r for _, r in done if r.stats.source == "shared")
    assert shared.stats.summary().endswith("· shared")
    assert hub.live == 0


async def test_a_late_joiner_gets_the_whole_answer_from_its_first_token():
    source = GatedSource(PIECES)
    p = pipeline(source, SharedAnswers())
    first = asyncio.create_task(answer(p))
    source.release(2)
    await eventually(lambda: source.sent == 2, within=5, what="two pieces upstream")
    late = asyncio.create_task(answer(p))
    await eventually(
        lambda: p.sharing is not None and p.sharing.live == 1, within=5, what="sharing"
    )
    source.release(len(PIECES))
    (sink1, _), (sink2, result2) = await asyncio.gather(first, late)
    assert sink1.text == sink2.text == ANSWER
    assert result2.stats.source == "shared"
    assert len(source.requests) == 1


async def test_one_viewers_stop_ends_only_its_view_and_the_upstream_goes_on():
    source = GatedSource(PIECES)
    hub = SharedAnswers()
    p = pipeline(source, hub)
    stays = asyncio.create_task(answer(p))
    stopping_sink = MemorySink()
    stops = asyncio.create_task(p.run(stopping_sink).run(QUESTION))
    source.release(1)
    await eventually(
        lambda: stopping_sink.text == PIECES[0], within=5, what="the first piece shown"
    )
    stops.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stops
    assert stopping_sink.result is not None
    assert stopping_sink.result.reason is EndReason.STOPPED_BY_USER
    assert not source.closed.is_set()
    source.release(len(PIECES))
    sink, result = await stays
    assert sink.text == ANSWER and result.reason is EndReason.COMPLETE


async def test_the_upstream_is_closed_when_the_last_viewer_leaves_and_not_before():
    source = GatedSource(PIECES)
    hub = SharedAnswers()
    p = pipeline(source, hub)
    viewers = [asyncio.create_task(answer(p)) for _ in range(3)]
    source.release(1)
    await eventually(lambda: source.sent == 1, within=5, what="a piece upstream")
    for viewer in viewers[:2]:
        viewer.cancel()
    await asyncio.gather(*viewers[:2], return_exceptions=True)
    await asyncio.sleep(0)
    assert not source.closed.is_set()
    viewers[2].cancel()
    await asyncio.gather(viewers[2], return_exceptions=True)
    await asyncio.wait_for(source.closed.wait(), 5)
    assert hub.live == 0
    # A new question after that is a new request, not a join of the closed one.
    again = asyncio.create_task(answer(p))
    source.release(len(PIECES) + 1)
    sink, _ = await again
    assert sink.text == ANSWER and len(source.requests) == 2


async def test_a_failed_leader_fails_every_viewer_and_the_next_request_goes_upstream_again():
    source = GatedSource(PIECES, fail_at=1)
    hub = SharedAnswers()
    p = pipeline(source, hub)
    viewers = [asyncio.create_task(answer(p)) for _ in range(2)]
    await eventually(lambda: len(source.requests) == 1, within=5, what="the request upstream")
    source.release(2)
    done = await asyncio.gather(*viewers)
    assert [r.reason for _, r in done] == [EndReason.ERROR] * 2
    assert [s.text for s, _ in done] == [PIECES[0]] * 2
    assert hub.live == 0
    retry = asyncio.create_task(answer(p))
    await eventually(lambda: len(source.requests) == 2, within=5, what="a request of its own")
    source.release(2)
    await retry


@pytest.mark.parametrize(
    "other",
    [
        ChatRequest(messages=QUESTION.messages, model="m", temperature=0.2),
        ChatRequest(messages=QUESTION.messages, model="other", temperature=0.7),
        ChatRequest(
            messages=(
                *QUESTION.messages[:1],
                ChatMessage("user", "Hi"),
                ChatMessage("assistant", "Hello"),
                *QUESTION.messages[1:],
            ),
            model="m",
            temperature=0.7,
        ),
        ChatRequest(
            messages=(ChatMessage("system", "Be long."), *QUESTION.messages[1:]),
            model="m",
            temperature=0.7,
        ),
    ],
    ids=["temperature", "model", "history", "system prompt"],
)
async def test_requests_that_differ_in_anything_that_shapes_the_answer_never_share(other):
    source = GatedSource(PIECES)
    p = pipeline(source, SharedAnswers())
    tasks = [asyncio.create_task(answer(p, QUESTION)), asyncio.create_task(answer(p, other))]
    await eventually(lambda: len(source.requests) == 2, within=5, what="two requests upstream")
    source.release(2 * len(PIECES))
    results = await asyncio.gather(*tasks)
    assert [r.stats.source for _, r in results] == ["live", "live"]
    assert fingerprint(QUESTION) != fingerprint(other)


async def test_different_guardrails_or_provider_never_share():
    assert fingerprint(QUESTION, "a|x") != fingerprint(QUESTION, "a|y")
    source = GatedSource(PIECES)
    hub = SharedAnswers()
    p = pipeline(source, hub)
    guarded = asyncio.create_task(
        p.run(MemorySink(), guardrails=guardrail_config({})).run(QUESTION)
    )
    plain_sink = MemorySink()
    plain = asyncio.create_task(
        p.run(plain_sink, guardrails=guardrail_config({"GUARDRAILS": "off"})).run(QUESTION)
    )
    await eventually(lambda: len(source.requests) == 2, within=5, what="two requests upstream")
    source.release(2 * len(PIECES))
    await asyncio.gather(guarded, plain)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cached_hub(clock: Clock, *, ttl_s: float = 60, max_bytes: int = 1 << 20) -> SharedAnswers:
    return SharedAnswers(cache=AnswerCache(ttl_s, max_bytes, clock=clock), sleep=RecordingSleep())


async def test_a_complete_answer_is_replayed_from_the_cache_until_its_time_to_live_ends():
    clock = Clock()
    hub = cached_hub(clock, ttl_s=60)
    source = ScriptedSource(PIECES)
    p = pipeline(source, hub)
    _, first = await answer(p)
    assert first.stats.source == "live"
    clock.now += 59
    sink, result = await answer(p)
    assert sink.text == ANSWER and len(source.requests) == 1
    assert result.stats.source == "cache"
    assert result.reason is EndReason.COMPLETE
    assert result.stats.summary().endswith("· from cache")
    assert p.metrics.cache_hits._value.get() == 1
    clock.now += 2
    _, missed = await answer(p)
    assert missed.stats.source == "live" and len(source.requests) == 2


async def test_a_cached_answer_is_replayed_at_the_recorded_pace_with_long_pauses_capped():
    clock = Clock()
    sleep = RecordingSleep()
    hub = SharedAnswers(cache=AnswerCache(60, 1 << 20, clock=clock), clock=clock, sleep=sleep)

    class Timed:
        async def stream(self, request, *, pace=None):
            for index, (gap, piece) in enumerate([(0.05, "a"), (5.0, "b"), (0.02, "c")]):
                clock.now += gap
                yield Delta(text=piece, index=index)
            yield Delta(text="", index=3, finish_reason="stop")

    p = pipeline(Timed(), hub)
    await answer(p)
    sink, _ = await answer(p)
    assert sink.text == "abc"
    assert sleep.delays == pytest.approx([0.05, 0.1, 0.02])


async def test_stopped_interrupted_guarded_and_cut_answers_are_not_cached():
    clock = Clock()
    hub = cached_hub(clock)
    # Stopped by its viewer.
    gated = GatedSource(PIECES)
    p = pipeline(gated, hub)
    sink = MemorySink()
    task = asyncio.create_task(p.run(sink).run(QUESTION))
    gated.release(1)
    await eventually(lambda: sink.text == PIECES[0], within=5, what="the first piece")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Interrupted upstream.
    broken = pipeline(ScriptedSource(PIECES[:1], fail_with=StreamBroken("x", cause="dropped")), hub)
    _, interrupted = await answer(broken)
    assert interrupted.reason is EndReason.ERROR
    # Cut by the token limit.
    _, cut = await answer(pipeline(ScriptedSource(PIECES, finish_reason="length"), hub))
    assert cut.reason is EndReason.LENGTH
    # Stopped by a guardrail.
    leaking = ScriptedSource(["Write to jane.doe@example.com ", "for help, and more text."])
    guarded = pipeline(leaking, hub, guardrails=guardrail_config({}))
    _, stopped = await answer(guarded)
    assert stopped.reason is EndReason.GUARDRAIL
    assert hub.cache is not None and len(hub.cache) == 0


def test_the_cache_lets_the_least_recently_used_answer_go_first_when_full():
    clock = Clock()
    one = ((0.0, Delta(text="x" * 100, index=0, finish_reason="stop")),)
    cache = AnswerCache(60, 400, clock=clock)
    cache.put("a", one)
    cache.put("b", one)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", one)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes <= 400
    cache.put("huge", ((0.0, Delta(text="x" * 1000, index=0)),))
    assert cache.get("huge") is None


async def test_with_login_on_only_questions_without_history_are_shared_unless_all():
    with_history = ChatRequest(
        messages=(
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello"),
            *QUESTION.messages[1:],
        ),
        model="m",
    )
    assert without_history(QUESTION) and not without_history(with_history)
    on = SharedAnswers.configured("on", 0, 64, login=True)
    assert on is not None and on.eligible(QUESTION) and not on.eligible(with_history)
    every = SharedAnswers.configured("all", 0, 64, login=True)
    assert every is not None and every.eligible(with_history)
    open_ = SharedAnswers.configured("on", 0, 64, login=False)
    assert open_ is not None and open_.eligible(with_history)
    assert SharedAnswers.configured("off", 0, 64, login=False) is None
    cache_only = SharedAnswers.configured("off", 30, 64, login=False)
    assert cache_only is not None and not cache_only.share and cache_only.cache is not None

    assert on is not None
    source = GatedSource(PIECES)
    p = pipeline(source, on)
    tasks = [asyncio.create_task(answer(p, with_history)) for _ in range(2)]
    await eventually(lambda: len(source.requests) == 2, within=5, what="a request each")
    source.release(2 * len(PIECES))
    await asyncio.gather(*tasks)


def test_the_settings_read_the_sharing_variables():
    settings = Settings.from_env(
        {"SHARED_ANSWERS": "ALL", "ANSWER_CACHE_TTL_S": "30", "ANSWER_CACHE_MAX_MB": "8"}
    )
    assert settings.shared_answers == "all"
    assert settings.answer_cache_ttl_s == 30 and settings.answer_cache_max_mb == 8
    assert Settings.from_env({}).shared_answers == "off"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def test_a_complete_answer_kept_in_redis_is_replayed_by_another_replica(redis_url):
    def replica() -> tuple[SharedAnswers, RedisAnswerCache]:
        store = RedisAnswerCache(redis_url, ttl_s=60)
        hub = SharedAnswers.configured("on", 60, 64, login=False, remote=store)
        assert hub is not None
        return hub, store

    (one, store_one), (two, store_two) = replica(), replica()
    source_one, source_two = ScriptedSource(PIECES), ScriptedSource(PIECES)
    try:
        _, first = await answer(pipeline(source_one, one))
        sink, second = await answer(pipeline(source_two, two))
    finally:
        await store_one.aclose()
        await store_two.aclose()
    assert first.stats.source == "live" and second.stats.source == "cache"
    assert sink.text == ANSWER and source_two.requests == []


async def test_with_redis_down_the_answer_cache_misses_and_the_answer_goes_upstream(caplog):
    store = RedisAnswerCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60)
    hub = SharedAnswers.configured("off", 60, 64, login=False, remote=store)
    assert hub is not None
    source = ScriptedSource(PIECES)
    try:
        sink, result = await answer(pipeline(source, hub))
    finally:
        await store.aclose()
    assert sink.text == ANSWER and result.reason is EndReason.COMPLETE
    assert len(source.requests) == 1
    assert "answer cache: could not" in caplog.text


def test_recorded_answers_round_trip_through_their_redis_form():
    recorded = (
        (0.0, Delta(text="", index=0, raw='{"a": 1}', reasoning="hmm", more=True)),
        (0.25, Delta(text="Hi ✓", index=1, finish_reason="stop", usage=Usage(3, 4, 1))),
    )
    assert decode(encode(recorded)) == recorded
