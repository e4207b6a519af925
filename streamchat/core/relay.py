"""StreamRun: drives provider -> sink for one answer and says how it ended.

It owns the rules every front end shares: the upstream response is closed whatever happens,
the sink is finished exactly once (also on Stop, which arrives as task cancellation), and a
partial answer is kept and reported, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from streamchat.core.errors import ProviderError, StreamBroken
from streamchat.core.metrics import (
    PROCESS_METRICS,
    USAGE_METER,
    ProcessMetrics,
    StatsRecorder,
    StreamStats,
)
from streamchat.core.overlap import OverlapRemover
from streamchat.core.sinks import Sink
from streamchat.core.thinking import ThinkTagSplitter
from streamchat.core.types import ChatMessage, ChatRequest, Delta, EndReason
from streamchat.guardrails import Guard, GuardStep, Violation
from streamchat.guardrails.moderation import ModerationGate, Moderator

log = logging.getLogger("streamchat.core.relay")

ReadPace = Callable[[], float | None]
"""When the consumer next shows text, as a `time.monotonic()` value, or None for as soon as it
arrives. A source may leave the network unread until then and read what came meanwhile at once
(the CoalescingSink's `next_write_at`)."""


class DeltaSource(Protocol):
    """Anything that streams Deltas for a request: the Provider, or a scripted fake in tests.
    `stream` is an async generator, so it can be closed early (that closes the HTTP response).
    `pace` says when the consumer next shows text; a source may read the network only then
    (the Provider does), or ignore it."""

    def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]: ...


@dataclass(frozen=True, slots=True)
class StreamResult:
    """The outcome of one answer: what the user saw, why it ended, what it cost."""

    stream_id: str
    text: str
    reason: EndReason
    stats: StreamStats
    error: ProviderError | None = None
    violation: Violation | None = None
    input_blocked: bool = False  # the user's message was blocked; nothing was sent upstream
    dropped_messages: int = 0  # older history left out of the request to fit the context
    reasoning: str = ""  # the thinking shown beside the answer (a reasoning model's)
    reasoning_unclosed: bool = False  # the reply opened a <think> tag and never closed it

    def history_note(self) -> str | None:
        """Said under an answer whose request left out older messages."""
        if not self.dropped_messages:
            return None
        count = self.dropped_messages
        what = "1 earlier message was" if count == 1 else f"{count} earlier messages were"
        return f"{what} left out to fit the model's context."

    @property
    def interrupted(self) -> bool:
        """True when the answer did not end by itself (Stop or a failure)."""
        return self.reason in (EndReason.STOPPED_BY_USER, EndReason.ERROR)

    def note(self) -> str | None:
        """A short marker for an answer that did not complete, for people and history views."""
        tokens = self.stats.completion_tokens
        if self.reason is EndReason.GUARDRAIL and self.violation is not None:
            if self.input_blocked:
                return self.violation.input_message()
            return self.violation.message()
        if self.reason is EndReason.STOPPED_BY_USER:
            return f"Stopped by you after {tokens} tokens."
        if self.reason is EndReason.LENGTH:
            return "The answer reached the length limit."
        if self.reason is EndReason.ERROR and self.text:
            cause = self.error.short_cause if isinstance(self.error, StreamBroken) else "error"
            return f"Interrupted: {cause} after {tokens} tokens."
        if self.stats.resumes:
            times = "once" if self.stats.resumes == 1 else f"{self.stats.resumes} times"
            return f"Resumed {times} after the stream broke."
        if not self.text and (self.reasoning or self.stats.first_reasoning_s is not None):
            if self.reasoning_unclosed:
                return "The model was still thinking when its reply ended: no answer came."
            return "The model only thought: no answer came."
        return None


@dataclass(frozen=True, slots=True)
class Resilience:
    """How hard one answer tries. See docs/resilience.md.

    Before the first token, retryable failures (connection errors, timeouts, 408/409/429/5xx,
    a stream that broke before any text) are retried `retries` times with exponential backoff
    and jitter, honouring Retry-After up to `retry_after_cap_s`. After the first token, a
    broken stream (dropped, stalled, malformed chunk) is resumed `resumes` times.
    """

    retries: int = 2
    resumes: int = 1
    stall_s: float = 30.0
    first_token_timeout_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    retry_after_cap_s: float = 30.0

    def backoff(self, retry: int, error: ProviderError, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2**retry) * rng.uniform(0.5, 1.0)
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            delay = max(delay, min(float(retry_after), self.retry_after_cap_s))
        return delay


# Sent after the partial answer when resuming; models follow it well, and the overlap remover
# cleans up the few words they tend to repeat anyway.
CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, "
    "without repeating what you already wrote and without any preamble."
)


def continuation_request(request: ChatRequest, shown: str) -> ChatRequest:
    """The request that asks the model to continue `shown`, the answer so far."""
    messages = (
        *request.messages,
        ChatMessage("assistant", shown),
        ChatMessage("user", CONTINUE_INSTRUCTION),
    )
    return replace(request, messages=messages)


async def refused_input_result(
    sink: Sink, *, violation: Violation | None = None, error: ProviderError | None = None
) -> StreamResult:
    """The outcome for a user message refused before anything was sent upstream: by the input
    guardrails (`violation`) or by a limit of ours (`error`)."""
    result = StreamResult(
        stream_id=uuid.uuid4().hex[:12],
        text="",
        reason=EndReason.GUARDRAIL if violation is not None else EndReason.ERROR,
        stats=StatsRecorder().snapshot(),
        error=error,
        violation=violation,
        input_blocked=True,
    )
    if violation is not None:
        log.info(
            "input blocked policy=%s kind=%s start=%d",
            violation.policy,
            violation.kind,
            violation.start,
        )
        PROCESS_METRICS.guardrail_stops.labels(policy=violation.policy).inc()
    await sink.start()
    await sink.finish(result)
    return result


class StallWatch:
    """Stall detection for a read loop, without a timer per chunk.

    `arm(limit)` before each read and `disarm()` after it only note a deadline; one timer
    follows the deadline lazily (when it fires early it re-arms for the current deadline), and
    once a deadline passes during a read it expires `scope`, an `asyncio.timeout(None)` around
    the loop, which cancels the read and raises TimeoutError there. A timer per read (an
    `asyncio.timeout` each) costs a heap push, a cancel and an object per token.
    """

    def __init__(self, scope: asyncio.Timeout) -> None:
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.limit = 0.0  # the limit of the read that stalled, for the message

    def __enter__(self) -> StallWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def arm(self, limit: float) -> None:
        self.limit = limit
        deadline = self._deadline = self._loop.time() + limit
        if self._timer is not None and self._timer.when() > deadline:  # a shorter limit now
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        self._deadline = None

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None:
            return  # not reading: the next arm() sets a timer again
        if self._loop.time() >= self._deadline:
            self._scope.reschedule(self._loop.time())
        else:
            self._timer = self._loop.call_at(self._deadline, self._check)


class _GuardrailStop(Exception):
    """Internal: the guard stopped the stream (a verdict, not an error)."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.kind)
        self.violation = violation


class StreamRun:
    """One answer: open the upstream stream, pass its text to the sink, finish the sink.

    Retries before the first token and resumes after it, per `resilience`; the user sees one
    answer in one sink either way.
    """

    def __init__(
        self,
        source: DeltaSource,
        sink: Sink,
        *,
        stream_id: str | None = None,
        resilience: Resilience | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        metrics: ProcessMetrics = PROCESS_METRICS,
        on_delta: Callable[[Delta], None] | None = None,
        guard: Guard | None = None,
        moderator: Moderator | None = None,
        reasoning_guards: Callable[[], Guard] | None = None,
        show_reasoning: bool = True,
    ) -> None:
        self.source = source
        self.sink = sink
        # When the sink next shows text (the CoalescingSink says): the source may read then.
        # Not when every chunk is watched as it arrives (the classroom's chunk log and
        # timeline, the CLI's --raw): their arrival times are what those views show.
        self._next_write_at: ReadPace | None = (
            getattr(sink, "next_write_at", None) if on_delta is None else None
        )
        self._pace = self._read_pace if self._next_write_at is not None else None
        self.guard = guard  # checks the text between the upstream and the sink; kept across resumes
        # The guard checks in batches; when the provider pauses with a batch waiting, a timer
        # has it checked then, so what is safe is not held until the next piece arrives.
        self._guard_lock = asyncio.Lock()
        self._guard_timer: asyncio.TimerHandle | None = None
        self._guard_task: asyncio.Task[None] | None = None
        self._guard_stop: _GuardrailStop | None = None  # a violation the timer's check found
        # A reasoning model's thinking: checked by a guard of its own (the same policies, mode
        # and action), shown through the sink's `reasoning` when the sink has one and
        # `show_reasoning` allows; never part of the answer or its history.
        # One guard per thinking phase (a resumed answer may think again), from this factory.
        self.reasoning_guards = reasoning_guards
        self._reasoning_guard: Guard | None = None  # the current phase's
        self.show_reasoning = show_reasoning and callable(getattr(sink, "reasoning", None))
        self._thought: list[str] = []  # the thinking shown
        self._thinking_open = False  # thinking came, and the sink was not yet told it ended
        self._unclosed = False
        # The moderation policy: judges what the guard releases, sentence by sentence.
        self.moderator = moderator
        self.gate: ModerationGate | None = None
        self.resilience = resilience or Resilience()
        self.metrics = metrics
        self._on_delta = on_delta  # sees every upstream chunk (raw chunk views, --raw)
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._shown: list[str] = []
        self._dropped_messages = 0
        # Text that came from upstream (after seam overlap removal), shown or still held by
        # the guard: retries happen only before any, resumes continue from all of it.
        self._received: list[str] = []

    def _read_pace(self) -> float | None:
        """When the source may read next: when the sink next shows text, but never so late
        that the wait could pass for a stall (a long STREAM_FLUSH_MS, a short STREAM_STALL_S)."""
        assert self._next_write_at is not None
        when = self._next_write_at()
        if when is None:
            return None
        return min(when, time.monotonic() + self.resilience.stall_s / 2)

    @property
    def last_text(self) -> str:
        """What the user has seen so far; the caller keeps it when the run is cancelled."""
        return "".join(self._shown)

    async def run(self, request: ChatRequest, *, continuing: str | None = None) -> StreamResult:
        """Stream the answer to `request`. Re-raises CancelledError after finishing the sink.

        With `continuing`, the model is asked to continue that earlier, interrupted answer; the
        result's text is the continuation alone.
        """
        stats = StatsRecorder(self._clock)
        self._dropped_messages = request.dropped_messages
        self.metrics.streams_active.inc()
        if self.moderator is not None:
            self.gate = self.moderator.gate(
                hold=self.guard is None or self.guard.mode == "hold",
                show=self._show,
                record=self.guard.record if self.guard is not None else None,
                stream_id=self.stream_id,
            )
        try:
            return await self._run(request, stats, continuing)
        finally:
            self.metrics.streams_active.dec()
            if self.gate is not None:
                await self.gate.aclose()

    async def _run(
        self, request: ChatRequest, stats: StatsRecorder, continuing: str | None
    ) -> StreamResult:
        await self.sink.start()
        policy = self.resilience
        retries = resumes = 0
        attempt_request = request
        remover: OverlapRemover | None = None
        earlier = continuing or ""
        if continuing:
            attempt_request = continuation_request(request, continuing)
            remover = OverlapRemover(continuing)
        while True:
            try:
                await self._attempt(attempt_request, stats, remover)
                await self._end_thinking()
                if self.guard is not None:
                    await self._apply(self.guard.finish())
                if (flagged := await self._moderation_outcome()) is not None:
                    raise _GuardrailStop(flagged)
            except _GuardrailStop as stop:
                violation = await self._moderation_outcome() or stop.violation
                result = self._result(EndReason.GUARDRAIL, stats, violation=violation)
            except asyncio.CancelledError:
                if self.gate is not None:
                    await self.gate.aclose()  # what waits for a verdict is not shown
                result = self._result(EndReason.STOPPED_BY_USER, stats)
                await self._finish(result)
                raise
            except ProviderError as exc:
                if not self._received and exc.retryable and retries < policy.retries:
                    # Nothing shown yet: the same request again (for a Continue, the same
                    # continuation request and a fresh overlap remover).
                    if continuing:
                        remover = OverlapRemover(continuing)
                    delay = policy.backoff(retries, exc, self._rng)
                    retries += 1
                    log.info(
                        "stream %s: %s before the first token; retry %d in %.2f s",
                        self.stream_id,
                        exc.kind,
                        retries,
                        delay,
                    )
                    try:
                        await self._sleep(delay)
                    except asyncio.CancelledError:
                        await self._finish(self._result(EndReason.STOPPED_BY_USER, stats))
                        raise
                    stats.new_attempt(resume=False)
                    continue
                if self._received and isinstance(exc, StreamBroken) and resumes < policy.resumes:
                    resumes += 1
                    shown = earlier + "".join(self._received)
                    log.info(
                        "stream %s: %s after %d characters; resuming (%d of %d)",
                        self.stream_id,
                        exc.cause,
                        len(shown),
                        resumes,
                        policy.resumes,
                    )
                    attempt_request = continuation_request(request, shown)
                    remover = OverlapRemover(shown)
                    stats.new_attempt(resume=True)
                    continue
                result = await self._give_up(exc, stats)
            else:
                snapshot = stats.snapshot()
                reason = (
                    EndReason.LENGTH if snapshot.finish_reason == "length" else EndReason.COMPLETE
                )
                result = self._result(reason, stats)
            await self._finish(result)
            return result

    async def _attempt(
        self, request: ChatRequest, stats: StatsRecorder, remover: OverlapRemover | None
    ) -> None:
        """One request; the guard's waiting batch is settled however it ends."""
        try:
            await self._read(request, stats, remover)
        except asyncio.CancelledError:
            await self._settle_unchecked(cancel=True)  # Stop: nothing more is checked
            raise
        except BaseException:
            await self._settle_unchecked(cancel=False)
            if self._guard_stop is not None:
                raise self._guard_stop from None  # a violation outranks how the stream ended
            raise
        await self._settle_unchecked(cancel=False)
        if self._guard_stop is not None:
            raise self._guard_stop

    async def _read(
        self, request: ChatRequest, stats: StatsRecorder, remover: OverlapRemover | None
    ) -> None:
        """Read one request's stream. Raises StreamBroken(cause="stalled") when the provider
        goes quiet."""
        policy = self.resilience
        got_text = False  # answer or thinking: a long think is data, not a stall
        # The text of Deltas that came in one network read, passed on together after the last.
        batch: list[str] = []
        thoughts: list[str] = []  # and their thinking, passed on before it
        splitter = ThinkTagSplitter()  # inline <think> tags, per request
        try:
            async with asyncio.timeout(None) as scope:
                with StallWatch(scope) as watch:
                    # aclosing: if we stop consuming early (Stop, a stall), the provider's
                    # generator is closed here, and with it the HTTP response.
                    stream = self.source.stream(request, pace=self._pace)
                    async with contextlib.aclosing(stream) as deltas:
                        iterator = aiter(deltas)
                        while True:
                            # Only the wait for the provider counts; a slow screen does not.
                            watch.arm(policy.stall_s if got_text else policy.first_token_timeout_s)
                            try:
                                if self.gate is None:
                                    delta = await anext(iterator)
                                else:
                                    delta = await self._next_unless_flagged(iterator)
                            except StopAsyncIteration:
                                break
                            except ProviderError:
                                # What came before the failure is still shown.
                                await self._pass_on(thoughts, batch)
                                raise
                            finally:
                                watch.disarm()
                            if self._on_delta is not None:
                                self._on_delta(delta)  # as it came (raw views)
                            if delta.text and not splitter.passing:
                                answer, tagged = splitter.feed(delta.text)
                                if tagged or answer != delta.text:
                                    delta = replace(
                                        delta, text=answer, reasoning=delta.reasoning + tagged
                                    )
                            stats.observe(delta)
                            if delta.reasoning:
                                got_text = True
                                thoughts.append(delta.reasoning)
                            if delta.text:
                                got_text = True
                                batch.append(remover.feed(delta.text) if remover else delta.text)
                            if (batch or thoughts) and not delta.more:
                                await self._pass_on(thoughts, batch)
                        # What a source that ended on a Delta saying more left, and a tag
                        # split's last characters.
                        answer, tagged = splitter.finish()
                        self._unclosed = splitter.unclosed
                        thoughts.append(tagged)
                        batch.append(remover.feed(answer) if remover and answer else answer)
                        await self._pass_on(thoughts, batch)
        except TimeoutError:
            if not scope.expired():
                raise
            raise StreamBroken(
                f"The provider sent nothing for {watch.limit:g} s, so the answer stopped here.",
                cause="stalled",
            ) from None
        if remover is not None:
            await self._check(remover.finish())

    async def _pass_on(self, thoughts: list[str], batch: list[str]) -> None:
        """Thinking first, then the answer text that came with it; both lists are emptied."""
        if thoughts:
            text = "".join(thoughts)
            thoughts.clear()
            await self._think(text)
        if batch:
            text = "".join(batch)
            batch.clear()
            await self._check(text)

    async def _think(self, text: str) -> None:
        """Thinking through its own guard to the sink's `reasoning` (or nowhere, when hidden)."""
        if not text:
            return
        self._thinking_open = True
        if not self.show_reasoning:
            return
        if self._reasoning_guard is None and self.reasoning_guards is not None:
            self._reasoning_guard = self.reasoning_guards()
        if self._reasoning_guard is None:
            await self._show_thinking(text)
        else:
            await self._apply_thinking(self._reasoning_guard.feed(text))

    async def _apply_thinking(self, step: GuardStep) -> None:
        if step.retract_to is not None:
            shown = "".join(self._thought)
            if step.retract_to < len(shown):
                kept = shown[: step.retract_to]
                self._thought[:] = [kept]
                retract = getattr(self.sink, "reasoning_replace", None)
                if retract is not None:
                    await retract(kept)
        await self._show_thinking(step.release)
        if step.stopped and step.violation is not None:
            raise _GuardrailStop(step.violation)

    async def _show_thinking(self, text: str) -> None:
        if text:
            self._thought.append(text)
            await self.sink.reasoning(text)  # type: ignore[attr-defined]

    async def _end_thinking(self) -> None:
        """The thinking phase is over (the answer starts, or the reply ended): what its guard
        still holds is released if safe, and the sink is told."""
        guard, self._reasoning_guard = self._reasoning_guard, None
        if guard is not None:
            await self._apply_thinking(guard.finish())
        await self._close_thinking()

    async def _close_thinking(self) -> None:
        if self._thinking_open:
            self._thinking_open = False
            done = getattr(self.sink, "reasoning_done", None)
            if done is not None and self._thought:
                await done()

    async def _next_unless_flagged(self, iterator: AsyncIterator[Delta]) -> Delta:
        """The next delta, unless moderation flags the answer first: then the upstream read
        is abandoned at once (and the response closed by the caller), however slow it is."""
        assert self.gate is not None
        step: asyncio.Future[Delta] = asyncio.ensure_future(anext(iterator))
        try:
            await asyncio.wait((step, self.gate.flagged), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not step.done():
                step.cancel()
                await asyncio.wait((step,))
        if self.gate.violation is not None:
            raise _GuardrailStop(self.gate.violation)
        return step.result()

    async def _give_up(self, error: ProviderError, stats: StatsRecorder) -> StreamResult:
        """The answer failed for good: what the guard still holds is checked as the end of the
        stream and shown if safe, so the partial answer is all the user may see."""
        try:
            await self._end_thinking()
            if self.guard is not None:
                await self._apply(self.guard.finish())
            if (flagged := await self._moderation_outcome()) is not None:
                raise _GuardrailStop(flagged)
        except _GuardrailStop as stop:
            violation = await self._moderation_outcome() or stop.violation
            return self._result(EndReason.GUARDRAIL, stats, violation=violation)
        return self._result(EndReason.ERROR, stats, error=error)

    async def _moderation_outcome(self) -> Violation | None:
        """Wait for the verdicts on everything released (hold mode shows what passes) and
        return the moderation violation, if any; in buffered mode, retract to before it."""
        gate = self.gate
        if gate is None:
            return None
        violation = await gate.finish()
        if violation is not None and not gate.hold:
            await self._retract(violation.start)
        return violation

    async def _check(self, text: str) -> None:
        """Pass text through the guard (if any) to the sink."""
        if not text:
            return
        if self._thinking_open:
            await self._end_thinking()
        gate = self.gate
        if gate is None and self.guard is None:  # nothing to check: straight to the sink
            self._received.append(text)
            await self._show(text)
            return
        if gate is not None and gate.violation is not None:
            raise _GuardrailStop(gate.violation)
        self._received.append(text)
        if self.guard is None:
            await self._release(text)
            return
        if self._guard_stop is not None:
            raise self._guard_stop
        guard = self.guard
        if gate is None and guard.mode == "hold" and not self._guard_lock.locked():
            # The common case, once per UI update, without the lock's cost: no timer's check
            # is under way, and a step that releases text has checked all of it, so a timer
            # that fires while it is shown finds nothing to check. Retractions and moderation
            # take the lock.
            step = guard.feed(text)
            if step.release:
                await self._show(step.release)
            if step.stopped and step.violation is not None:
                raise _GuardrailStop(step.violation)
        else:
            async with self._guard_lock:
                await self._apply(guard.feed(text))
        if guard.unchecked or self._guard_timer is not None:
            self._watch_unchecked()

    def _watch_unchecked(self) -> None:
        """Arm the timer while the guard holds a batch it has not checked; disarm it once none
        waits. One timer per batch, not per piece."""
        guard = self.guard
        if guard is None or not guard.unchecked:
            if self._guard_timer is not None:
                self._guard_timer.cancel()
                self._guard_timer = None
        elif self._guard_timer is None:
            loop = asyncio.get_running_loop()
            self._guard_timer = loop.call_later(guard.check_every_s, self._unchecked_due)

    def _unchecked_due(self) -> None:
        self._guard_timer = None
        if self._guard_task is None or self._guard_task.done():
            self._guard_task = asyncio.ensure_future(self._check_unchecked())

    async def _check_unchecked(self) -> None:
        async with self._guard_lock:
            guard = self.guard
            if guard is None or not guard.unchecked or self._guard_stop is not None:
                return
            try:
                await self._apply(guard.check())
            except _GuardrailStop as stop:
                # Nothing of it was shown; the answer stops as the stream goes on or ends.
                self._guard_stop = stop

    async def _settle_unchecked(self, *, cancel: bool) -> None:
        """The attempt is over: no timer left, and its check finished (or, on Stop, cancelled)
        before the guard is finished or the next attempt feeds it."""
        if self._guard_timer is not None:
            self._guard_timer.cancel()
            self._guard_timer = None
        task, self._guard_task = self._guard_task, None
        if task is not None and not task.done():
            if cancel:
                task.cancel()
            await asyncio.wait((task,))

    async def _apply(self, step: GuardStep) -> None:
        if step.retract_to is not None:
            await self._retract(step.retract_to)
        await self._release(step.release)
        if step.stopped and step.violation is not None:
            raise _GuardrailStop(step.violation)

    async def _release(self, text: str) -> None:
        """Text the local checks passed: shown now, or once moderation passed it (hold)."""
        gate = self.gate
        if gate is None:
            await self._show(text)
            return
        if not gate.hold:
            await self._show(text)
        gate.push(text)

    async def _retract(self, upto: int) -> None:
        """Cut what the user sees back to its first `upto` characters."""
        shown = self.last_text
        if upto >= len(shown):
            return
        kept = shown[:upto]
        self._shown[:] = [kept]
        await self.sink.replace(kept)

    async def _show(self, text: str) -> None:
        if text:
            self._shown.append(text)
            await self.sink.write(text)

    def _result(
        self,
        reason: EndReason,
        stats: StatsRecorder,
        *,
        error: ProviderError | None = None,
        violation: Violation | None = None,
    ) -> StreamResult:
        return StreamResult(
            stream_id=self.stream_id,
            text=self.last_text,
            reason=reason,
            stats=stats.snapshot(),
            error=error,
            violation=violation,
            dropped_messages=self._dropped_messages,
            reasoning="".join(self._thought),
            reasoning_unclosed=self._unclosed,
        )

    async def _finish(self, result: StreamResult) -> None:
        fields: dict[str, object] = {
            "stream_id": result.stream_id,
            "reason": result.reason.value,
            **result.stats.as_log_fields(),
        }
        if result.error is not None:
            fields["error_kind"] = result.error.kind
            fields["error_detail"] = result.error.detail
        if result.violation is not None:
            fields["guardrail_policy"] = result.violation.policy
            fields["guardrail_kind"] = result.violation.kind
        if self.guard is not None and self.guard.policies:
            record = self.guard.record
            fields["guard_held_chars_max"] = record.max_held_chars
            fields["guard_hold_s_max"] = round(record.max_hold_s, 4)
            fields["guard_redactions"] = record.redactions
            fields["guard_check_errors"] = record.check_errors
            for policy in record.failed_policies:
                self.metrics.guardrail_check_errors.labels(policy=policy).inc()
        if self.gate is not None:
            fields["moderation_checks"] = self.gate.checks
        if result.dropped_messages:
            fields["history_dropped_messages"] = result.dropped_messages
        await self._close_thinking()  # on Stop too: what the guard held stays unshown
        # One structured line per answer; never the text itself.
        if log.isEnabledFor(logging.INFO):
            log.info("stream_end %s", json.dumps(fields, sort_keys=True))
        self.metrics.record(
            result.stats, result.reason.value, result.error.kind if result.error else None
        )
        if (meter := USAGE_METER.get()) is not None:
            meter.add(result.stats)
        if result.violation is not None:
            self.metrics.guardrail_stops.labels(policy=result.violation.policy).inc()
        await self.sink.finish(result)
