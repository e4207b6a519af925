"""Which stream updates a browser has painted, so the next one is sent only then.

The browser re-renders a whole message for each update, so a long answer sent at a fixed rate
outruns it and the screen falls behind. With public/paint_ack.js loaded, the page tells the
server how many `stream_token` updates of a message it has painted; the CoalescingSink holds
the next update until the last one is on screen and sends everything that arrived meanwhile in
one piece. After each paint the page also gets as long again to itself (the time the update
took to be painted), so its main thread stays free for typing and Stop as a long answer grows
costly to render. A page that never answers is paced as before: nothing is held until a first
acknowledgement arrives, and an update waits at most `max_hold_s` for one.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

PAINTED_EVENT = "stream_painted"  # what the page emits: {"id": message id, "n": updates painted}
DEFAULT_MAX_HOLD_S = 2.0


class MessagePaint:
    """One streamed message: updates sent to its browser, and how many it says it painted.

    `holding()` is True while the browser has answered at least once and has not yet painted
    the last update sent, for at most `max_hold_s` after that update (a lost acknowledgement,
    a hidden tab or a reconnect never stops the answer); then, once it has, for as long as the
    update took from sending to painted (the page's rest). `when_painted(callback)` calls back
    once, when the hold ends.
    """

    def __init__(
        self,
        *,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
        register: Callable[[str, MessagePaint], None] | None = None,
    ) -> None:
        self.max_hold_s = max_hold_s
        self._clock = clock
        self.sent = 0
        self.painted = 0
        self.live = False  # the browser acknowledges (public/paint_ack.js is on the page)
        self._sent_at = 0.0
        self._rest_until = 0.0
        self._callback: Callable[[], None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        # A long answer that continues in a new message (core/segments.py): the updates sent
        # before each message's first, by its id, so its own count maps onto ours.
        self._sent_before: dict[str, int] = {}
        self._register = register  # PaintAcks: acknowledgements for a new part reach us

    def sending(self) -> None:
        """Count an update as it goes to the browser (every `stream_token` of the message)."""
        self.sent += 1
        self._sent_at = self._clock()

    def continue_in(self, message_id: str) -> None:
        """The stream goes on in a new message `message_id` (a long answer's next part): the
        browser counts its updates from zero; acknowledgements for it are taken from now on."""
        self._sent_before[message_id] = self.sent
        if self._register is not None:
            self._register(message_id, self)

    def acknowledge(self, painted: int, message_id: str | None = None) -> None:
        """The browser has painted `painted` updates of this message (of its part
        `message_id`, when the stream went on in a new message)."""
        self.live = True
        painted += self._sent_before.get(message_id, 0) if message_id is not None else 0
        if painted <= self.painted:
            return
        self.painted = min(painted, self.sent)
        if self.painted == self.sent:
            now = self._clock()
            self._rest_until = now + min(now - self._sent_at, self.max_hold_s)
        if self._callback is not None:
            self._schedule()  # at the end of the rest, or now

    def holding(self) -> bool:
        return self.live and self._clock() < self._hold_ends()

    def _hold_ends(self) -> float:
        if self.painted < self.sent:
            return self._sent_at + self.max_hold_s
        return self._rest_until

    def when_painted(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the hold ends: the browser has painted the last update and had
        its rest, or `max_hold_s` passed; a later call replaces the earlier callback."""
        self._callback = callback
        if self._deadline is None:
            self._schedule()

    def _schedule(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        wait = max(self._hold_ends() - self._clock(), 0.0)
        self._deadline = asyncio.get_running_loop().call_later(wait, self._release)

    def cancel(self) -> None:
        """Forget the callback (the stream ended)."""
        self._callback = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _release(self) -> None:
        callback = self._callback
        self.cancel()
        if callback is not None:
            callback()


class PaintAcks:
    """Every message streaming in this process, by id, for the acknowledgements browsers send.

    Messages are held weakly: a sink's `MessagePaint` lives as long as the sink, so nothing
    here outlives its stream, and an acknowledgement for an unknown id is ignored.
    """

    def __init__(self, *, max_hold_s: float = DEFAULT_MAX_HOLD_S) -> None:
        self.max_hold_s = max_hold_s
        self._messages: weakref.WeakValueDictionary[str, MessagePaint] = (
            weakref.WeakValueDictionary()
        )

    def track(self, message_id: str) -> MessagePaint:
        paint = MessagePaint(max_hold_s=self.max_hold_s, register=self._register)
        self._register(message_id, paint)
        return paint

    def _register(self, message_id: str, paint: MessagePaint) -> None:
        self._messages[message_id] = paint

    def receive(self, data: Any) -> None:
        """An acknowledgement as the page sent it: `{"id": str, "n": int}`; anything else, or an
        id not streaming here, is ignored (the payload comes from the network)."""
        if not isinstance(data, dict):
            return
        message_id, painted = data.get("id"), data.get("n")
        if not isinstance(message_id, str) or type(painted) is not int:
            return
        paint = self._messages.get(message_id)
        if paint is not None:
            paint.acknowledge(painted, message_id)
