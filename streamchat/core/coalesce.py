"""Coalescing UI updates (backpressure): at most one write per interval per stream, and, for a
browser that says what it has painted, none before it has painted the last one.

Chainlit emits one Socket.IO event per `stream_token`, and the browser re-renders the whole
message for each. Merging tokens into fewer, larger writes cuts server CPU and browser work;
sending the first token at once keeps time to first token. Waiting for the browser's paint
(core/paint.py) keeps the screen at most one update behind the model, however long the answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from streamchat.core.sinks import Sink

if TYPE_CHECKING:
    from streamchat.core.relay import StreamResult


class Paint(Protocol):
    """What a sink may offer as `paint` (a `MessagePaint`): whether its client is still painting
    the last update, and a call back once it has."""

    def holding(self) -> bool: ...

    def when_painted(self, callback: Callable[[], None]) -> None: ...

    def cancel(self) -> None: ...


class CoalescingSink:
    """Wraps a Sink. Text is never reordered, lost or duplicated:

    - the first write goes out immediately;
    - later writes are buffered and sent together at most every `interval_s`, or as soon as
      `max_chars` are waiting;
    - `replace` and `finish` send what is waiting first, so order holds;
    - while the inner sink is busy (a slow client), new text merges into the next write instead
      of queueing one update per token.

    - when the inner sink has a `paint` (see `Paint`) that is holding, a due update waits until
      the client has painted the last one, then goes with everything that came meanwhile;
      `replace` and `finish` never wait for it.

    `interval_s = 0` passes every write straight through (per-token updates).

    Where a write happens: text that is due when the next token arrives goes out at once, in
    the caller's task, if the inner sink says the write will not wait (`would_wait()` returns
    False: its client keeps up). Otherwise (a slow client, or a sink that does not say, such
    as one that paces its output) a task of its own writes it, so the caller goes on reading
    the provider and text merges meanwhile. Text that no later token picks up is sent by a
    timer, at most a quarter interval after it was due; a write that sends it first stops the
    timer. While tokens flow, an update costs no task and no timer of its own.

    `next_write_at()` tells the source when the next write is due, so it can leave what
    arrives until then unread and hand it over in one piece (see pacing.py).
    """

    def __init__(
        self,
        inner: Sink,
        *,
        interval_s: float = 0.04,
        max_chars: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.interval_s = interval_s
        self.max_chars = max_chars
        self._clock = clock
        self._would_wait: Callable[[], bool] | None = getattr(inner, "would_wait", None)
        self._paint: Paint | None = getattr(inner, "paint", None)
        self._awaiting_paint = False
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_flush: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None  # a write in a task of its own
        self._lock = asyncio.Lock()  # one inner write at a time, in order
        self._flush_error: BaseException | None = None
        self.flushes = 0

    def next_write_at(self) -> float | None:
        """When text written now would be sent (on this sink's clock), or None for at once:
        before the first write, with `interval_s = 0`, and while a write for a slow client is
        under way or the client is painting (text merges into the one after it, whenever that
        is)."""
        last = self._last_flush
        if (
            last is None
            or self.interval_s <= 0
            or self._flushing is not None
            or self._awaiting_paint
        ):
            return None
        return last + self.interval_s

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, text: str) -> None:
        self._raise_flush_error()
        if not text:
            return
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._flushing is not None or self._awaiting_paint:
            return  # merges into the write after the one under way, or after the paint
        last = self._last_flush
        if self.interval_s <= 0:
            await self._flush()
        elif (
            last is None
            or self._pending_chars >= self.max_chars
            or self._clock() >= last + self.interval_s
        ):
            if last is not None and self._held_for_paint():
                return
            if self._writes_at_once(first=last is None):
                await self._flush()
            else:
                self._flush_in_background()
        elif self._timer is None:
            self._arm(last + self.interval_s - self._clock())

    async def replace(self, text: str) -> None:
        await self._settle()
        await self._flush()
        async with self._lock:
            await self.inner.replace(text)

    async def finish(self, result: StreamResult) -> None:
        try:
            # Waits for a write under way, then sends what is left.
            await self._settle()
            await self._flush()
        finally:
            self._stop()
            await self.inner.finish(result)

    # --- a reasoning model's thinking, coalesced the same way, apart from the answer --------

    _thinking: CoalescingSink | None = None  # made at the first thinking

    async def reasoning(self, text: str) -> None:
        """Thinking, for an inner sink that shows it (`reasoning`): merged into updates like
        the answer's, in a coalescer of its own."""
        if self._thinking is None:
            if not callable(getattr(self.inner, "reasoning", None)):
                return
            self._thinking = CoalescingSink(
                _ThinkingAsText(self.inner),
                interval_s=self.interval_s,
                max_chars=self.max_chars,
                clock=self._clock,
            )
        await self._thinking.write(text)

    async def reasoning_replace(self, text: str) -> None:
        if self._thinking is not None:
            await self._thinking.replace(text)

    async def reasoning_done(self) -> None:
        """The thinking ended: what waits of it is sent before the answer starts."""
        thinking, self._thinking = self._thinking, None
        if thinking is None:
            return
        try:
            await thinking._settle()
            await thinking._flush()
        finally:
            thinking._stop()
        done = getattr(self.inner, "reasoning_done", None)
        if done is not None:
            await done()

    def _held_for_paint(self) -> bool:
        """Whether the client is still painting the last update; if so, the next one is sent
        when it has (`_painted`)."""
        paint = self._paint
        if paint is None or not paint.holding():
            return False
        if not self._awaiting_paint:
            self._awaiting_paint = True
            # The word comes in another task (the socket's handler): the write it releases
            # runs with this stream's context variables (Chainlit's own emit needs them).
            context = contextvars.copy_context()
            paint.when_painted(lambda: context.run(self._painted))
        return True

    def _painted(self) -> None:
        self._awaiting_paint = False
        if not self._pending or self._flushing is not None or self._last_flush is None:
            return
        remaining = self._last_flush + self.interval_s - self._clock()
        if remaining > 0:
            if self._timer is None:
                self._arm(remaining)
        else:
            self._flush_in_background()

    def _writes_at_once(self, *, first: bool) -> bool:
        if self._would_wait is None:
            return first  # a sink that does not say: only the first token in the caller's task
        return not self._would_wait()

    def _arm(self, delay: float) -> None:
        # A quarter interval of slack: while tokens keep coming, the next one sends the text
        # (cheaper), and the timer only catches text left when the provider pauses.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0) + self.interval_s / 4, self._due)

    def _due(self) -> None:
        self._timer = None
        if (
            not self._pending
            or self._flushing is not None
            or self._awaiting_paint
            or self._last_flush is None
        ):
            return
        # Armed for earlier text, which a later token may have sent since: this text may
        # not be due yet.
        remaining = self._last_flush + self.interval_s - self._clock()
        if remaining > 0:
            self._arm(remaining)
        elif not self._held_for_paint():
            self._flush_in_background()

    def _flush_in_background(self) -> None:
        self._flushing = asyncio.create_task(self._background_flush())

    async def _background_flush(self) -> None:
        try:
            await self._flush()
        except Exception as exc:  # surfaced on the next write, in the streaming task
            self._flush_error = exc
        finally:
            self._flushing = None
        if (
            self._pending
            and self._timer is None
            and not self._awaiting_paint
            and self._last_flush is not None
        ):
            self._arm(self._last_flush + self.interval_s - self._clock())

    async def _settle(self) -> None:
        flushing = self._flushing
        if flushing is not None and flushing is not asyncio.current_task():
            # shield: a cancelled finish must not cut a write in half; _stop() ends it.
            await asyncio.shield(flushing)

    def _stop(self) -> None:
        if self._awaiting_paint and self._paint is not None:
            self._paint.cancel()
        self._awaiting_paint = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None

    def _raise_flush_error(self) -> None:
        error, self._flush_error = self._flush_error, None
        if error is not None:
            raise error

    async def _flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_chars = 0
            self.flushes += 1
            if self._timer is not None:  # armed for this text, which goes now
                self._timer.cancel()
                self._timer = None
            try:
                await self.inner.write(text)
            finally:
                # From the end of the write: a client that took long to accept it gets the
                # next update a whole interval later, with everything that came meanwhile.
                self._last_flush = self._clock()


class _ThinkingAsText:
    """A sink's thinking methods as a Sink, so a CoalescingSink can pace them."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self._would_wait: Callable[[], bool] | None = getattr(inner, "would_wait", None)

    async def start(self) -> None:
        return None

    def would_wait(self) -> bool:
        return self._would_wait() if self._would_wait is not None else False

    async def write(self, text: str) -> None:
        await self.inner.reasoning(text)  # type: ignore[attr-defined]

    async def replace(self, text: str) -> None:
        replace = getattr(self.inner, "reasoning_replace", None)
        if replace is not None:
            await replace(text)

    async def finish(self, result: StreamResult) -> None:
        return None
