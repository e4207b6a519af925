"""SSE event logs shared through a real Redis: two hubs stand for two replicas. A stream run by
one is followed from any event on the other, exactly; a cancel on either stops it; a client
following elsewhere keeps it from being abandoned; Redis down is a clear failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from streamchat.faces.sse import KEEPALIVE, EventLog, MemoryStreamStore, SseEvent, StreamHub
from streamchat.faces.sse_redis import (
    CANCEL_CHANNEL,
    END,
    EventsDropped,
    RedisMirror,
    StoreUnavailable,
    UnknownStream,
)
from tests.databases import RedisState, redis_server, redis_state
from tests.harness import free_port
from tests.waiting import eventually


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def in_redis(redis_url) -> AsyncIterator[RedisState]:
    async with redis_state(redis_url) as state:
        yield state


async def subscribed(in_redis: RedisState, count: int) -> None:
    async def holds() -> bool:
        return await in_redis.subscribers(CANCEL_CHANNEL) == count

    await eventually(holds, within=10, what=f"{count} subscribers to the cancel channel")


async def mirrored(in_redis: RedisState, stream_id: str, events: int) -> None:
    """Wait until Redis holds the stream's first `events` events."""

    async def holds() -> bool:
        return await in_redis.entries(RedisMirror.key(stream_id)) >= events

    await eventually(holds, within=10, what=f"{events} events of {stream_id} in Redis")


async def mirror_ended(in_redis: RedisState, stream_id: str) -> None:
    """Wait until the mirror has written the stream's end and given up owning it."""
    key = RedisMirror.key(stream_id)

    async def holds() -> bool:
        last = await in_redis.last_entry(key)
        ended = last is not None and last.get("event") == END
        return ended and not await in_redis.exists(f"{key}:owner")

    await eventually(holds, within=10, what=f"the end of {stream_id} in Redis")


@pytest.fixture
async def replicas(redis_url, in_redis) -> AsyncIterator[tuple[StreamHub, StreamHub]]:
    await subscribed(in_redis, 0)  # the hubs of earlier tests have left the channel
    hubs = [
        StreamHub(
            MemoryStreamStore(),
            grace_s=0.5,
            keepalive_s=0.2,
            mirror=RedisMirror(redis_url, ttl_s=60, max_events=50),
        )
        for _ in range(2)
    ]
    for hub in hubs:
        await hub.start_background()
    await subscribed(in_redis, 2)  # a cancel published before a hub listens is lost
    yield hubs[0], hubs[1]
    for hub in hubs:
        await hub.aclose()


def producer(count: int, *, pause: float = 0.01, then_wait: bool = False):
    async def produce(event_log: EventLog) -> None:
        for n in range(count):
            event_log.append("token", {"text": f"t{n} "})
            await asyncio.sleep(pause)  # paces the answer: not a wait
        if then_wait:
            await asyncio.Event().wait()
        event_log.append("done", {"reason": "complete"})

    return produce


async def collect(events: AsyncIterator[object]) -> list[SseEvent]:
    return [item async for item in events if item is not KEEPALIVE]  # type: ignore[misc]


async def test_another_replica_resumes_exactly_after_the_last_event_seen(replicas, in_redis):
    one, two = replicas
    event_log = one.start(producer(30))
    await mirrored(in_redis, event_log.stream_id, 5)  # the rest are still coming
    await two.mirror.check(event_log.stream_id, 5)
    resumed = await collect(two.mirror.follow(event_log.stream_id, 5, keepalive_s=0.2))
    assert [e.seq for e in resumed] == list(range(6, 32)), "no gaps, no duplicates, to the end"
    assert resumed[0].data == {"text": "t5 "} and resumed[-1].event == "done"
    assert resumed[0].id == f"{event_log.stream_id}:6"
    # From the very start, after the answer has ended, too.
    everything = await collect(two.mirror.follow(event_log.stream_id, 0, keepalive_s=0.2))
    assert [e.seq for e in everything] == list(range(1, 32))


async def test_every_replica_can_tell_whom_a_stream_belongs_to(replicas, in_redis):
    one, two = replicas
    event_log = one.start(producer(3), owner="digest-of-its-owner")
    await mirror_ended(in_redis, event_log.stream_id)
    assert await two.mirror.owner_of(event_log.stream_id) == "digest-of-its-owner"
    assert await two.mirror.owner_of("nosuchstream") is None


async def test_another_replica_tells_when_nothing_follows_an_event(replicas, in_redis):
    one, two = replicas
    event_log = one.start(producer(3))
    await mirror_ended(in_redis, event_log.stream_id)
    assert await two.mirror.ended_at(event_log.stream_id, 4)  # after "done": nothing more
    assert not await two.mirror.ended_at(event_log.stream_id, 3)


async def test_quiet_streams_get_keepalives_across_replicas(replicas, in_redis):
    one, two = replicas
    event_log = one.start(producer(2, then_wait=True))
    await mirrored(in_redis, event_log.stream_id, 2)
    seen: list[object] = []
    async for item in two.mirror.follow(event_log.stream_id, 0, keepalive_s=0.2):
        seen.append(item)
        if seen.count(KEEPALIVE) == 2:
            break
    assert [getattr(e, "seq", None) for e in seen[:2]] == [1, 2]
    await one.cancel(event_log.stream_id)


async def test_unknown_and_trimmed_streams_are_told_apart(replicas, in_redis):
    one, two = replicas
    with pytest.raises(UnknownStream):
        await two.mirror.check("nosuchstream", 0)
    event_log = one.start(producer(80, pause=0))
    await collect(one.follow(event_log))  # to the end
    await mirror_ended(in_redis, event_log.stream_id)  # the mirror has written the last events
    with pytest.raises(EventsDropped):
        await two.mirror.check(event_log.stream_id, 3)  # only the newest 50 are kept
    await two.mirror.check(event_log.stream_id, 40)


async def test_a_cancel_on_either_replica_stops_the_answer(replicas, in_redis):
    one, two = replicas
    event_log = one.start(producer(5, then_wait=True))
    await mirrored(in_redis, event_log.stream_id, 5)
    assert await two.mirror.request_cancel(event_log.stream_id) is True
    await eventually(
        lambda: not one.is_running(event_log.stream_id), within=5, what="the answer stopped"
    )
    await mirror_ended(in_redis, event_log.stream_id)
    assert await two.mirror.request_cancel(event_log.stream_id) is False, "it has ended"
    assert await two.mirror.request_cancel("nosuchstream") is None


async def test_a_follower_on_another_replica_keeps_the_answer_from_being_abandoned(replicas):
    one, two = replicas
    event_log = one.start(producer(3, then_wait=True))  # nobody follows on `one`
    follower = asyncio.create_task(
        collect(two.mirror.follow(event_log.stream_id, 0, keepalive_s=0.2))
    )
    await asyncio.sleep(1.5)  # three grace periods: the time under test, not a wait
    assert one.is_running(event_log.stream_id), "followed elsewhere: not abandoned"
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    await eventually(
        lambda: not one.is_running(event_log.stream_id),
        within=10,
        what="abandoned once nobody follows",
    )


async def test_redis_down_keeps_local_streams_and_refuses_remote_resumes(caplog):
    url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    hub = StreamHub(MemoryStreamStore(), mirror=RedisMirror(url))
    caplog.set_level(logging.WARNING, logger="streamchat.faces.sse")
    try:
        event_log = hub.start(producer(3))
        events = await collect(hub.follow(event_log))
        assert [e.event for e in events] == ["token", "token", "token", "done"]
        with pytest.raises(StoreUnavailable):
            await hub.mirror.check("x", 0)
        with pytest.raises(StoreUnavailable):
            await hub.mirror.request_cancel("x")
    finally:
        await hub.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("not shared with other replicas" in m for m in messages)
    assert not any("pw" in m for m in messages)


async def test_a_cancel_channel_outage_is_logged_once_and_its_end_once(caplog):
    port = free_port()
    mirror = RedisMirror(f"redis://127.0.0.1:{port}/0")
    mirror.retry_s = 0.01
    caplog.set_level(logging.INFO, logger="streamchat.faces.sse")

    async def cancel(stream_id: str) -> bool:
        return False

    redis = None
    try:
        await mirror.listen_for_cancels(cancel)
        await eventually(
            lambda: mirror.cancel_channel_failures >= 20, within=10, what="20 failed attempts"
        )
        redis = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            stdout=asyncio.subprocess.DEVNULL,
        )
        await eventually(
            lambda: mirror.cancel_channel_failures == 0, within=10, what="the channel back"
        )
    finally:
        await mirror.aclose()
        if redis is not None:
            redis.terminate()
            await asyncio.wait_for(redis.wait(), 10)
    messages = [r.getMessage() for r in caplog.records if "cancel channel" in r.getMessage()]
    assert len(messages) == 2, messages
    assert "Redis failed" in messages[0] and "answers again" in messages[1]
