"""SSE event logs shared through Redis Streams, so a reconnect may land on any replica.

The replica running an answer mirrors each event into `streamchat:sse:{id}` (entry id `0-{seq}`,
so a resume reads exactly what it missed); any replica serves a `Last-Event-ID` from it, passes
a cancel on (`streamchat:sse:cancel`), keeps a stream followed elsewhere alive, and checks its
owner. If Redis fails, a running answer goes on for its local followers. Details: docs/sse.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from streamchat.faces.sse import KEEPALIVE, EventLog, SseEvent

log = logging.getLogger("streamchat.faces.sse")

PREFIX = "streamchat:sse:"
CANCEL_CHANNEL = f"{PREFIX}cancel"
END = "__end__"


class UnknownStream(LookupError):
    """No stream with that id is kept (never was, or it expired)."""


class EventsDropped(LookupError):
    """The stream is kept, but not from the requested event on."""


class StoreUnavailable(RuntimeError):
    """Redis could not be reached."""


class RedisMirror:
    def __init__(
        self, url: str, *, ttl_s: float = 300.0, max_events: int = 10_000, client: Any = None
    ) -> None:
        import redis.asyncio as redis  # only deployments with REDIS_URL need it

        self.replica = uuid.uuid4().hex[:12]
        self.ttl_s = ttl_s
        self.max_events = max_events
        self._redis: Any = client or redis.from_url(
            url, socket_connect_timeout=2, health_check_interval=30
        )
        self._writers: set[asyncio.Task[None]] = set()
        self._subscriber: asyncio.Task[None] | None = None
        self.retry_s = 2.0  # between attempts to listen on the cancel channel
        self.cancel_channel_failures = 0  # attempts failed in a row

    @staticmethod
    def key(stream_id: str) -> str:
        return f"{PREFIX}{stream_id}"

    # --- the replica that runs the answer --------------------------------------------------

    def attach(self, event_log: EventLog) -> None:
        """Mirror `event_log` into Redis, in order, from now on."""
        queue: asyncio.Queue[SseEvent | None] = asyncio.Queue()
        event_log.observer = queue.put_nowait
        task = asyncio.create_task(self._write(event_log.stream_id, event_log.owner, queue))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def _write(
        self, stream_id: str, client_digest: str, queue: asyncio.Queue[SseEvent | None]
    ) -> None:
        key, owner = self.key(stream_id), f"{self.key(stream_id)}:owner"
        client = f"{key}:client"
        ttl = max(1, int(self.ttl_s))
        failed = False
        try:
            await self._redis.set(client, client_digest, ex=ttl)
            await self._redis.set(owner, self.replica, ex=ttl)
        except Exception as exc:
            failed = self._warn(stream_id, exc)
        last_seq = 0
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            ended = batch[-1] is None
            if not failed:
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for item in batch:
                            if item is None:
                                pipe.xadd(key, {"event": END, "data": "{}"}, id=f"0-{last_seq + 1}")
                                pipe.delete(owner)
                                continue
                            last_seq = item.seq
                            data = json.dumps(item.data, ensure_ascii=False, separators=(",", ":"))
                            pipe.xadd(
                                key,
                                {"event": item.event, "data": data},
                                id=f"0-{item.seq}",
                                maxlen=self.max_events,
                                approximate=False,
                            )
                        pipe.expire(key, ttl)
                        pipe.expire(client, ttl)
                        if not ended:
                            pipe.expire(owner, ttl)
                        await pipe.execute()
                except Exception as exc:
                    failed = self._warn(stream_id, exc)
            else:
                last_seq = max((i.seq for i in batch if i is not None), default=last_seq)
            if ended:
                return

    def _warn(self, stream_id: str, exc: Exception) -> bool:
        log.warning(
            "an SSE stream is not shared with other replicas: Redis failed (%s)",
            type(exc).__name__,
        )
        log.debug("stream %s is not shared", stream_id)
        return True

    async def followed_elsewhere(self, stream_id: str) -> bool:
        try:
            return bool(await self._redis.exists(f"{self.key(stream_id)}:followed"))
        except Exception:
            return False

    async def listen_for_cancels(self, cancel: Callable[[str], Awaitable[bool]]) -> None:
        """Cancel the answers this replica runs when any replica is asked to."""

        async def listen() -> None:
            while True:
                try:
                    async with self._redis.pubsub() as pubsub:
                        await pubsub.subscribe(CANCEL_CHANNEL)
                        if self.cancel_channel_failures:
                            log.info("SSE cancel channel: Redis answers again")
                            self.cancel_channel_failures = 0
                        async for message in pubsub.listen():
                            if message.get("type") == "message":
                                data = message["data"]
                                stream_id = data.decode() if isinstance(data, bytes) else data
                                await cancel(str(stream_id))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Said once per outage (and again when it is over), not at every retry.
                    if not self.cancel_channel_failures:
                        log.warning(
                            "SSE cancel channel: Redis failed (%s); retrying every %g s",
                            type(exc).__name__,
                            self.retry_s,
                        )
                    self.cancel_channel_failures += 1
                    await asyncio.sleep(self.retry_s)

        self._subscriber = asyncio.create_task(listen())

    # --- any replica ---------------------------------------------------------------------

    async def request_cancel(self, stream_id: str) -> bool | None:
        """Ask the replica running `stream_id` to stop it. True if one does, False if it has
        ended, None if no such stream is kept."""
        try:
            if await self._redis.exists(f"{self.key(stream_id)}:owner"):
                await self._redis.publish(CANCEL_CHANNEL, stream_id)
                return True
            return False if await self._redis.exists(self.key(stream_id)) else None
        except Exception as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc

    async def owner_of(self, stream_id: str) -> str | None:
        """The digest of whom `stream_id` belongs to; None if no such stream is kept."""
        try:
            value = await self._redis.get(f"{self.key(stream_id)}:client")
        except Exception as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc
        return value.decode() if isinstance(value, bytes) else value

    async def check(self, stream_id: str, after_seq: int) -> None:
        """Raise UnknownStream or EventsDropped unless the events after `after_seq` are kept;
        StoreUnavailable if Redis cannot say."""
        try:
            first = await self._redis.xrange(self.key(stream_id), count=1)
        except Exception as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc
        if not first:
            raise UnknownStream(stream_id)
        first_seq = _seq(first[0][0])
        if after_seq + 1 < first_seq:
            raise EventsDropped(stream_id)

    async def ended_at(self, stream_id: str, after_seq: int) -> bool:
        """Whether the stream has ended with nothing after `after_seq`."""
        try:
            entries = await self._redis.xrange(self.key(stream_id), min=f"(0-{after_seq}", count=1)
        except Exception as exc:
            raise StoreUnavailable(str(type(exc).__name__)) from exc
        return bool(entries) and _text(entries[0][1], "event") == END

    async def follow(
        self, stream_id: str, after_seq: int, *, keepalive_s: float
    ) -> AsyncIterator[object]:
        """The events after `after_seq`, then the live ones until the end; KEEPALIVE whenever
        `keepalive_s` pass without one."""
        key, followed = self.key(stream_id), f"{self.key(stream_id)}:followed"
        heartbeat = max(2, int(keepalive_s * 2) + 1)
        last = f"0-{after_seq}"
        try:
            while True:
                await self._redis.set(followed, self.replica, ex=heartbeat)
                entries = await self._redis.xrange(key, min=f"({last}", count=500)
                if not entries:
                    found = await self._redis.xread(
                        {key: last}, count=500, block=max(1, int(keepalive_s * 1000))
                    )
                    entries = found[0][1] if found else []
                    if not entries:
                        yield KEEPALIVE
                        continue
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    event = _text(fields, "event")
                    if event == END:
                        return
                    yield SseEvent(stream_id, _seq(last), event, json.loads(_text(fields, "data")))
        finally:
            with contextlib.suppress(Exception):
                await self._redis.delete(followed)

    async def aclose(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._subscriber
        for task in list(self._writers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)
        with contextlib.suppress(Exception):
            await self._redis.aclose()


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[1])


def _text(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    return value.decode() if isinstance(value, bytes) else str(value)
