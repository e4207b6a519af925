"""The chat-completions SSE stream, read from its bytes: `LineSplitter` cuts lines as SSE ends
them, `ChunkParser` turns `data:` lines into `Delta`s with the C JSON scanner alone (no typed
object per chunk). Our own code, on public APIs; the fast stream path reads through it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from streamchat.core.errors import ProviderError, StreamBroken
from streamchat.core.types import Delta, Usage

# json.loads without its two Python layers (type checks, trailing-whitespace handling) around
# the C scanner: one call per chunk. The payload comes stripped; what follows the value is
# refused as json.loads refuses it.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class ChunkParser:
    """Turns a chat-completions SSE stream into Deltas.

    Feed it the body's bytes as they arrive (`feed`, then `finish` at the end) or single lines
    (`feed_line`). Servers send one `data:` line per event, read at once; an event whose JSON
    spans several `data:` lines (legal SSE: they join with a newline) is kept until the blank
    line that ends it. `done` becomes true at `data: [DONE]`; nothing after it is read.
    """

    __slots__ = ("_broken", "_index", "_lines", "_pending", "done", "finish_reason")

    def __init__(self) -> None:
        self._index = 0
        self._lines = LineSplitter()
        self._broken: StreamBroken | None = None
        self._pending: list[str] | None = None  # the data lines of an event not yet ended
        self.done = False
        self.finish_reason: str | None = None

    @property
    def ended(self) -> bool:
        """Nothing more to read: `[DONE]` came, or an event that breaks the stream (raised by
        `finish`, after the Deltas that came before it)."""
        return self.done or self._broken is not None

    def feed(self, data: bytes) -> list[Delta]:
        """The Deltas of the events these bytes complete; all but the last say `more`."""
        if self._broken is not None:
            raise self._broken
        deltas: list[Delta] = []
        last: tuple[dict[str, Any], str] | None = None  # becomes a Delta once we know what follows
        for line in self._lines.feed(data):
            # Blank lines only end events: skipped here without a call, unless one ends an
            # event of several data lines.
            if (line or self._pending is not None) and not self.done:
                try:
                    chunk = self._chunk(line)
                except StreamBroken as broken:
                    if last is None:
                        raise
                    self._broken = broken  # the answer's text before it is still shown
                    break
                if chunk is not None:
                    if last is not None:
                        deltas.append(self._delta(last[0], last[1], True))
                    last = chunk
        if last is not None:
            deltas.append(self._delta(last[0], last[1], False))
        return deltas

    def finish(self) -> list[Delta]:
        """The Delta of a last line the stream did not end; raises what broke the stream."""
        broken, self._broken = self._broken, None
        if broken is not None:
            raise broken
        lines = [*self._lines.finish(), ""]  # the end of the body ends an open event too
        return [d for line in lines if not self.done and (d := self._line(line)) is not None]

    def feed_line(self, line: str) -> Delta | None:
        """The Delta of one line of the stream taken as a whole event, if it carries one."""
        delta = self._line(line)
        if self._pending is not None:
            delta = self._line("")
        return delta

    def _line(self, line: str) -> Delta | None:
        chunk = self._chunk(line)
        return None if chunk is None else self._delta(*chunk)

    def _chunk(self, line: str) -> tuple[dict[str, Any], str] | None:
        """The chunk a line carries and its JSON text; raises StreamBroken for one that cannot
        be read or that reports an error."""
        # Blank lines end events, ':' starts keep-alive comments, and `event:`/`id:`/`retry:`
        # fields carry nothing we use: only `data:` lines matter.
        if not line.startswith("data:"):
            if not line and self._pending is not None:
                payload, self._pending = "\n".join(self._pending).strip(), None
                return self._read(payload, joined=True)
            return None
        if self._pending is not None:
            self._pending.append(line[6:] if line.startswith("data: ") else line[5:])
            return None
        payload = line[5:].strip()
        if not payload:
            return None
        if payload == "[DONE]":
            self.done = True
            return None
        return self._read(payload, joined=False)

    def _read(self, payload: str, *, joined: bool) -> tuple[dict[str, Any], str] | None:
        try:
            chunk, end = _scan_json(payload, 0)
        except (StopIteration, ValueError):
            end = -1
        if end != len(payload) and not joined and payload.startswith("{"):
            # Perhaps the first line of an event whose JSON goes on in the next data lines.
            self._pending = [payload]
            return None
        if end != len(payload):
            raise StreamBroken(
                "The provider sent a piece of the answer that could not be read, "
                "so the answer stopped here.",
                cause="malformed",
                detail=f"malformed chunk: {payload[:200]!r}",
            ) from None
        if not isinstance(chunk, dict):
            raise StreamBroken(
                "The provider sent a piece of the answer that could not be read, "
                "so the answer stopped here.",
                cause="malformed",
                detail=f"chunk is not an object: {payload[:200]!r}",
            )
        if "error" in chunk:
            raise _stream_error(chunk["error"])
        return chunk, payload

    def _delta(self, chunk: dict[str, Any], payload: str, more: bool = False) -> Delta:
        text = reasoning = ""
        finish_reason = None
        for choice in chunk.get("choices") or ():
            # We ask for one choice; some servers still number it. Ignore others defensively.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    text = content
                reasoning = thinking_of(delta)
            if choice.get("finish_reason"):
                finish_reason = str(choice["finish_reason"])
        reported = chunk.get("usage")  # on one chunk at most, if at all
        usage = _usage(reported) if reported else None
        # Every chunk becomes a Delta, also role-only and empty ones: raw chunk views count and
        # show them, and they cost nothing downstream (empty text is not shown).
        if finish_reason is not None:
            self.finish_reason = finish_reason
        delta_obj = Delta(
            text=text,
            index=self._index,
            finish_reason=finish_reason,
            usage=usage,
            raw=payload,
            more=more,
            reasoning=reasoning,
        )
        self._index += 1
        return delta_obj


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    try:
        details = value.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        return Usage(
            prompt_tokens=int(value.get("prompt_tokens") or 0),
            completion_tokens=int(value.get("completion_tokens") or 0),
            reasoning_tokens=int(reasoning or 0),
        )
    except (TypeError, ValueError):
        return None


def thinking_of(delta: dict[str, Any]) -> str:
    """A delta's thinking: `reasoning_content` (DeepSeek, vLLM, LM Studio) or `reasoning`
    (OpenRouter, Ollama); empty when it has none."""
    for key in ("reasoning_content", "reasoning"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _stream_error(error: object) -> ProviderError:
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    return StreamBroken(
        "The provider reported an error in the middle of the answer, so it stopped here.",
        cause="error_event",
        detail=f"error event: {message}",
    )


class LineSplitter:
    """Splits a byte stream into lines, as SSE ends them: LF, CRLF or CR.

    `feed(bytes)` returns the lines completed so far, `finish()` the last one if it had no
    line end. Only complete lines are decoded (all of a read's at once), so a character split
    across reads stays whole (no UTF-8 sequence contains a CR or LF byte).
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[str]:
        if self._tail:
            data = self._tail + data
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, held = data[:-1], b"\r"  # perhaps the first half of a CRLF
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n")
        if end < 0:
            self._tail = data + held
            return []
        self._tail = data[end + 1 :] + held
        return data[:end].decode("utf-8", "replace").split("\n")

    def finish(self) -> list[str]:
        tail, self._tail = self._tail, b""
        return [tail.removesuffix(b"\r").decode("utf-8", "replace")] if tail else []
