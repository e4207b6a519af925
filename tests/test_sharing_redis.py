"""Live answers shared across replicas through a real Redis: two hubs stand for two replicas,
each with a source of its own that counts its requests. The replica asked first leads and
mirrors its pieces; the other follows them exactly instead of asking upstream, keeps the
leader's upstream open while it watches, and copes with a leader that goes away or a Redis
that is down, without failing an answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from streamchat.core.errors import ProviderError, RateLimited, StreamBroken
from streamchat.core.metrics import ProcessMetrics
from streamchat.core.relay import Resilience
from streamchat.core.sharing import LeaderGone, SharedAnswers, fingerprint
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatRequest, EndReason
from streamchat.hosting.shared_streams import (
    RedisSharedStreams,
    decode_end,
    encode_end,
    lead_key,
)
from streamchat.pipeline import Pipeline
from tests.databases import redis_server
from tests.harness import free_port
from tests.scripted import ScriptedSource
from tests.test_sharing import ANSWER, NO_RETRIES, PIECES, QUESTION, GatedSource, answer
from tests.waiting import eventually

LEASE_S = 1.0  # short, so a leader that goes away is noticed within a test
ONE_TRY = Resilience(retries=0, resumes=0, first_token_timeout_s=5)
# Replicas of one deployment talk to the same provider: the fingerprint includes its label,
# so two test sources of different classes must carry the same one to be the same upstream.
PROVIDER = "scripted upstream"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def redis(redis_url) -> AsyncIterator[object]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


class Replica:
    """One replica's hub and Redis store, and a pipeline over `source` (labelled as the
    deployment's one provider)."""

    def __init__(self, redis_url: str, source: Any, *, resilience: Resilience = ONE_TRY):
        source.label = PROVIDER
        self.store = RedisSharedStreams(redis_url, lease_s=LEASE_S, end_keep_s=10)
        self.hub = SharedAnswers(live_remote=self.store)
        self.source = source
        self.pipeline = Pipeline(
            source,
            sharing=self.hub,
            flush_interval_s=0,
            resilience=resilience,
            metrics=ProcessMetrics(),
        )

    def ask(self, request: ChatRequest = QUESTION) -> tuple[MemorySink, asyncio.Task]:
        sink = MemorySink()
        return sink, asyncio.create_task(self.pipeline.run(sink).run(request))

    @staticmethod
    async def stop(sink: MemorySink, task: asyncio.Task) -> EndReason:
        """The viewer presses Stop: its run is cancelled and reports why it ended."""
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sink.result is not None
        return sink.result.reason

    def die(self) -> None:
        """As far as the others can tell, this replica is gone: it writes and renews no more."""
        for writer in list(self.store._writers):
            writer.cancel()


@pytest.fixture
async def replicas(redis_url, redis) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []

    def make(source: object, **kwargs: object) -> Replica:
        made.append(Replica(redis_url, source, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make  # type: ignore[misc]
    for replica in made:
        await replica.store.aclose()


def key_of(replica: Replica, request: ChatRequest = QUESTION) -> str:
    """The fingerprint `replica` gives `request` (never shown; tests look it up in Redis)."""
    p = replica.pipeline
    return fingerprint(request, p._sharing_context(p.guardrails))


async def streams(redis) -> list[str]:
    """The Redis Streams of live answers."""
    keys = await redis.keys("streamchat:shared:*")
    return [k for k in keys if k.count(":") == 3 and not k.endswith(":lead")]


async def leading(replica: Replica) -> None:
    """Wait until `replica` leads: it asked upstream (and holds the lead in Redis)."""
    await eventually(
        lambda: len(replica.source.requests) == 1, within=10, what="a request upstream"
    )


async def following(redis, count: int = 1) -> None:
    """Wait until `count` followers on other replicas are registered as viewers."""

    async def holds() -> bool:
        sets = await redis.keys("streamchat:shared:*:viewers")
        return sum([await redis.scard(key) for key in sets]) >= count

    await eventually(holds, within=10, what=f"{count} remote viewers")


async def first_piece_followed(one: Replica, two: Replica):
    """`one` leads the question and releases its first piece; `two` asks it too and follows:
    (one's sink, one's task, two's sink, two's task) once two shows that piece."""
    sink_one, leader = one.ask()
    await leading(one)
    sink_two, follower = two.ask()
    one.source.release(1)
    await eventually(lambda: sink_two.text == PIECES[0], within=10, what="the followed piece")
    return sink_one, leader, sink_two, follower


async def test_a_follower_replays_the_leaders_answer_from_the_start_then_live_exactly(
    replicas, redis
):
    one, two = replicas(GatedSource(PIECES)), replicas(GatedSource(PIECES))
    sink_one, first = one.ask()
    one.source.release(2)
    await eventually(lambda: sink_one.text == "".join(PIECES[:2]), within=10, what="2 pieces")
    # A late joiner on the other replica: what came already at once, then live.
    sink_two, late = two.ask()
    await eventually(
        lambda: sink_two.text == "".join(PIECES[:2]), within=10, what="the replay on two"
    )
    one.source.release(len(PIECES))
    done = await asyncio.gather(first, late)
    assert sink_one.text == sink_two.text == ANSWER
    assert [r.reason for r in done] == [EndReason.COMPLETE] * 2
    assert [r.stats.source for r in done] == ["live", "shared"]
    assert len(one.source.requests) == 1 and two.source.requests == []
    assert one.hub.upstream_requests == 1 and two.hub.upstream_requests == 0

    # The leader wrote its end and let the lead go; the stream expires soon after.
    async def ended() -> bool:
        (stream,) = await streams(redis)
        last = (await redis.xrevrange(stream, count=1))[0][1]
        gone = not await redis.exists(lead_key(key_of(one)))
        return last == {"end": "complete"} and gone and 0 < await redis.pttl(stream) <= 10_000

    await eventually(ended, within=10, what="the end entry and the lead let go")


async def test_a_follower_joining_after_the_whole_answer_was_mirrored_gets_all_of_it(
    replicas, redis
):
    # An empty last piece, held back: every piece of text is out, and the answer still live.
    one, two = replicas(GatedSource([*PIECES, ""])), replicas(GatedSource(PIECES))
    sink_one, first = one.ask()
    one.source.release(len(PIECES))
    await eventually(lambda: sink_one.text == ANSWER, within=10, what="the whole answer on one")
    sink_two, late = two.ask()
    await eventually(lambda: sink_two.text == ANSWER, within=10, what="all of it on two")
    one.source.release()
    await asyncio.gather(first, late)
    assert sink_two.text == ANSWER and two.source.requests == []


async def test_the_leader_renews_its_lease_while_it_streams(replicas, redis):
    one, two = replicas(GatedSource(PIECES)), replicas(GatedSource(PIECES))
    sink_one, first = one.ask()
    one.source.release(1)
    await eventually(lambda: sink_one.text == PIECES[0], within=10, what="a piece")
    lead = lead_key(key_of(one))
    run = await redis.get(lead)
    # Time itself must pass here: three leases, in which a lease not renewed would end.
    await asyncio.sleep(3 * LEASE_S)
    assert await redis.get(lead) == run
    sink_two, late = two.ask()
    await following(redis)
    one.source.release(len(PIECES))
    await asyncio.gather(first, late)
    assert sink_two.text == ANSWER and two.source.requests == []


async def test_a_viewer_on_another_replica_keeps_the_upstream_open_after_the_leaders_left(
    replicas, redis
):
    one, two = replicas(GatedSource(PIECES)), replicas(GatedSource(PIECES))
    sink_one, leader, sink_two, follower = await first_piece_followed(one, two)
    await following(redis)
    # The only viewer on the leading replica stops.
    assert await one.stop(sink_one, leader) is EndReason.STOPPED_BY_USER
    checks = one.store.watch_checks
    await eventually(
        lambda: one.store.watch_checks >= checks + 2, within=10, what="the leader's checks"
    )
    assert not one.source.closed.is_set(), "the upstream goes on for the remote viewer"
    one.source.release(len(PIECES))
    result_two = await follower
    assert sink_two.text == ANSWER and result_two.reason is EndReason.COMPLETE
    assert len(one.source.requests) == 1 and two.source.requests == []


async def test_the_upstream_is_closed_once_the_last_remote_viewer_stops_too(replicas, redis):
    one, two = replicas(GatedSource(PIECES)), replicas(GatedSource(PIECES))
    sink_one, leader, sink_two, follower = await first_piece_followed(one, two)
    await following(redis)
    assert await one.stop(sink_one, leader) is EndReason.STOPPED_BY_USER
    assert await two.stop(sink_two, follower) is EndReason.STOPPED_BY_USER
    await asyncio.wait_for(one.source.closed.wait(), 10)
    assert one.source.sent == 1 and one.hub.live == 0 and two.hub.live == 0

    async def closed() -> bool:
        (stream,) = await streams(redis)
        return (await redis.xrevrange(stream, count=1))[0][1] == {"end": "closed"}

    await eventually(closed, within=10, what="the closed end entry")


async def test_a_leader_gone_before_the_first_piece_is_replaced_by_a_follower(replicas, redis):
    one, two = replicas(GatedSource(PIECES)), replicas(ScriptedSource(PIECES))
    sink_one, leader = one.ask()
    await leading(one)
    sink_two, follower = two.ask()
    await following(redis)
    one.die()
    # Its lease ends unrenewed; the follower then leads, and asks upstream itself.
    result = await follower
    assert sink_two.text == ANSWER and result.reason is EndReason.COMPLETE
    assert len(two.source.requests) == 1 and two.source.requests[0] == QUESTION
    assert result.stats.source == "live"
    await one.stop(sink_one, leader)  # the gone replica's own viewer


async def test_a_leader_gone_mid_answer_is_resumed_by_the_followers_viewers_without_repeats(
    replicas, redis
):
    one = replicas(GatedSource(PIECES))
    # Asked to continue, the model sends the rest of the answer.
    two = replicas(ScriptedSource(PIECES[2:]), resilience=Resilience(retries=0, resumes=1))
    sink_one, leader = one.ask()
    await leading(one)
    sink_two, follower = two.ask()
    one.source.release(2)
    shown = "".join(PIECES[:2])
    await eventually(lambda: sink_two.text == shown, within=10, what="two pieces on two")
    one.die()
    result = await follower
    assert sink_two.text == ANSWER and result.reason is EndReason.COMPLETE
    assert result.stats.resumes == 1
    (continuation,) = two.source.requests
    assert continuation.messages[-2].content == shown  # asked to go on from what was shown
    await one.stop(sink_one, leader)  # the gone replica's own viewer


async def test_without_resumes_a_leader_gone_mid_answer_ends_as_a_dropped_stream(replicas):
    one, two = replicas(GatedSource(PIECES)), replicas(ScriptedSource(PIECES))
    sink_one, leader, sink_two, follower = await first_piece_followed(one, two)
    one.die()
    result = await follower
    assert result.reason is EndReason.ERROR and isinstance(result.error, LeaderGone)
    assert result.error.cause == "dropped" and sink_two.text == PIECES[0]
    assert two.source.requests == []
    await one.stop(sink_one, leader)  # the gone replica's own viewer


async def test_the_leaders_upstream_error_reaches_the_followers(replicas):
    one, two = replicas(GatedSource(PIECES, fail_at=1)), replicas(GatedSource(PIECES))
    sink_one, leader, sink_two, follower = await first_piece_followed(one, two)
    one.source.release(1)
    done = await asyncio.gather(leader, follower)
    assert [r.reason for r in done] == [EndReason.ERROR] * 2
    assert sink_one.text == sink_two.text == PIECES[0]
    assert isinstance(done[1].error, StreamBroken) and not isinstance(done[1].error, LeaderGone)
    assert done[1].error.user_message == done[0].error.user_message
    assert two.source.requests == []


async def test_different_requests_on_two_replicas_each_go_upstream(replicas):
    one, two = replicas(GatedSource(PIECES)), replicas(GatedSource(PIECES))
    warmer = ChatRequest(messages=QUESTION.messages, model="m", temperature=0.2)
    _, first = one.ask()
    _, second = two.ask(warmer)
    await eventually(
        lambda: len(one.source.requests) == len(two.source.requests) == 1,
        within=10,
        what="a request on each replica",
    )
    one.source.release(len(PIECES) + 1)
    two.source.release(len(PIECES) + 1)
    await asyncio.gather(first, second)


async def test_with_redis_down_a_live_answer_is_shared_within_the_replica(caplog):
    caplog.set_level(logging.WARNING)
    store = RedisSharedStreams(f"redis://127.0.0.1:{free_port()}/0", lease_s=LEASE_S)
    source = ScriptedSource(PIECES)
    hub = SharedAnswers(live_remote=store)
    p = Pipeline(source, sharing=hub, flush_interval_s=0, resilience=NO_RETRIES)
    try:
        done = await asyncio.gather(answer(p), answer(p))
    finally:
        await store.aclose()
    assert [sink.text for sink, _ in done] == [ANSWER] * 2
    assert len(source.requests) == 1
    assert "shared answers: a live answer is shared within this replica only" in caplog.text
    key = fingerprint(QUESTION, p._sharing_context(p.guardrails))
    assert "What is a stream" not in caplog.text and key not in caplog.text


async def test_a_redis_that_never_answers_holds_no_answer_past_the_join_timeout(caplog):
    caplog.set_level(logging.WARNING)
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # connected, and never a reply

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # A long lease: the store's socket timeout (lease / 3 + 5 s) is then 25 s.
    url = f"redis://127.0.0.1:{port}/0"
    store = RedisSharedStreams(url, lease_s=60, join_timeout_s=0.2)
    source = ScriptedSource(PIECES)
    p = Pipeline(
        source, sharing=SharedAnswers(live_remote=store), flush_interval_s=0, resilience=NO_RETRIES
    )
    try:
        sink, result = await asyncio.wait_for(answer(p), 10)
    finally:
        await store.aclose()
        for writer in accepted:
            writer.close()
        server.close()
    assert sink.text == ANSWER and result.reason is EndReason.COMPLETE
    assert len(source.requests) == 1
    assert "shared within this replica only: Redis failed (TimeoutError)" in caplog.text


def test_end_entries_carry_what_the_user_is_told_and_nothing_more():
    assert decode_end(encode_end(None)) is None
    assert isinstance(decode_end(encode_end(asyncio.CancelledError())), LeaderGone)
    limited = RateLimited("Too many requests.", retry_after=3.0, detail="sk-secret body")
    fields = encode_end(limited)
    assert "sk-secret" not in json.dumps(fields)
    back = decode_end(fields)
    assert isinstance(back, RateLimited) and back.retry_after == 3.0
    assert back.user_message == "Too many requests." and back.status == 429
    other = decode_end(encode_end(ValueError("a detail")))
    assert type(other) is ProviderError and "detail" not in other.user_message
