"""Resumable Server-Sent Events: the encoder, the per-stream event log, and the hub that runs
answers in the background so a client can reconnect with `Last-Event-ID` and miss nothing.

An answer runs as its own task and writes numbered events into an `EventLog`; HTTP responses
only follow a log. A client that goes away does not stop the answer at once: it goes on for a
grace period, and a reconnect (EventSource does that by itself, sending `Last-Event-ID`) gets
exactly the events after that id and then the live rest. If nobody comes back within the grace
period, the answer is cancelled and its upstream request closed. Finished logs are kept for a
while (`ttl_s`) and bounded in size, in memory; the `StreamStore` protocol is the seam for a
shared store (Redis Streams) across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streamchat.faces.sse_redis import RedisMirror

log = logging.getLogger("streamchat.faces.sse")

KEEPALIVE = object()  # yielded by `follow` when it is time for a keep-alive comment


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event of a stream. `seq` counts from 1 within the stream."""

    stream_id: str
    seq: int
    event: str
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.stream_id}:{self.seq}"


def encode_event(event: SseEvent) -> bytes:
    """The wire form: `id:`, `event:` and one `data:` line of compact JSON, then a blank line."""
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.event}\ndata: {data}\n\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


KEEPALIVE_BYTES = b": keep-alive\n\n"
_MAX_SEQ_DIGITS = 18


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    """`"abc123:17"` -> ("abc123", 17); anything else -> None (digits only in ASCII, and no
    more than a stream could ever number)."""
    if not value:
        return None
    stream_id, _, seq = value.strip().rpartition(":")
    if not stream_id or not (seq.isascii() and seq.isdigit()) or len(seq) > _MAX_SEQ_DIGITS:
        return None
    return stream_id, int(seq)


class EventLog:
    """The events of one stream, in order, bounded to the newest `max_events`."""

    def __init__(self, stream_id: str, *, max_events: int = 10_000) -> None:
        self.stream_id = stream_id
        self.max_events = max_events
        self._events: list[SseEvent] = []
        self._first_seq = 1  # seq of _events[0]
        self._next_seq = 1
        self._changed = asyncio.Event()
        self.closed = False
        self.closed_at: float | None = None
        # Whom the stream belongs to (a digest; see web.py): only they may resume or stop it.
        self.owner = ""
        # Sees each event as it is appended, and None at the close (the Redis mirror).
        self.observer: Callable[[SseEvent | None], None] | None = None

    def append(self, event: str, data: dict[str, Any]) -> SseEvent:
        if self.closed:
            raise RuntimeError(f"stream {self.stream_id} is closed")
        item = SseEvent(self.stream_id, self._next_seq, event, data)
        self._next_seq += 1
        self._events.append(item)
        if len(self._events) > self.max_events:
            dropped = len(self._events) - self.max_events
            del self._events[:dropped]
            self._first_seq += dropped
        self._wake()
        if self.observer is not None:
            self.observer(item)
        return item

    def close(self, now: float) -> None:
        self.closed = True
        self.closed_at = now
        self._wake()
        if self.observer is not None:
            self.observer(None)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def since(self, seq: int) -> list[SseEvent]:
        """Events after `seq`. Raises LookupError if some of them were already dropped."""
        if seq + 1 < self._first_seq:
            raise LookupError(f"events after {seq} are no longer kept")
        return self._events[max(0, seq + 1 - self._first_seq) :]

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    async def wait(self, within: float) -> bool:
        """Wait up to `within` seconds for a new event or the close; False if none came."""
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), within)
        except TimeoutError:
            return False
        return True


class StreamStore(Protocol):
    """Where event logs live. In memory here; Redis Streams for several replicas."""

    def create(self, stream_id: str) -> EventLog: ...

    def get(self, stream_id: str) -> EventLog | None: ...

    def prune(self, now: float) -> None: ...


class MemoryStreamStore:
    """Event logs in this process, each bounded in size; finished ones dropped after `ttl_s`,
    and the oldest finished ones first when more than `max_streams` are kept."""

    def __init__(
        self, *, ttl_s: float = 300.0, max_events: int = 10_000, max_streams: int = 1_000
    ) -> None:
        self.ttl_s = ttl_s
        self.max_events = max_events
        self.max_streams = max_streams
        self._logs: dict[str, EventLog] = {}

    def create(self, stream_id: str) -> EventLog:
        event_log = EventLog(stream_id, max_events=self.max_events)
        self._logs[stream_id] = event_log
        return event_log

    def get(self, stream_id: str) -> EventLog | None:
        return self._logs.get(stream_id)

    def prune(self, now: float) -> None:
        for stream_id, event_log in list(self._logs.items()):
            if event_log.closed_at is not None and now - event_log.closed_at > self.ttl_s:
                del self._logs[stream_id]
        finished = sorted(
            (lg.closed_at, sid) for sid, lg in self._logs.items() if lg.closed_at is not None
        )
        excess = len(self._logs) - self.max_streams
        for _, stream_id in finished[: max(0, excess)]:
            del self._logs[stream_id]

    def __len__(self) -> int:
        return len(self._logs)


@dataclass
class _Running:
    task: asyncio.Task[None]
    followers: int = 0
    grace_timer: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


Producer = Callable[[EventLog], Coroutine[Any, Any, None]]


class StreamHub:
    """Runs answers in the background and lets HTTP responses follow (and re-follow) them."""

    def __init__(
        self,
        store: StreamStore | None = None,
        *,
        grace_s: float = 30.0,
        keepalive_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        mirror: RedisMirror | None = None,
    ) -> None:
        self.store: StreamStore = store or MemoryStreamStore()
        # With several replicas: event logs shared through Redis Streams (sse_redis.py).
        self.mirror = mirror
        self.grace_s = grace_s
        self.keepalive_s = keepalive_s
        self._clock = clock
        self._running: dict[str, _Running] = {}

    def start(self, produce: Producer, *, owner: str = "") -> EventLog:
        """Start an answer; `produce(log)` appends its events. The log is closed when it ends.
        `owner` is kept with it (and in the shared store) for the resumes and stops to check."""
        self.store.prune(self._clock())
        stream_id = uuid.uuid4().hex[:16]
        event_log = self.store.create(stream_id)
        event_log.owner = owner
        if self.mirror is not None:
            self.mirror.attach(event_log)
        running = _Running(task=asyncio.create_task(self._produce(event_log, produce)))
        self._running[stream_id] = running
        # A stream nobody ever follows (the client went away before the response started) is
        # abandoned like one whose follower left.
        self._arm_grace_timer(stream_id, running)
        return event_log

    async def _produce(self, event_log: EventLog, produce: Producer) -> None:
        try:
            await produce(event_log)
        except asyncio.CancelledError:
            # Ids only at DEBUG: with one (and its owner's token) a stream can be followed.
            log.info("an SSE stream was cancelled")
            log.debug("stream %s cancelled", event_log.stream_id)
        except Exception:
            log.exception("an SSE stream failed")
            if not event_log.closed:
                event_log.append("error", {"message": "The answer failed unexpectedly. Try again."})
        finally:
            if not event_log.closed:
                event_log.close(self._clock())
            running = self._running.pop(event_log.stream_id, None)
            if running is not None:
                if running.grace_timer is not None:
                    running.grace_timer.cancel()
                running.done.set()

    def get(self, stream_id: str) -> EventLog | None:
        return self.store.get(stream_id)

    def is_running(self, stream_id: str) -> bool:
        return stream_id in self._running

    async def cancel(self, stream_id: str) -> bool:
        """Stop an answer (closing its upstream request). False if it is not running."""
        running = self._running.get(stream_id)
        if running is None:
            return False
        running.task.cancel()
        await running.done.wait()
        return True

    async def follow(self, event_log: EventLog, after_seq: int = 0) -> AsyncIterator[object]:
        """Yield the events after `after_seq`, then live ones until the stream ends; KEEPALIVE
        whenever `keepalive_s` pass without one. Raises LookupError if events were dropped."""
        pending = event_log.since(after_seq)  # may raise before we count as a follower
        running = self._running.get(event_log.stream_id)
        if running is not None:
            running.followers += 1
            if running.grace_timer is not None:
                running.grace_timer.cancel()
                running.grace_timer = None
        try:
            seq = after_seq
            while True:
                for item in pending:
                    yield item
                    seq = item.seq
                # Events may have arrived while we were yielding: check before waiting (no
                # await in between, so none can slip past the wait).
                if event_log.last_seq > seq:
                    pending = event_log.since(seq)
                    continue
                if event_log.closed:
                    return
                if not await event_log.wait(self.keepalive_s):
                    yield KEEPALIVE
                pending = event_log.since(seq)
        finally:
            # The client went away (or the stream ended): if the answer is still running and
            # nobody else follows it, give it the grace period to be picked up again.
            if running is not None and event_log.stream_id in self._running:
                running.followers -= 1
                if running.followers == 0:
                    self._arm_grace_timer(event_log.stream_id, running)

    def _arm_grace_timer(self, stream_id: str, running: _Running) -> None:
        async def abandon() -> None:
            await asyncio.sleep(self.grace_s)
            if self.mirror is not None and await self.mirror.followed_elsewhere(stream_id):
                running.grace_timer = None
                self._arm_grace_timer(stream_id, running)  # a client follows on another replica
                return
            if running.followers == 0:
                log.info("an SSE stream was abandoned for %.0f s; cancelling it", self.grace_s)
                log.debug("stream %s abandoned", stream_id)
                running.task.cancel()

        if running.grace_timer is not None:
            running.grace_timer.cancel()
        running.grace_timer = asyncio.create_task(abandon())

    async def start_background(self) -> None:
        """With a mirror: take cancels asked of any replica."""
        if self.mirror is not None:
            await self.mirror.listen_for_cancels(self.cancel)

    async def aclose(self) -> None:
        """Cancel every running answer (at shutdown)."""
        for stream_id in list(self._running):
            with contextlib.suppress(Exception):
                await self.cancel(stream_id)
        if self.mirror is not None:
            await self.mirror.aclose()
