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
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from streamchat.errors import ProviderError, StreamBroken
from streamchat.metrics import PROCESS_METRICS, ProcessMetrics, StatsRecorder, StreamStats
from streamchat.sinks import Sink
from streamchat.types import ChatRequest, Delta, EndReason

log = logging.getLogger("streamchat.relay")


class DeltaSource(Protocol):
    """Anything that streams Deltas for a request: the Provider, or a scripted fake in tests."""

    def stream(self, request: ChatRequest) -> AsyncIterator[Delta]: ...


@dataclass(frozen=True, slots=True)
class StreamResult:
    """The outcome of one answer: what the user saw, why it ended, what it cost."""

    stream_id: str
    text: str
    reason: EndReason
    stats: StreamStats
    error: ProviderError | None = None

    @property
    def interrupted(self) -> bool:
        """True when the answer did not end by itself (Stop or a failure)."""
        return self.reason in (EndReason.STOPPED_BY_USER, EndReason.ERROR)

    def note(self) -> str | None:
        """A short marker for an answer that did not complete, for people and history views."""
        tokens = self.stats.completion_tokens
        if self.reason is EndReason.STOPPED_BY_USER:
            return f"Stopped by you after {tokens} tokens."
        if self.reason is EndReason.LENGTH:
            return "The answer reached the length limit."
        if self.reason is EndReason.ERROR and self.text:
            cause = "connection lost" if isinstance(self.error, StreamBroken) else "error"
            return f"Interrupted: {cause} after {tokens} tokens."
        return None


class StreamRun:
    """One answer: open the upstream stream, pass its text to the sink, finish the sink."""

    def __init__(
        self,
        source: DeltaSource,
        sink: Sink,
        *,
        stream_id: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        metrics: ProcessMetrics = PROCESS_METRICS,
    ) -> None:
        self.source = source
        self.sink = sink
        self.metrics = metrics
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._shown: list[str] = []

    @property
    def last_text(self) -> str:
        """What the user has seen so far; the caller keeps it when the run is cancelled."""
        return "".join(self._shown)

    async def run(self, request: ChatRequest) -> StreamResult:
        """Stream the answer to `request`. Re-raises CancelledError after finishing the sink."""
        stats = StatsRecorder(self._clock)
        shown = self._shown
        self.metrics.streams_active.inc()
        try:
            return await self._run(request, stats, shown)
        finally:
            self.metrics.streams_active.dec()

    async def _run(
        self, request: ChatRequest, stats: StatsRecorder, shown: list[str]
    ) -> StreamResult:
        await self.sink.start()
        try:
            # aclosing: if we stop consuming early (cancellation while the sink writes), the
            # provider's generator is closed here, and with it the HTTP response.
            async with contextlib.aclosing(self.source.stream(request)) as deltas:
                async for delta in deltas:
                    stats.observe(delta)
                    if delta.text:
                        shown.append(delta.text)
                        await self.sink.write(delta.text)
        except asyncio.CancelledError:
            result = self._result(shown, EndReason.STOPPED_BY_USER, stats)
            await self._finish(result)
            raise
        except ProviderError as exc:
            result = self._result(shown, EndReason.ERROR, stats, error=exc)
        else:
            snapshot = stats.snapshot()
            reason = EndReason.LENGTH if snapshot.finish_reason == "length" else EndReason.COMPLETE
            result = self._result(shown, reason, stats)
        await self._finish(result)
        return result

    def _result(
        self,
        shown: list[str],
        reason: EndReason,
        stats: StatsRecorder,
        *,
        error: ProviderError | None = None,
    ) -> StreamResult:
        return StreamResult(
            stream_id=self.stream_id,
            text="".join(shown),
            reason=reason,
            stats=stats.snapshot(),
            error=error,
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
        # One structured line per answer; never the text itself.
        log.info("stream_end %s", json.dumps(fields, sort_keys=True))
        self.metrics.record(
            result.stats, result.reason.value, result.error.kind if result.error else None
        )
        await self.sink.finish(result)
