"""The resumable SSE machinery: wire format, bounded logs, follow and re-follow with
Last-Event-ID (exact remainder, no duplicates, no gaps), keep-alives, and abandoned answers
cancelled after the grace period."""

from __future__ import annotations

import asyncio

import pytest

from streamchat.faces.sse import (
    KEEPALIVE,
    EventLog,
    MemoryStreamStore,
    SseEvent,
    StreamHub,
    encode_event,
    parse_event_id,
)


def test_event_wire_format_has_id_name_and_one_json_data_line():
    wire = encode_event(SseEvent("abc", 7, "token", {"text": "line one\nline two é"}))
    assert wire == ('id: abc:7\nevent: token\ndata: {"text":"line one\\nline two é"}\n\n'.encode())


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("abc:7", ("abc", 7)), ("a:b:12", ("a:b", 12)), ("abc", None), (":3", None), ("", None)],
)
def test_event_ids_are_parsed_defensively(value, parsed):
    assert parse_event_id(value) == parsed


async def test_log_is_bounded_and_says_when_events_were_dropped():
    log = EventLog("s", max_events=3)
    for n in range(5):
        log.append("token", {"n": n})
    assert [e.seq for e in log.since(2)] == [3, 4, 5]
    with pytest.raises(LookupError):
        log.since(0)


def test_store_drops_finished_logs_after_their_ttl_and_caps_their_number():
    store = MemoryStreamStore(ttl_s=10, max_streams=2)
    a, b, c = store.create("a"), store.create("b"), store.create("c")
    a.close(now=0)
    b.close(now=5)
    store.prune(now=11)
    assert store.get("a") is None and store.get("b") is not None
    c.close(now=6)
    store.create("d")
    store.prune(now=12)
    assert store.get("b") is None, "over the cap, the oldest finished log goes first"
    assert store.get("c") is not None and store.get("d") is not None


def producer(count: int, gate: asyncio.Event | None = None, started: asyncio.Event | None = None):
    cancelled = asyncio.Event()

    async def produce(log: EventLog) -> None:
        try:
            for n in range(count):
                if gate is not None and n == count // 2:
                    if started is not None:
                        started.set()
                    await gate.wait()
                log.append("token", {"text": f"<{n}>"})
                await asyncio.sleep(0)  # one token per loop turn: not a wait
            log.append("done", {})
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return produce, cancelled


async def collect(iterator, limit=None):
    out = []
    async for item in iterator:
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


async def test_following_a_stream_yields_every_event_in_order_then_ends():
    hub = StreamHub(keepalive_s=5)
    produce, _ = producer(10)
    log = hub.start(produce)
    events = await collect(hub.follow(log))
    assert [e.seq for e in events] == list(range(1, 12))
    assert events[-1].event == "done"


@pytest.mark.parametrize("cut", [1, 3, 6, 10])
async def test_refollowing_after_any_event_gives_exactly_the_rest(cut):
    hub = StreamHub(keepalive_s=5, grace_s=5)
    gate = asyncio.Event()
    produce, _ = producer(12, gate)
    log = hub.start(produce)
    first = hub.follow(log)
    seen = await collect(first, limit=min(cut, 6))
    await first.aclose()  # the client goes away
    gate.set()
    rest = await collect(hub.follow(log, after_seq=seen[-1].seq))
    sequence = [e.seq for e in seen + rest]
    assert sequence == list(range(1, log.last_seq + 1)), "no duplicates and no gaps"


async def test_keepalives_are_yielded_while_the_answer_is_quiet():
    hub = StreamHub(keepalive_s=0.02)
    gate, started = asyncio.Event(), asyncio.Event()
    produce, _ = producer(4, gate, started)
    log = hub.start(produce)
    items = []
    async for item in hub.follow(log):
        items.append(item)
        if items.count(KEEPALIVE) == 2:
            gate.set()
    assert items.count(KEEPALIVE) >= 2
    assert isinstance(items[-1], SseEvent) and items[-1].event == "done"


async def test_an_abandoned_answer_is_cancelled_after_the_grace_period():
    hub = StreamHub(keepalive_s=5, grace_s=0.05)
    gate, started = asyncio.Event(), asyncio.Event()
    produce, cancelled = producer(10, gate, started)
    log = hub.start(produce)
    follower = hub.follow(log)
    await collect(follower, limit=2)
    await follower.aclose()
    await asyncio.wait_for(cancelled.wait(), 2)
    assert log.closed and not hub.is_running(log.stream_id)


async def test_a_reconnect_within_the_grace_period_keeps_the_answer_running():
    hub = StreamHub(keepalive_s=5, grace_s=0.2)
    gate = asyncio.Event()
    produce, cancelled = producer(10, gate)
    log = hub.start(produce)
    follower = hub.follow(log)
    seen = await collect(follower, limit=2)
    await follower.aclose()
    await asyncio.sleep(0.05)  # away for a moment, within the grace period: not a wait
    rejoined = asyncio.create_task(collect(hub.follow(log, after_seq=seen[-1].seq)))
    await asyncio.sleep(0.3)  # longer than the grace period, while following: the time under test
    gate.set()
    rest = await rejoined
    assert not cancelled.is_set()
    assert rest[-1].event == "done"


async def test_cancel_stops_a_running_answer():
    hub = StreamHub(keepalive_s=5)
    gate, started = asyncio.Event(), asyncio.Event()
    produce, cancelled = producer(10, gate, started)
    log = hub.start(produce)
    await asyncio.wait_for(started.wait(), 2)
    assert await hub.cancel(log.stream_id)
    assert cancelled.is_set() and log.closed
    assert not await hub.cancel(log.stream_id)


async def test_an_answer_that_crashes_ends_with_an_error_event_not_silence():
    hub = StreamHub(keepalive_s=5)

    async def explode(log: EventLog) -> None:
        log.append("token", {"text": "a"})
        raise RuntimeError("bug")

    log = hub.start(explode)
    events = await collect(hub.follow(log))
    assert [e.event for e in events] == ["token", "error"]
    assert "bug" not in str(events[-1].data)
