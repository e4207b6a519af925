"""Shared answers: identical requests asked at the same time share one upstream stream, and a
complete answer may be kept for a while and replayed to an identical later request.

A class often asks the same starter question within seconds; on one API key that is one billed,
rate-limited request per student for the same answer. `SharedAnswers` keys each request by a
fingerprint (a hash, never logged as text) of everything that shapes the answer: the provider,
the model, every message, the sampling settings and the context the pipeline adds (language,
guardrails). The first request streams upstream into a broadcast log; a joiner replays what is
recorded at once, then follows live. Each viewer keeps its own run (guard, coalescer, sink,
pace), so each screen goes at its own pace and one viewer's Stop ends only its view; the
upstream is closed when the last viewer leaves. A complete answer (finish "stop", the viewer's
run complete) goes into an LRU `AnswerCache` with a time to live, replayed at the recorded
pace (gaps capped) with no upstream request. No I/O libraries here: across replicas, a
`LiveRemote` (Redis, in hosting/shared_streams.py) decides which replica leads a live answer;
the others follow its mirror instead of asking upstream, and a `RemoteCache` keeps complete
answers for every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from streamchat.core.errors import StreamBroken
from streamchat.core.relay import DeltaSource, StreamResult, StreamRun
from streamchat.core.sinks import Sink
from streamchat.core.types import ChatRequest, Delta, EndReason

__all__ = [
    "SHARING_MODES",
    "AnswerCache",
    "LeaderGone",
    "LiveMirror",
    "LiveRemote",
    "Recorded",
    "RemoteCache",
    "RemoteJoin",
    "SharedAnswers",
    "SharedRun",
    "SharedView",
    "fingerprint",
]

SHARING_MODES = ("off", "on", "all")
MAX_REPLAY_GAP_S = 0.1  # a cached answer's longest pause between pieces on replay
MAX_JOINS = 3  # leaders on other replicas tried before a broadcast gives up

Recorded = tuple[tuple[float, Delta], ...]  # (seconds from the request, piece)


def fingerprint(request: ChatRequest, context: str = "") -> str:
    """A hash of everything in `request` that shapes the answer, and `context` (what the
    pipeline adds: provider, guardrails, language). Equal only for the very same request."""
    shape = {
        "context": context,
        "model": request.model,
        "messages": [m.as_dict() for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "headers": sorted(request.extra_headers.items()),
    }
    text = json.dumps(shape, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class RemoteCache(Protocol):
    """Complete answers kept outside the process (Redis), shared by every replica: a miss or
    a failure answers None, a failed put is dropped; neither fails an answer."""

    async def get(self, key: str) -> Recorded | None: ...

    async def put(self, key: str, recorded: Recorded) -> None: ...


class LeaderGone(StreamBroken):
    """The replica leading a shared answer went away, or closed it, before it ended."""


class LiveMirror(Protocol):
    """The leading replica's copy of a live answer for the others. `put` and `end` never
    block and never fail (a mirror that cannot write stops mirroring and says so in the log)."""

    check_s: float  # how often the leader asks `watched` once no viewer of its own is left

    def put(self, offset: float, delta: Delta) -> None: ...

    def end(self, error: BaseException | None) -> None:
        """The answer ended: complete (None), failed (the error) or closed (CancelledError)."""

    async def watched(self) -> bool:
        """Whether a viewer on another replica follows this answer now (False if unknown)."""


@dataclass(frozen=True, slots=True)
class RemoteJoin:
    """What this replica is to a live answer: its leader (`mirror`: send every piece to the
    others) or a follower (`feed`: the leader's pieces with their offsets, from the first;
    it raises the leader's error, or LeaderGone). A follower whose leader is gone before its
    first piece joins again (leads or follows anew); after it, its viewers resume the answer
    as after any dropped stream."""

    mirror: LiveMirror | None = None
    feed: Callable[[], AsyncGenerator[tuple[float, Delta], None]] | None = None


class LiveRemote(Protocol):
    """Live answers shared by every replica (Redis). `join` answers None when it cannot tell
    (the store is down): the answer is then shared within this process only."""

    async def join(self, key: str) -> RemoteJoin | None: ...


def _size(recorded: Recorded) -> int:
    """Roughly the bytes a recorded answer holds."""
    return sum(
        64
        + len(d.text.encode("utf-8", "replace"))
        + len(d.reasoning.encode("utf-8", "replace"))
        + len(d.raw.encode("utf-8", "replace"))
        for _, d in recorded
    )


class AnswerCache:
    """Complete answers by fingerprint, each kept `ttl_s`, at most `max_bytes` in all (the
    least recently used go first). `clock` is injectable so tests need not wait."""

    def __init__(
        self, ttl_s: float, max_bytes: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Recorded, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Recorded | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, recorded, _ = entry
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return recorded

    def put(self, key: str, recorded: Recorded) -> None:
        size = _size(recorded)
        if self.ttl_s <= 0 or size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + self.ttl_s, recorded, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size


@dataclass(eq=False, slots=True)
class _Broadcast:
    """One upstream stream and what it sent so far, followed by its viewers."""

    key: str
    started: float
    pieces: list[tuple[float, Delta]] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    viewers: int = 0
    stored: bool = False  # put in the remote cache
    task: asyncio.Task[None] | None = None
    mirror: LiveMirror | None = None  # this replica leads it for the others
    followed: bool = False  # another replica leads it: its pieces come from there
    linger: asyncio.Task[None] | None = None  # no local viewer left: watching remote ones
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def changed(self) -> None:
        await self._wake.wait()

    @property
    def complete(self) -> bool:
        """Ended by the model's own stop, with no error."""
        return (
            self.done
            and self.error is None
            and any(d.finish_reason == "stop" for _, d in self.pieces)
        )


class SharedAnswers:
    """The hub: live broadcasts by fingerprint (when `share`) and the answer cache (when
    given). `eligible` says whether a request may be shared or cached at all (privacy)."""

    def __init__(
        self,
        *,
        share: bool = True,
        cache: AnswerCache | None = None,
        remote: RemoteCache | None = None,
        live_remote: LiveRemote | None = None,
        eligible: Callable[[ChatRequest], bool] = lambda _request: True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.share = share
        self.cache = cache
        self.remote = remote  # beside `cache`, for every replica
        self.live_remote = live_remote if share else None  # live answers across replicas
        self.eligible = eligible
        self._clock = clock
        self._sleep = sleep
        self._live: dict[str, _Broadcast] = {}
        self.upstream_requests = 0  # requests this hub sent upstream (for tests and benchmarks)

    @classmethod
    def configured(
        cls,
        mode: str,
        ttl_s: float,
        max_mb: float,
        *,
        login: bool,
        remote: RemoteCache | None = None,
        live_remote: LiveRemote | None = None,
    ) -> SharedAnswers | None:
        """The hub the settings ask for; None when sharing and the cache are both off. With
        login on, mode "on" shares only requests without earlier turns (no user's history)."""
        if mode not in SHARING_MODES:
            raise ValueError(f"sharing mode must be one of {', '.join(SHARING_MODES)}")
        if mode == "off" and ttl_s <= 0:
            return None
        cache = AnswerCache(ttl_s, int(max_mb * 1024 * 1024)) if ttl_s > 0 else None
        eligible = without_history if login and mode != "all" else (lambda _request: True)
        remote = remote if ttl_s > 0 else None
        return cls(
            share=mode != "off",
            cache=cache,
            remote=remote,
            live_remote=live_remote,
            eligible=eligible,
        )

    @property
    def live(self) -> int:
        """Upstream streams now being shared."""
        return len(self._live)

    def view(self, source: DeltaSource, context: str = "") -> SharedView:
        """A DeltaSource for one viewer's run: `source` is asked only when needed."""
        return SharedView(self, source, context)

    # --- the leader's side -------------------------------------------------------------------

    def _open(self, key: str, source: DeltaSource, request: ChatRequest) -> _Broadcast:
        broadcast = _Broadcast(key, self._clock())
        if self.share:
            self._live[key] = broadcast
        broadcast.task = asyncio.create_task(self._pump(broadcast, source, request))
        return broadcast

    async def _pump(self, broadcast: _Broadcast, source: DeltaSource, request: ChatRequest) -> None:
        """Read the answer into `broadcast`, whatever pace its viewers keep: from upstream
        (mirrored for other replicas when this one leads), or from the replica that leads."""
        try:
            joined, joins = await self._join(broadcast), 1
            while joined is not None and joined.feed is not None:
                broadcast.followed = True
                try:
                    async with contextlib.aclosing(joined.feed()) as pieces:
                        async for piece in pieces:
                            broadcast.pieces.append(piece)
                            broadcast.notify()
                    return
                except LeaderGone:
                    if broadcast.pieces or joins >= MAX_JOINS:
                        raise  # the viewers resume what they have, as after a dropped stream
                # Gone before its first piece: lead or follow anew, as if just asked.
                broadcast.followed = False
                joined, joins = await self._join(broadcast), joins + 1
            mirror = broadcast.mirror = joined.mirror if joined is not None else None
            self.upstream_requests += 1
            async with contextlib.aclosing(source.stream(request)) as deltas:
                async for delta in deltas:
                    piece = (self._clock() - broadcast.started, delta)
                    broadcast.pieces.append(piece)
                    if mirror is not None:
                        mirror.put(*piece)
                    broadcast.notify()
        except asyncio.CancelledError:
            broadcast.error = asyncio.CancelledError()
            raise
        except Exception as exc:  # a provider error goes to every viewer, who may retry
            broadcast.error = exc
        finally:
            broadcast.done = True
            if self._live.get(broadcast.key) is broadcast:
                del self._live[broadcast.key]
            if broadcast.mirror is not None:
                broadcast.mirror.end(broadcast.error)
            broadcast.notify()

    async def _join(self, broadcast: _Broadcast) -> RemoteJoin | None:
        """Whether another replica leads this answer (None: no other replica is asked)."""
        if self.live_remote is None:
            return None
        return await self.live_remote.join(broadcast.key)

    def _leave(self, broadcast: _Broadcast) -> None:
        broadcast.viewers -= 1
        if broadcast.viewers > 0 or broadcast.done or broadcast.task is None:
            return
        if broadcast.mirror is not None:
            # Viewers on other replicas may still follow it: ask before closing.
            if broadcast.linger is None:
                broadcast.linger = asyncio.create_task(self._linger(broadcast, broadcast.mirror))
            return
        self._close(broadcast)

    def _close(self, broadcast: _Broadcast) -> None:
        # The last viewer left: nobody wants the rest, so the upstream is closed now.
        if self._live.get(broadcast.key) is broadcast:
            del self._live[broadcast.key]
        if broadcast.task is not None:
            broadcast.task.cancel()

    async def _linger(self, broadcast: _Broadcast, mirror: LiveMirror) -> None:
        """No viewer of this replica is left: go on while one on another replica follows."""
        try:
            while not broadcast.done and broadcast.viewers <= 0:
                watched = await mirror.watched()
                if broadcast.done or broadcast.viewers > 0:
                    return
                if not watched:
                    self._close(broadcast)
                    return
                await self._sleep(mirror.check_s)
        finally:
            broadcast.linger = None


def without_history(request: ChatRequest) -> bool:
    """True when `request` holds no earlier turns: system prompts and one user message."""
    return [m.role for m in request.messages if m.role != "system"] == ["user"]


class SharedView:
    """One viewer's source: the answer from the cache, from a broadcast another viewer
    started, or from a broadcast of its own. `origin` says which, once `stream` began."""

    def __init__(self, hub: SharedAnswers, source: DeltaSource, context: str) -> None:
        self.hub = hub
        self.source = source
        self.context = context
        self._origin = "live"
        self._key: str | None = None
        self._broadcast: _Broadcast | None = None  # the last one followed

    @property
    def origin(self) -> str:
        """ "live" (asked upstream for this viewer), "shared" or "cache"."""
        broadcast = self._broadcast
        if self._origin == "live" and broadcast is not None and broadcast.followed:
            return "shared"  # another replica asked upstream
        return self._origin

    async def stream(
        self, request: ChatRequest, *, pace: Callable[[], float | None] | None = None
    ) -> AsyncGenerator[Delta, None]:
        hub = self.hub
        if not hub.eligible(request):
            self._key = self._broadcast = None
            self._origin = "live"
            async with contextlib.aclosing(self.source.stream(request, pace=pace)) as deltas:
                async for delta in deltas:
                    yield delta
            return
        key = self._key = fingerprint(request, self.context)
        cached = hub.cache.get(key) if hub.cache is not None else None
        if cached is None and hub.remote is not None:
            cached = await hub.remote.get(key)
            if cached is not None and hub.cache is not None:
                hub.cache.put(key, cached)
        if cached is not None:
            self._origin, self._broadcast = "cache", None
            before = 0.0
            for offset, delta in cached:
                gap = min(max(offset - before, 0.0), MAX_REPLAY_GAP_S)
                before = offset
                if gap > 0:
                    await hub._sleep(gap)
                yield delta
            return
        broadcast = hub._live.get(key) if hub.share else None
        if broadcast is None:
            broadcast = hub._open(key, self.source, request)
            # A retry or resume of a shared answer counts as shared still.
            self._origin = "shared" if self.origin == "shared" else "live"
        else:
            self._origin = "shared"
        self._broadcast = broadcast
        broadcast.viewers += 1
        try:
            seen = 0
            while True:
                while seen < len(broadcast.pieces):
                    yield broadcast.pieces[seen][1]
                    seen += 1
                if broadcast.done:
                    if seen < len(broadcast.pieces):
                        continue
                    error = broadcast.error
                    if isinstance(error, asyncio.CancelledError):
                        raise StreamBroken(
                            "The shared answer was closed before it ended.", cause="dropped"
                        )
                    if error is not None:
                        raise error
                    return
                await broadcast.changed()
        finally:
            hub._leave(broadcast)

    async def settle(self, result: StreamResult) -> None:
        """After the viewer's run: a complete answer from upstream goes into the cache."""
        broadcast, cache, remote = self._broadcast, self.hub.cache, self.hub.remote
        if (
            (cache is None and remote is None)
            or broadcast is None
            or self._key is None
            or result.reason is not EndReason.COMPLETE
            or not broadcast.complete
        ):
            return
        recorded = tuple(broadcast.pieces)
        if cache is not None:
            cache.put(self._key, recorded)
        if remote is not None and not broadcast.stored:
            broadcast.stored = True  # once per broadcast, not once per viewer
            await remote.put(self._key, recorded)


class SharedRun(StreamRun):
    """A StreamRun over a SharedView: its stats, log line and metrics say where the answer
    came from, and a complete answer is offered to the cache."""

    view: SharedView

    def __init__(self, view: SharedView, sink: Sink, **options: Any) -> None:
        super().__init__(view, sink, **options)
        self.view = view

    def _marked(self, result: StreamResult) -> StreamResult:
        return replace(result, stats=replace(result.stats, source=self.view.origin))

    async def run(self, request: ChatRequest, *, continuing: str | None = None) -> StreamResult:
        return self._marked(await super().run(request, continuing=continuing))

    async def _finish(self, result: StreamResult) -> None:
        result = self._marked(result)
        await self.view.settle(result)
        await super()._finish(result)
