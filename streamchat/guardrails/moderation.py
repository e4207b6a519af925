"""The `moderation` policy: a moderation endpoint judges the answer sentence by sentence, off the
hot path.

A network round trip cannot run per chunk, so this is a gate after the local Guard, not a
`Policy`: complete sentences are sent for verdicts concurrently; in hold mode a sentence is shown
once its verdict is in, in buffered mode a flagged sentence retracts the message. A flag, or a
failed check unless GUARDRAIL_ON_ERROR=allow, stops the stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httpx2
import openai

from streamchat.guardrails.guard import GuardRecord, Violation
from streamchat.guardrails.policies import label

log = logging.getLogger("streamchat.guardrails")

POLICY = "moderation"
DEFAULT_MODEL = "omni-moderation-latest"
# A sentence ends at . ! ? (and their full-width forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f\u2026]+[\"'\u201d\u2019)\]]*\s+|\n\s*")
_LAST_SPACE = re.compile(r"\s(?=\S*$)")
# Anything that looks like a credential, scrubbed from a failed check's detail before it is
# logged (an SDK error may echo the key). The guardrails know nothing of the app, so they
# keep this pattern themselves; it is the one streamchat.core.errors applies to its errors.
_SECRET_PATTERN = re.compile(
    r"(sk-[A-Za-z0-9_\-*.]{3,}|Bearer\s+[A-Za-z0-9_\-.=*]+|[A-Za-z0-9_\-]{32,})"
)


def _redact_secrets(text: str) -> str:
    return _SECRET_PATTERN.sub("[redacted]", text)


class ModerationClient(Protocol):
    """Judges one text; returns the flagged categories (empty when the text is fine).
    Raises on any failure: the caller decides what a failure means."""

    async def categories(self, text: str) -> list[str]: ...


class OpenAIModerationClient:
    """The OpenAI moderation endpoint (or any server that speaks it) through the `openai` SDK."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str = DEFAULT_MODEL,
        timeout_s: float = 10.0,
    ) -> None:
        self.model = model
        self._client = openai.AsyncOpenAI(
            # A local stand-in needs no key; the SDK insists on a non-empty one.
            api_key=api_key or "no-key",
            base_url=base_url,
            max_retries=1,
            timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        )

    async def categories(self, text: str) -> list[str]:
        response = await self._client.moderations.create(model=self.model, input=text)
        flagged: list[str] = []
        for result in response.results:
            if not result.flagged:
                continue
            values = result.categories.model_dump(by_alias=True)
            flagged.extend(name for name, hit in values.items() if hit)
            if not flagged:
                flagged.append("flagged")
        return list(dict.fromkeys(flagged))

    async def aclose(self) -> None:
        await self._client.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A moderation verdict on one piece of text: `kind` is None when it may be shown."""

    kind: str | None
    error: bool = False


def moderation_kind(categories: list[str]) -> str:
    """The violation kind for flagged categories: the first, most specific one wins."""
    return f"moderation:{categories[0]}" if categories else "moderation:flagged"


class Moderator:
    """One per process: the client plus the rules for errors and timeouts."""

    def __init__(
        self,
        client: ModerationClient,
        *,
        on_error: str = "block",
        timeout_s: float = 10.0,
        on_check_error: Callable[[str], None] | None = None,
    ) -> None:
        if on_error not in ("block", "allow"):
            raise ValueError(f"unknown on_error {on_error!r}")
        self.client = client
        self.on_error = on_error
        self.timeout_s = timeout_s
        self._on_check_error = on_check_error

    async def verdict(self, text: str, *, context: str = "", stream_id: str = "") -> Verdict:
        """Judge `text` (with `context`, the text before it, judged together)."""
        if not text.strip():
            return Verdict(None)  # whitespace needs no verdict
        judged = f"{context.strip()} {text.strip()}" if context.strip() else text
        try:
            async with asyncio.timeout(self.timeout_s):
                categories = await self.client.categories(judged)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            # Never the text; the error's own words may echo a key, so they are scrubbed.
            log.warning(
                "moderation check failed stream=%s reason=%s detail=%s on_error=%s",
                stream_id,
                reason,
                _redact_secrets(str(exc))[:200],
                self.on_error,
            )
            if self._on_check_error is not None:
                self._on_check_error(POLICY)
            return Verdict("check_error" if self.on_error == "block" else None, error=True)
        return Verdict(moderation_kind(categories) if categories else None)

    async def check_input(self, text: str) -> Violation | None:
        """The user's whole message, before anything goes upstream."""
        verdict = await self.verdict(text)
        if verdict.kind is None:
            return None
        violation = Violation(POLICY, verdict.kind, 0, len(text), label(verdict.kind))
        log.warning("guardrail violation input policy=%s kind=%s", POLICY, verdict.kind)
        return violation

    async def aclose(self) -> None:
        close = getattr(self.client, "aclose", None)
        if close is not None:
            await close()

    def gate(
        self,
        *,
        hold: bool,
        show: Callable[[str], Awaitable[None]],
        record: GuardRecord | None = None,
        stream_id: str = "",
        max_sentence_chars: int = 600,
    ) -> ModerationGate:
        return ModerationGate(
            self,
            hold=hold,
            show=show,
            record=record,
            stream_id=stream_id,
            max_sentence_chars=max_sentence_chars,
        )


class SentenceSplitter:
    """Cuts streamed text into sentences; a sentence with no end in sight is cut at the last
    space before `max_chars` (or at `max_chars`), so the pieces stay bounded."""

    def __init__(self, max_chars: int = 600) -> None:
        self.max_chars = max(2, max_chars)
        self._buffer = ""
        self._searched = 0  # where the next search for a sentence end may start

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        sentences: list[str] = []
        while self._buffer:
            found = _SENTENCE_END.search(self._buffer, max(0, self._searched - 4))
            if found is not None and found.end() < len(self._buffer):
                cut = found.end()
            elif len(self._buffer) >= self.max_chars:
                space = _LAST_SPACE.search(self._buffer, 1, self.max_chars)
                cut = space.end() if space else self.max_chars
            else:
                # The end may still be growing ("end." waits for the space after it).
                self._searched = len(self._buffer)
                break
            sentences.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            self._searched = 0
        return sentences

    def finish(self) -> str:
        rest, self._buffer, self._searched = self._buffer, "", 0
        return rest


class ModerationGate:
    """One stream's moderation: see the module docstring. Positions in violations count
    characters of the text pushed through the gate (what the user sees, or would)."""

    def __init__(
        self,
        moderator: Moderator,
        *,
        hold: bool,
        show: Callable[[str], Awaitable[None]],
        record: GuardRecord | None = None,
        stream_id: str = "",
        max_sentence_chars: int = 600,
    ) -> None:
        self.moderator = moderator
        self.hold = hold
        self._show = show
        self.record = record
        self.stream_id = stream_id
        self._splitter = SentenceSplitter(max_sentence_chars)
        self._pending: deque[tuple[int, str, float, asyncio.Task[Verdict]]] = deque()
        self._offset = 0
        self._previous = ""
        self._wakeup = asyncio.Event()
        self._closing = False
        self._pump: asyncio.Task[None] | None = None
        self.flagged: asyncio.Future[Violation] = asyncio.get_running_loop().create_future()
        self.violation: Violation | None = None
        self.checks = 0

    def push(self, text: str) -> None:
        """Text the local guard released; complete sentences go for a verdict at once."""
        if self.violation is not None or self._closing or not text:
            return
        for sentence in self._splitter.feed(text):
            self._submit(sentence)

    async def finish(self) -> Violation | None:
        """The stream ended: judge the last piece, wait for every verdict (showing what
        passes in hold mode) and return the violation, if any."""
        if not self._closing and self.violation is None:
            rest = self._splitter.finish()
            if rest:
                self._submit(rest)
        self._closing = True
        self._wakeup.set()
        if self._pump is not None:
            await self._pump
        return self.violation

    async def aclose(self) -> None:
        """Stop everything at once (Stop, or the stream ended another way)."""
        self._closing = True
        for *_, task in self._pending:
            task.cancel()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._pending.clear()
        if not self.flagged.done():
            self.flagged.cancel()

    # --- internals ---------------------------------------------------------------------------

    def _submit(self, sentence: str) -> None:
        context, self._previous = self._previous, sentence
        task = asyncio.ensure_future(
            self.moderator.verdict(sentence, context=context, stream_id=self.stream_id)
        )
        self._pending.append((self._offset, sentence, time.monotonic(), task))
        self._offset += len(sentence)
        self.checks += 1
        self._wakeup.set()
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._run_pump())

    async def _run_pump(self) -> None:
        """Takes verdicts in order: shows what passes (hold mode), stops at the first flag."""
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            start, sentence, submitted, task = self._pending[0]
            verdict = await task
            self._pending.popleft()
            if self.record is not None:
                waited = time.monotonic() - submitted
                self.record.max_hold_s = max(self.record.max_hold_s, waited)
                if verdict.error:
                    self.record.check_errors += 1
            if verdict.kind is not None:
                end = start + len(sentence)
                self._flag(Violation(POLICY, verdict.kind, start, end, label(verdict.kind)))
                return
            if self.hold:
                await self._show(sentence)

    def _flag(self, violation: Violation) -> None:
        self.violation = violation
        self._closing = True
        for *_, task in self._pending:
            task.cancel()
        self._pending.clear()
        if self.record is not None:
            self.record.violations.append(violation)
        log.warning(
            "guardrail violation stream=%s policy=%s kind=%s start=%d end=%d action=stop",
            self.stream_id,
            POLICY,
            violation.kind,
            violation.start,
            violation.end,
        )
        if not self.flagged.done():
            self.flagged.set_result(violation)
