"""Classroom tools: make what happens inside a streamed answer visible.

Everything here is front-end neutral and works with any provider:

- `ChunkLog` records every upstream chunk of an answer (StreamRun's `on_delta`) with its arrival
  time: the raw chunk view, the token view and the latency timeline are drawn from it.
- `PacedSink` slows the display down (slow motion) by pacing what reaches the screen, so a room
  can follow; the upstream request runs at its own speed.
- `DroppingSource` cuts a stream after N chunks on our side of the connection, so the fault
  demo shows retry and resume against any provider, not only the offline model.
- `race_normal_and_streamed` asks the same question with and without `stream=True` at once
  and reports when each showed its first text and when each finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamchat.core.errors import StreamBroken
from streamchat.core.relay import DeltaSource, ReadPace, StreamResult, StreamRun
from streamchat.core.sinks import Sink
from streamchat.core.types import ChatRequest, Delta, EndReason

# --- raw chunks and tokens -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    number: int  # from 1, in arrival order over all attempts
    at_s: float  # seconds since the request was sent
    raw: str  # the chunk's JSON text as received
    text: str  # its content (may be empty)


class ChunkLog:
    """Every chunk of one answer, as it arrived. Pass it as StreamRun's `on_delta`.

    Memory stays bounded for long answers: the first `keep_first` and the last `keep_last`
    chunks are kept whole; the text of every chunk is kept (that is the answer itself) along
    with its arrival time, for the token view and the timeline.
    """

    def __init__(
        self,
        *,
        keep_first: int = 200,
        keep_last: int = 20,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self.started = clock()
        self.count = 0
        self.first: list[ChunkEntry] = []
        self.last: deque[ChunkEntry] = deque(maxlen=keep_last)
        self.keep_first = keep_first
        self.pieces: list[str] = []  # the text of each chunk that had text
        self.piece_times: list[float] = []  # when each piece arrived (s since the request)
        self.first_chunk_s: float | None = None

    def restart_clock(self) -> None:
        """Call when the request is sent, if the log was made earlier."""
        self.started = self._clock()

    def __call__(self, delta: Delta) -> None:
        at = self._clock() - self.started
        self.count += 1
        if self.first_chunk_s is None:
            self.first_chunk_s = at
        entry = ChunkEntry(self.count, at, delta.raw or _as_chunk_json(delta), delta.text)
        if len(self.first) < self.keep_first:
            self.first.append(entry)
        else:
            self.last.append(entry)
        if delta.text:
            self.pieces.append(delta.text)
            self.piece_times.append(at)

    @property
    def skipped(self) -> int:
        """Chunks between the kept first and last ones."""
        return self.count - len(self.first) - len(self.last)

    def render(self, *, first: int = 30, last: int = 5) -> str:
        """The chunks as a numbered list: `#12  +0.41 s  {"content":" token"}`.

        Shows the first `first` and the last `last` chunks, and how many are left out between.
        """
        kept = [*self.first, *self.last]
        head = kept[:first]
        tail = [e for e in kept[-last:] if e.number > (head[-1].number if head else 0)]
        hidden = self.count - len(head) - len(tail)
        width = len(str(self.count))
        names: dict[int, str] = {}  # tool calls seen so far, by index: later pieces omit the name
        lines = [_chunk_line(entry, width, names) for entry in head]
        if hidden > 0:
            lines.append(f"… {hidden} more chunks …")
        lines.extend(_chunk_line(entry, width, names) for entry in tail)
        return "\n".join(lines)


def _as_chunk_json(delta: Delta) -> str:
    """A chunk's JSON for sources that do not keep the raw text (non-streamed answers)."""
    choice: dict[str, Any] = {"index": 0, "delta": {"content": delta.text} if delta.text else {}}
    if delta.finish_reason:
        choice["finish_reason"] = delta.finish_reason
    chunk: dict[str, Any] = {"choices": [choice]}
    if delta.usage is not None:
        chunk["usage"] = {
            "prompt_tokens": delta.usage.prompt_tokens,
            "completion_tokens": delta.usage.completion_tokens,
        }
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


def _chunk_line(entry: ChunkEntry, width: int, names: dict[int, str]) -> str:
    return f"#{entry.number:<{width}}  +{entry.at_s:6.3f} s  {chunk_summary(entry.raw, names)}"


def _tool_call_summary(pieces: list[Any], names: dict[int, str]) -> str:
    """`tool_call[0] calculate id=call_… args+='{"expr'`: a tool call's pieces as read, the
    name carried from the call's first piece (pass the same `names` for one answer's chunks)."""
    shown = []
    for piece in pieces:
        if not isinstance(piece, dict):
            continue
        index = piece.get("index", 0)
        function = piece.get("function") or {}
        if isinstance(function, dict) and function.get("name"):
            names[index] = str(function["name"])
        words = [f"tool_call[{index}]"]
        if index in names:
            words.append(names[index])
        if piece.get("id"):
            words.append(f"id={piece['id']}")
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if arguments or "id" not in piece:
            words.append(f"args+={arguments or ''!r}")
        shown.append(" ".join(words))
    return "; ".join(shown)


def chunk_summary(raw: str, names: dict[int, str] | None = None) -> str:
    """The interesting part of a chunk's JSON: the first choice's `delta` (with the
    finish_reason when set), or the `usage` of a usage-only chunk; the raw text otherwise.
    A piece of a tool call reads as what it is (see _tool_call_summary)."""
    try:
        chunk = json.loads(raw)
    except ValueError:
        return raw[:200]
    if not isinstance(chunk, dict):
        return raw[:200]
    parts: dict[str, Any] = {}
    choices = chunk.get("choices") or []
    if choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or {}
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        if isinstance(calls, list) and calls and not delta.get("content"):
            return _tool_call_summary(calls, {} if names is None else names)
        parts["delta"] = choices[0].get("delta", {})
        if choices[0].get("finish_reason"):
            parts["finish_reason"] = choices[0]["finish_reason"]
    if chunk.get("usage"):
        parts["usage"] = chunk["usage"]
    if not parts:
        return raw[:200]
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TokenView:
    """The answer cut where the provider cut it: one piece per content chunk (a token for
    OpenAI, Ollama, vLLM and the offline model, which send one token per chunk)."""

    pieces: tuple[str, ...]
    usage_tokens: int | None  # what the provider billed, when it said

    @property
    def count(self) -> int:
        return len(self.pieces)

    def props(self) -> dict[str, Any]:
        """The custom element's props (public/elements/TokenView.jsx)."""
        return {"tokens": list(self.pieces), "usage_tokens": self.usage_tokens}


def token_view(log: ChunkLog, result: StreamResult) -> TokenView:
    usage = result.stats.completion_tokens if result.stats.usage_reported else None
    return TokenView(tuple(log.pieces), usage)


# --- the latency timeline --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeline:
    """When things happened in one answer, in seconds since the request was sent."""

    first_chunk_s: float | None  # the first bytes of the stream (often a role-only chunk)
    first_token_s: float | None
    done_s: float
    token_times: tuple[float, ...]  # arrival of each content chunk

    @classmethod
    def of(cls, log: ChunkLog, result: StreamResult) -> Timeline:
        return cls(
            first_chunk_s=log.first_chunk_s,
            first_token_s=result.stats.first_token_s,
            done_s=result.stats.duration_s,
            token_times=tuple(log.piece_times),
        )

    def figure(self, *, title: str = "Latency timeline", tokens_label: str = "tokens") -> Any:
        """A Plotly figure: tokens received over time, with the milestones marked."""
        import plotly.graph_objects as go  # imported here: only classroom answers draw charts

        figure = go.Figure()
        times = [0.0, *self.token_times]
        counts = list(range(len(times)))
        figure.add_trace(
            go.Scatter(
                x=times,
                y=counts,
                mode="lines",
                line={"shape": "hv", "width": 2},
                name=tokens_label,
            )
        )
        milestones = [("request sent", 0.0)]
        if self.first_chunk_s is not None:
            milestones.append(("first chunk", self.first_chunk_s))
        if self.first_token_s is not None:
            milestones.append(("first token", self.first_token_s))
        milestones.append(("done", self.done_s))
        for row, (name, at) in enumerate(milestones):
            figure.add_vline(x=at, line_dash="dot", line_width=1, line_color=MUTED)
            # Each label on a row of its own: milestones a few ms apart never overlap.
            figure.add_annotation(
                x=at,
                y=1 - row * 0.12,
                xref="x",
                yref="paper",
                text=f"{name} ({at:.2f} s)",
                showarrow=False,
                xanchor="right" if name == "done" else "left",
                xshift=-4 if name == "done" else 4,
                font={"size": 12},
            )
        grid = {"gridcolor": GRID, "zerolinecolor": GRID, "linecolor": GRID}
        figure.update_layout(
            title=title,
            xaxis={"title": "seconds since the request was sent", **grid},
            yaxis={"title": tokens_label, **grid},
            height=320,
            margin={"l": 60, "r": 20, "t": 50, "b": 50},
            showlegend=False,
            # Transparent, with mid-grey text: readable on the light and the dark theme alike
            # (public/style.css sets each theme's own text colour over it).
            paper_bgcolor="rgba(0,0,0,0)",
            plot_bgcolor="rgba(0,0,0,0)",
            font={"color": MUTED},
        )
        return figure


# Chart colours that read on Chainlit's light and dark themes.
MUTED = "#8b949e"
GRID = "rgba(139, 148, 158, 0.25)"

# What the browser's Plotly is told: no toolbar over the chart (it covered the plot).
CHART_CONFIG = {"displayModeBar": False, "responsive": True}


# --- slow motion -----------------------------------------------------------------------------

_SPEED = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*x|(\d+(?:\.\d+)?)\s*(?:words?\s*/\s*s|/s))\s*$")
_PIECE = re.compile(r"\s*\S+\s*|\s+")

SPEEDS = ("1x", "0.5x", "0.25x", "5 words/s", "2 words/s")


@dataclass(frozen=True, slots=True)
class Speed:
    """`factor` of the arrival speed (0.25 = four times slower), or `words_per_second`: the
    screen shows whole words, which a room can read, whatever the provider's tokens are."""

    factor: float | None = None
    words_per_second: float | None = None

    @classmethod
    def parse(cls, value: str) -> Speed:
        match = _SPEED.match(value.lower())
        if match is None:
            raise ValueError(
                f"Unknown speed {value!r}: use a factor such as 0.25x or a rate such as 5 words/s."
            )
        factor, rate = match.groups()
        if factor is not None:
            number = float(factor)
            if not 0.01 <= number <= 1:
                raise ValueError("A slow-motion factor must be between 0.01x and 1x.")
            return cls(factor=number)
        number = float(rate)
        if not 0.1 <= number <= 1000:
            raise ValueError("A slow-motion rate must be between 0.1 and 1000 words/s.")
        return cls(words_per_second=number)

    @property
    def is_real_time(self) -> bool:
        return self.factor == 1.0

    def __str__(self) -> str:
        if self.factor is not None:
            return f"{self.factor:g}x"
        return f"{self.words_per_second:g} words/s"


class PacedSink:
    """Passes text to `inner` no faster than `speed`, piece by piece (a piece is a word with
    its spacing), keeping order. With a factor, a piece that arrived t seconds after the first
    is shown t / factor seconds after it; with a rate, pieces are shown 1/rate apart.

    Nothing is lost or reordered; `replace` and `finish` wait for the text before them.
    The caller's writes wait too, so a coalescing sink in front merges text meanwhile.

    `stop()` (the user pressed Stop) ends the pacing at once: no more text reaches the screen,
    and `finish` ends the answer with the text shown so far, not with what was still queued.
    """

    def __init__(
        self,
        inner: Sink,
        speed: Speed,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._first_arrival: float | None = None
        self._last_arrival = 0.0
        self._next_show: float | None = None
        self.pieces_shown = 0
        self.show_times: list[float] = []  # when each piece reached `inner` (for benchmarks)
        self.shown = ""  # the text on screen
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        """Show nothing more: the user stopped the answer."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, text: str) -> None:
        if self.stopped:
            return
        arrived = self._clock()
        if self._first_arrival is None:
            self._first_arrival = self._last_arrival = arrived
        previous, self._last_arrival = self._last_arrival, arrived
        pieces = _PIECE.findall(text)
        for position, piece in enumerate(pieces):
            # The pieces of one write came in over the time since the previous write.
            came = previous + (arrived - previous) * (position + 1) / len(pieces)
            await self._wait_turn(came)
            if self.stopped:
                return
            await self.inner.write(piece)
            self.shown += piece
            self.pieces_shown += 1
            self.show_times.append(self._clock())

    async def _wait_turn(self, came: float) -> None:
        now = self._clock()
        if self.speed.factor is not None:
            assert self._first_arrival is not None
            due = self._first_arrival + (came - self._first_arrival) / self.speed.factor
            if self._next_show is not None:
                due = max(due, self._next_show)
            gap = 0.0
        else:
            assert self.speed.words_per_second is not None
            due = self._next_show if self._next_show is not None else now
            gap = 1.0 / self.speed.words_per_second
        if due > now:
            await self._pause(due - now)
        self._next_show = max(due, now) + gap

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the user stops the answer meanwhile."""
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        stopping = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((sleeping, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (sleeping, stopping):
                waiter.cancel()

    async def replace(self, text: str) -> None:
        self.shown = text
        await self.inner.replace(text)

    async def finish(self, result: StreamResult) -> None:
        if self.stopped and result.text.startswith(self.shown) and result.text != self.shown:
            # Stopped in slow motion: the answer is what the user saw, not what was queued,
            # and it was stopped by the user even if the model had already finished.
            stopped = EndReason.STOPPED_BY_USER if result.reason is EndReason.COMPLETE else None
            result = dataclasses.replace(result, text=self.shown, reason=stopped or result.reason)
        await self.inner.finish(result)


# --- faults on our side ----------------------------------------------------------------------


class DroppingSource:
    """Wraps a DeltaSource and breaks the first `times` streams after `after` content chunks,
    as a dropped connection would: the resilience machinery retries or resumes as it would
    in production. The upstream request is closed when the stream is cut."""

    def __init__(self, source: DeltaSource, *, after: int, times: int = 1) -> None:
        self.source = source
        self.after = after
        self.remaining = times

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        cut = self.remaining > 0
        self.remaining -= 1 if cut else 0
        content = 0
        upstream = self.source.stream(request, pace=pace)
        try:
            async for delta in upstream:
                if cut and delta.text and content >= self.after:
                    raise StreamBroken(
                        "The connection to the provider was lost in the middle of the answer "
                        "(the classroom fault demo cut it on purpose).",
                        cause="connection lost",
                        detail=f"fault demo: dropped after {content} content chunks",
                    )
                if delta.text:
                    content += 1
                yield delta
        finally:
            await upstream.aclose()


# --- normal vs streaming ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaceLane:
    label: str
    first_text_s: float | None  # when the first text reached the screen
    total_s: float
    result: StreamResult


class _FirstTextSink:
    """Notes when the first text reaches the inner sink."""

    def __init__(self, inner: Sink, clock: Callable[[], float], started: float) -> None:
        self.inner = inner
        self._clock = clock
        self._started = started
        self.first_text_s: float | None = None

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, text: str) -> None:
        if self.first_text_s is None and text:
            self.first_text_s = self._clock() - self._started
        await self.inner.write(text)

    async def replace(self, text: str) -> None:
        await self.inner.replace(text)

    async def finish(self, result: StreamResult) -> None:
        await self.inner.finish(result)


async def race(
    lanes: Sequence[tuple[str, Callable[[Sink], StreamRun], Sink]],
    request: ChatRequest,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> list[RaceLane]:
    """Run several answers to `request` at once (`asyncio.gather`), each `(label,
    make_run(sink), sink)`, and report when each showed its first text and finished."""
    started = clock()
    watched = [(label, make, _FirstTextSink(sink, clock, started)) for label, make, sink in lanes]

    async def one(label: str, make: Callable[[Sink], StreamRun], sink: _FirstTextSink) -> RaceLane:
        result = await make(sink).run(request)
        return RaceLane(label, sink.first_text_s, clock() - started, result)

    return list(await asyncio.gather(*(one(*lane) for lane in watched)))


def race_table(lanes: Sequence[RaceLane], *, first_text: str, total: str) -> str:
    """A markdown table of a race's lanes."""

    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f} s"

    rows = [f"| | {first_text} | {total} | tokens |", "|---|---|---|---|"]
    for lane in lanes:
        rows.append(
            f"| **{lane.label}** | {seconds(lane.first_text_s)} | {seconds(lane.total_s)} | "
            f"{lane.result.stats.completion_tokens} |"
        )
    return "\n".join(rows)
