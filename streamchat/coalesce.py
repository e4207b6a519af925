"""Coalescing UI updates (backpressure): at most one write per interval per stream.

Chainlit emits one Socket.IO event per `stream_token`, onto an unbounded per-client queue, and
the browser re-renders the whole message for each. Merging tokens into fewer, larger writes
cuts server CPU and browser work; sending the first token at once keeps time to first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamchat.sinks import Sink

if TYPE_CHECKING:
    from streamchat.relay import StreamResult


class CoalescingSink:
    """Wraps a Sink. Text is never reordered, lost or duplicated:

    - the first write goes out immediately;
    - later writes are buffered and sent together at most every `interval_s`, or as soon as
      `max_chars` are waiting;
    - `replace` and `finish` send what is waiting first, so order holds;
    - while the inner sink is busy (a slow client), new text merges into the next write instead
      of queueing one update per token.

    `interval_s = 0` passes every write straight through (per-token updates).
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
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_flush: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one inner write at a time, in order
        self._timer_error: BaseException | None = None
        self.flushes = 0

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, text: str) -> None:
        self._raise_timer_error()
        if not text:
            return
        self._pending.append(text)
        self._pending_chars += len(text)
        if self.interval_s <= 0 or self._last_flush is None:
            await self._flush()
            return
        if self._pending_chars >= self.max_chars:
            await self._flush()
            return
        if self._timer is None:
            due = self._last_flush + self.interval_s - self._clock()
            self._timer = asyncio.create_task(self._flush_after(max(due, 0.0)))

    async def replace(self, text: str) -> None:
        await self._flush()
        async with self._lock:
            await self.inner.replace(text)

    async def finish(self, result: StreamResult) -> None:
        try:
            # Waits for a flush the timer may have in progress, then sends what is left.
            await self._flush()
        finally:
            await self._cancel_timer()
            await self.inner.finish(result)

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        try:
            await self._flush()
        except Exception as exc:  # surfaced on the next write, in the streaming task
            self._timer_error = exc

    def _raise_timer_error(self) -> None:
        error, self._timer_error = self._timer_error, None
        if error is not None:
            raise error

    async def _flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_chars = 0
            self._last_flush = self._clock()
            self.flushes += 1
            await self.inner.write(text)

    async def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
