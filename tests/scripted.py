"""A scripted DeltaSource for unit tests: plays Deltas, can fail or hang, records closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from streamchat.core.errors import ProviderError
from streamchat.core.metrics import StreamStats
from streamchat.core.relay import ReadPace
from streamchat.core.types import ChatRequest, Delta, Usage

# The stats of a short finished answer, for sinks under test.
STATS = StreamStats(
    first_token_s=0.1,
    duration_s=1.0,
    completion_tokens=3,
    prompt_tokens=0,
    usage_reported=False,
    chunks=3,
)


class ScriptedSource:
    def __init__(
        self,
        pieces: Sequence[str],
        *,
        fail_with: ProviderError | None = None,
        hang_after: int | None = None,
        finish_reason: str = "stop",
        usage: Usage | None = None,
    ) -> None:
        self.pieces = list(pieces)
        self.fail_with = fail_with
        self.hang_after = hang_after
        self.finish_reason = finish_reason
        self.usage = usage
        self.closed = asyncio.Event()
        self.requests: list[ChatRequest] = []
        self.reached_hang = asyncio.Event()

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        try:
            for index, piece in enumerate(self.pieces):
                if self.hang_after is not None and index == self.hang_after:
                    self.reached_hang.set()
                    await asyncio.Event().wait()
                yield Delta(text=piece, index=index)
            if self.fail_with is not None:
                raise self.fail_with
            yield Delta(text="", index=len(self.pieces), finish_reason=self.finish_reason)
            if self.usage is not None:
                yield Delta(text="", index=len(self.pieces) + 1, usage=self.usage)
        finally:
            self.closed.set()


class SequenceSource:
    """Answers each request with the next source in the list (retries and resumes)."""

    def __init__(self, *sources: ScriptedSource) -> None:
        self.sources = list(sources)
        self.requests: list[ChatRequest] = []

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        source = self.sources[len(self.requests)]
        self.requests.append(request)
        async for delta in source.stream(request, pace=pace):
            yield delta


class RecordingSleep:
    """Stands in for asyncio.sleep: records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)  # yields to the loop as a real sleep would, without the time
