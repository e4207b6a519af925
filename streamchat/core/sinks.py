"""Where a stream's text goes: the Sink protocol and the sinks for each front end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from streamchat.core.history import METADATA_KEY, answer_metadata
from streamchat.core.paint import MessagePaint
from streamchat.core.segments import SEGMENT_CHARS, SEGMENT_KEY, BlockBoundaries, segment_metadata
from streamchat.core.types import EndReason

if TYPE_CHECKING:
    from streamchat.core.relay import StreamResult

log = logging.getLogger("streamchat.sinks")

# In a stored answer's metadata (beside its text): when it was last saved while being written
# (seconds since the epoch). A reader that finds it old knows the writer is gone.
IN_PROGRESS_KEY = "in_progress"


def partial_answer_metadata(text: str, saved_at: float) -> dict[str, Any]:
    """An answer still being written, as stored: the text so far, read as interrupted by any
    reader that does not know better, with when it was saved."""
    stored = answer_metadata(text, EndReason.ERROR, "")
    stored[METADATA_KEY][IN_PROGRESS_KEY] = saved_at
    return stored


class EventLog(Protocol):
    """Where an SseSink appends its named events (the SSE face's resumable log)."""

    def append(self, event: str, data: dict[str, Any], /) -> object: ...


class Sink(Protocol):
    """Receives the text a user should see, in order.

    `write` appends; `replace` retracts what was shown to a safe prefix (guardrails in buffered
    mode); `finish` is called exactly once with the outcome, also after an error or a Stop.

    A sink that can show a reasoning model's thinking apart from the answer offers
    `async reasoning(text)` (appends), `async reasoning_replace(text)` (retracts it) and
    `async reasoning_done()` (the thinking ended: the answer starts, or the reply did); a sink
    without them shows only the answer.

    A sink may also offer `would_wait() -> bool`: whether a write now would wait (for a slow
    client). The CoalescingSink writes to a sink that says False in the streaming task itself,
    and to others from a task of its own, so a slow client never holds up the stream.
    """

    async def start(self) -> None: ...

    async def write(self, text: str) -> None: ...

    async def replace(self, text: str) -> None: ...

    async def finish(self, result: StreamResult) -> None: ...


class MemorySink:
    """Collects everything in memory: for tests and for callers that want the text only."""

    def __init__(self) -> None:
        self.started = False
        self.writes: list[str] = []
        self.text = ""
        self.reasoning_text = ""
        self.reasoning_writes: list[str] = []
        self.reasoning_ended = 0  # reasoning_done calls
        self.result: StreamResult | None = None

    async def start(self) -> None:
        self.started = True

    def would_wait(self) -> bool:
        return False

    async def write(self, text: str) -> None:
        self.writes.append(text)
        self.text += text

    async def replace(self, text: str) -> None:
        self.text = text

    async def reasoning(self, text: str) -> None:
        self.reasoning_writes.append(text)
        self.reasoning_text += text

    async def reasoning_replace(self, text: str) -> None:
        self.reasoning_text = text

    async def reasoning_done(self) -> None:
        self.reasoning_ended += 1

    async def finish(self, result: StreamResult) -> None:
        self.result = result


class UpdateChannel(Protocol):
    """Sends events to the one browser a message streams to (`SocketUpdates`)."""

    async def emit(self, event: str, data: dict[str, Any]) -> None: ...

    def backlogged(self) -> bool: ...


class ThinkingStep(Protocol):
    """The part of `chainlit.Step` the Chainlit sink shows thinking in."""

    name: str
    start: str | None
    end: str | None

    async def stream_token(self, token: str, is_sequence: bool = False) -> None: ...

    async def update(self) -> object: ...


class StreamingMessage(Protocol):
    """The part of `chainlit.Message` the Chainlit sink uses (kept abstract for tests)."""

    id: str
    content: str
    streaming: bool
    actions: list[Any]
    metadata: dict[str, Any] | None

    async def stream_token(self, token: str, is_sequence: bool = False) -> None: ...

    async def send(self) -> object: ...

    async def update(self) -> object: ...


class ChainlitSink:
    """Streams into a Chainlit message with `stream_token`; finishes it with a marker and, on
    failure, a short error message a person can act on.

    `notify_error(text, actions)` sends a separate error message and `make_action(name, label)`
    builds a Chainlit action; app.py passes both, so this module does not import Chainlit and
    stays testable without a server. Actions offered: "continue" under an answer that was cut
    off, "retry" with an error that came before any text.

    `updates`, when given, sends the stream's later tokens to this one browser (app.py passes
    a `SocketUpdates`); the message's content is kept as `stream_token` keeps it, and the
    stream's start, retractions and end still go through Chainlit.

    `paint`, when given (a `MessagePaint` of app.py's `PaintAcks`), counts every `stream_token`
    update sent, so the CoalescingSink in front can hold the next one until the browser has
    painted it (core/paint.py).

    `thinking`, when given, makes the step a reasoning model's thinking streams into (app.py
    passes a `cl.Step` named "reasoning", open while it streams, collapsed once it ends); it is
    named with the thinking's duration when the answer starts.

    `split(message)`, when given, lets a long answer go on in a new message (core/segments.py):
    it returns a message standing for the part shown so far (same id, author and parent; the
    sink finishes it) and gives `message` a new id, under which the answer continues; it
    returns None when the answer must stay one message (another answer streams beside it).
    The page renders again only the growing part at each update, not the whole answer. A
    part ends at a safe Markdown block boundary once it holds `segment_chars`, and only for a
    page that acknowledges its paints (public/paint_ack.js shows the parts as one answer).
    `self.message` is the last part; the answer's actions, stats line and stored text go to
    it.

    `checkpoint(metadata)`, when given, saves the message as it stands with `metadata` (app.py
    passes the data layer's write): the answer is saved as it streams, marked in progress, at
    its first text and then every `checkpoint_every_s` from a task of its own (a heartbeat too,
    when the provider pauses), so the stream never waits for the database. `interrupt(cause)`
    (a server shutting down) makes a Stop that follows end as an interrupted answer, saved
    before `finish` returns, with Continue.
    """

    def __init__(
        self,
        message: StreamingMessage,
        *,
        notify_error: Callable[[str, list[Any]], Awaitable[object]],
        make_action: Callable[[str, str], Any] | None = None,
        show_metrics: bool = False,
        updates: UpdateChannel | None = None,
        paint: MessagePaint | None = None,
        thinking: Callable[[], ThinkingStep] | None = None,
        checkpoint: Callable[[dict[str, Any]], Awaitable[object]] | None = None,
        checkpoint_every_s: float = 1.0,
        split: Callable[[StreamingMessage], StreamingMessage | None] | None = None,
        segment_chars: int = SEGMENT_CHARS,
    ) -> None:
        self.message = message
        self._split = split
        self._segment_chars = segment_chars
        self._blocks = BlockBoundaries()
        self._cuts: list[int] = []  # safe cuts not yet used, as offsets in the answer
        self.parts: list[StreamingMessage] = []  # the finished parts of a long answer
        self._parts_text = ""  # their text
        self._first_id = ""
        self.done = False
        self._checkpoint = checkpoint
        self._checkpoint_every_s = checkpoint_every_s
        self._saver: asyncio.Task[None] | None = None
        self._saving_ends = asyncio.Event()
        self.interrupted_by: str | None = None
        self._thinking = thinking
        self.step: ThinkingStep | None = None
        self._thinking_since = 0.0
        self._updates = updates
        self.paint = paint
        self._notify_error = notify_error
        self._make_action = make_action
        self._show_metrics = show_metrics
        self._streamed = False

    async def start(self) -> None:
        # The message appears with its first token (stream_start); until then Chainlit shows
        # its own "running" indicator, so an answer that fails early leaves no empty bubble.
        return None

    @property
    def shown(self) -> str:
        """The answer's text as shown, across its parts."""
        return self._parts_text + self.message.content

    async def write(self, text: str) -> None:
        self._streamed = True
        if self._saver is None and self._checkpoint is not None and text:
            self._saver = asyncio.create_task(self._keep_saved(self._checkpoint))
        if self._split is not None and text and await self._continued(text):
            return
        message = self.message
        if self.paint is not None and text and message.streaming:
            self.paint.sending()  # a stream_token update (the first text is stream_start)
        if self._updates is None or not message.streaming or not text:
            await message.stream_token(text)
            return
        # What stream_token does after the stream's start, without Chainlit's emitter.
        message.content += text
        await self._updates.emit(
            "stream_token", {"id": message.id, "token": text, "isSequence": False, "isInput": False}
        )

    async def _continued(self, text: str) -> bool:
        """Whether `text` ended the current part at a safe cut and went on in a new one."""
        message = self.message
        before = len(self._parts_text)
        self._cuts += self._blocks.feed(text)
        due = before + self._segment_chars
        cut = next((c for c in self._cuts if c >= due), None)
        if cut is None or not message.streaming or self.paint is None or not self.paint.live:
            return False  # a page without the paint script shows one message, as before
        finished = self._split(message) if self._split is not None else None
        if finished is None:
            return False
        self._cuts = [c for c in self._cuts if c > cut]
        whole = finished.content + text
        head, tail = whole[: cut - before], whole[cut - before :]
        index = len(self.parts)
        self._first_id = self._first_id or finished.id
        finished.content = head
        finished.metadata = {
            **{k: v for k, v in (finished.metadata or {}).items() if k != METADATA_KEY},
            SEGMENT_KEY: segment_metadata(self._first_id, index, continued=True),
        }
        # send() ends that part's stream in the page and stores it (no answer text in its
        # metadata: a resumed chat takes the whole answer from the last part).
        await finished.send()
        self.parts.append(finished)
        self._parts_text += head
        message.metadata = {
            **(message.metadata or {}),
            SEGMENT_KEY: segment_metadata(self._first_id, index + 1, continued=False),
        }
        if self.paint is not None:
            self.paint.continue_in(message.id)
        await message.stream_token(tail)  # the new part's stream_start
        return True

    def would_wait(self) -> bool:
        return self._updates is not None and self._updates.backlogged()

    async def replace(self, text: str) -> None:
        self._streamed = True
        if self.parts:
            text = await self._retract_parts(text)
        if self._split is not None:  # the safe cuts of the text as it now stands
            self._blocks = BlockBoundaries()
            self._cuts = self._blocks.feed(self._parts_text + text)
        if text:
            if self.paint is not None and self.message.streaming:
                self.paint.sending()
            await self.message.stream_token(text, is_sequence=True)
        else:
            # stream_token ignores empty text, so retracting everything is an update.
            self.message.content = ""
            await self.message.update()

    async def _retract_parts(self, text: str) -> str:
        """Cut a long answer back to `text`: finished parts past it are removed, the one it
        ends in is cut short (and the current part, emptied, goes on after it). What remains
        for the current part is returned."""
        while self.parts and not text.startswith(self._parts_text):
            last = self.parts.pop()
            self._parts_text = self._parts_text[: len(self._parts_text) - len(last.content)]
            if len(text) > len(self._parts_text):  # `text` ends inside this part
                last.content = text[len(self._parts_text) :]
                await last.update()
                self.parts.append(last)
                self._parts_text = text
            else:
                await _remove(last)
        return text[len(self._parts_text) :]

    def interrupt(self, cause: str) -> None:
        """The answer is about to be cut off by the server, not by the user: `cause` ends
        "Interrupted: ... after N tokens"."""
        self.interrupted_by = cause

    async def _keep_saved(self, checkpoint: Callable[[dict[str, Any]], Awaitable[object]]) -> None:
        while True:
            saving = self.message.id  # the checkpoint saves the message as it is now
            try:
                stored = partial_answer_metadata(self.shown, time.time())
                await checkpoint({**(self.message.metadata or {}), **stored})
            except Exception as exc:  # a lost save must never break the answer
                log.warning("could not save the answer being written: %s", type(exc).__name__)
            if saving != self.message.id:
                await self._store_part_again(saving)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._saving_ends.wait(), self._checkpoint_every_s)
                return

    async def _store_part_again(self, part_id: str) -> None:
        """The answer went on in a new message while a save of its part `part_id` was under
        way: that save, with the answer so far marked in progress, may have landed after the
        finished part was stored; the part is stored again as it is, so a resumed chat finds
        it finished and holding only its own text."""
        part = next((p for p in self.parts if p.id == part_id), None)
        if part is None:
            return
        try:
            await part.update()
        except Exception as exc:
            log.warning("could not save a finished part of the answer: %s", type(exc).__name__)

    async def _stop_saving(self) -> None:
        """No partial save may land after the final one: the last one in flight ends first."""
        saver = self._saver
        if saver is None:
            return
        self._saving_ends.set()
        try:
            await asyncio.wait_for(asyncio.shield(saver), 5)
        except TimeoutError:  # a database that does not answer: the final save still goes on
            saver.cancel()

    async def finish(self, result: StreamResult) -> None:
        self.done = True
        await self._stop_saving()
        if self.parts:  # the last part shows what follows the finished ones
            await self._retract_parts(result.text)
        reason, note = result.reason, result.note()
        if self.interrupted_by is not None and reason is EndReason.STOPPED_BY_USER:
            reason = EndReason.ERROR
            tokens = result.stats.completion_tokens
            note = f"Interrupted: {self.interrupted_by} after {tokens} tokens."
        if result.text or self._streamed:
            notes = (note, result.history_note())
            footer = [f"*({note})*" for note in notes if note]
            if self._show_metrics:
                footer.append(f"*{result.stats.summary()}*")
            text = result.text[len(self._parts_text) :]
            self.message.content = "\n\n".join([p for p in (text, *footer) if p])
            if reason is EndReason.ERROR:
                self.message.actions = self._actions("continue", "Continue")
            # What the user saw and how it ended, stored with the message for a resumed chat.
            self.message.metadata = {
                **(self.message.metadata or {}),
                **answer_metadata(result.text, reason, result.stream_id, result.reasoning),
            }
            # send() ends the stream in the UI and persists the message when a data layer is on.
            await self.message.send()
            if self.interrupted_by is not None and self._checkpoint is not None:
                # The server is stopping: saved now, not by a task it may not live to run.
                await self._checkpoint(self.message.metadata)
        if result.error is not None:
            # No Retry for a rejected key: the same request fails again until the key is fixed
            # (the message names the variable).
            pointless = result.text or result.input_blocked or result.error.status == 401
            retry = [] if pointless else self._actions("retry", "Retry")
            await self._notify_error(result.error.user_message, retry)
        elif result.reason is EndReason.GUARDRAIL and not (result.text or self._streamed):
            # Blocked before anything was shown (the user's message, or the answer's start).
            await self._notify_error(result.note() or "Blocked by a guardrail.", [])

    async def reasoning(self, text: str) -> None:
        if self._thinking is None or not text:
            return
        step = self.step
        if step is None or step.end is not None:  # the first thinking, or a new phase's
            step = self.step = self._thinking()
            step.start = datetime.now(UTC).isoformat()
            self._thinking_since = time.monotonic()
        await step.stream_token(text)

    async def reasoning_replace(self, text: str) -> None:
        if self.step is not None:
            await self.step.stream_token(text or " ", is_sequence=True)

    async def reasoning_done(self) -> None:
        step = self.step
        if step is None or step.end is not None:
            return
        step.end = datetime.now(UTC).isoformat()
        seconds = time.monotonic() - self._thinking_since
        # Chainlit puts "Used" before a finished step's name: "Used reasoning for 12 s".
        step.name = f"reasoning for {seconds:.0f} s" if seconds >= 1 else "reasoning, briefly"
        await step.update()  # the page collapses a step with auto_collapse once it has ended

    def _actions(self, name: str, label: str) -> list[Any]:
        return [self._make_action(name, label)] if self._make_action else []


class ConsoleSink:
    """Writes the answer to a text stream as it arrives; the outcome goes to `err`."""

    def __init__(
        self, out: TextIO, err: TextIO, *, show_text: bool = True, show_reasoning: bool = True
    ) -> None:
        self.out = out
        self.err = err
        self.show_text = show_text
        self.show_reasoning = show_reasoning
        self._at_line_start = True
        self._thinking = False  # a line of thinking on err is open
        # Thinking is dimmed on a terminal; a file or pipe gets it plain.
        self._dim = ("\x1b[2m", "\x1b[0m") if _is_terminal(err) else ("", "")

    async def start(self) -> None:
        return None

    def would_wait(self) -> bool:
        return False  # a blocking write to a terminal or pipe; nothing to gain from a task

    async def write(self, text: str) -> None:
        self._at_line_start = text.endswith("\n")
        if self.show_text:
            self.out.write(text)
            self.out.flush()

    async def reasoning(self, text: str) -> None:
        if not (self.show_reasoning and self.show_text) or not text:
            return
        if not self._thinking:
            self._thinking = True
            self.err.write(f"{self._dim[0]}[thinking]{self._dim[1]}\n")
        self.err.write(f"{self._dim[0]}{text}{self._dim[1]}")
        self.err.flush()

    async def reasoning_replace(self, text: str) -> None:
        if self.show_reasoning and self.show_text:
            self.err.write(f"\n[earlier thinking withdrawn]\n{self._dim[0]}{text}{self._dim[1]}")
            self.err.flush()

    async def reasoning_done(self) -> None:
        if self._thinking:
            self._thinking = False
            self.err.write(f"\n{self._dim[0]}[end of thinking]{self._dim[1]}\n")
            self.err.flush()

    async def replace(self, text: str) -> None:
        # A terminal cannot take text back: say so, then show what remains.
        if self.show_text:
            self.out.write("\n[earlier text withdrawn]\n" + text)
            self.out.flush()
        self._at_line_start = not text or text.endswith("\n")

    async def finish(self, result: StreamResult) -> None:
        if self.show_text and not self._at_line_start:
            self.out.write("\n")
            self.out.flush()
        for note in (result.note(), result.history_note()):
            if note:
                self.err.write(f"[{note}]\n")
        if result.error is not None:
            self.err.write(f"error: {result.error.user_message}\n")
        self.err.write(f"[{result.stats.summary()}]\n")
        self.err.flush()


class SseSink:
    """Writes an answer as named events into a resumable SSE event log (see sse.py):
    `token` {text}, `retract` {text} (the shown text was cut back to `text`), a reasoning
    model's thinking as `reasoning` {text} and `reasoning_retract` {text}, `error`
    {message, kind}, `metrics` {...}, `done` {reason, note, history_note}."""

    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log

    async def start(self) -> None:
        return None

    def would_wait(self) -> bool:
        return False  # appends to the event log; readers follow at their own pace

    async def write(self, text: str) -> None:
        self.log.append("token", {"text": text})

    async def replace(self, text: str) -> None:
        self.log.append("retract", {"text": text})

    async def reasoning(self, text: str) -> None:
        self.log.append("reasoning", {"text": text})

    async def reasoning_replace(self, text: str) -> None:
        self.log.append("reasoning_retract", {"text": text})

    async def finish(self, result: StreamResult) -> None:
        if result.violation is not None:
            self.log.append(
                "guardrail",
                {
                    "policy": result.violation.policy,
                    "kind": result.violation.kind,
                    "message": result.note(),
                },
            )
        if result.error is not None:
            self.log.append(
                "error", {"message": result.error.user_message, "kind": result.error.kind}
            )
        self.log.append("metrics", result.stats.as_log_fields())
        self.log.append(
            "done",
            {
                "reason": result.reason.value,
                "note": result.note(),
                "history_note": result.history_note(),
            },
        )


async def _remove(message: StreamingMessage) -> None:
    remove = getattr(message, "remove", None)  # chainlit.Message has it
    if remove is not None:
        await remove()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
