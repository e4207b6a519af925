"""A chat stream the quick way: the body posted as it is, the SSE bytes read by our own parser,
from aiohttp's body when aiohttp carries the response.

The SDK's `chat.completions.create` walks the request against its parameter types and builds a
typed object per chunk; both cost several times the CPU of posting a body of plain values and
scanning each `data:` line (docs/benchmarks.md). This needs the SDK's private request options,
response classes and aiohttp transport, so it is imported only when speed-ups are on, checks
that they are there, and otherwise the provider streams through the SDK's own public stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import aiohttp
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from streamchat.speedups.read_pacing import SocketHold

try:
    from openai._base_client import make_request_options
    from openai._constants import RAW_RESPONSE_HEADER
    from openai._response import AsyncAPIResponse, AsyncResponseContextManager
except ImportError as exc:  # the SDK moved them: the provider uses the SDK's own stream
    PROBLEM: str | None = f"this openai ({openai.__version__}) has no {exc.name or 'such module'}"
else:
    PROBLEM = None

try:
    from openai._vendor.httpx_aiohttp.transport import map_aiohttp_exceptions
except ImportError:  # without it, the body is read through the SDK's response bytes
    map_aiohttp_exceptions = None  # type: ignore[assignment]


Item = TypeVar("Item")


class StreamParser(Protocol[Item]):
    """What reads the bytes (the core's ChunkParser, handed in: this package imports nothing of
    the app): items (Deltas) out of each read, the last ones at the end, `ended` once nothing
    more is to be read."""

    @property
    def ended(self) -> bool: ...

    def feed(self, data: bytes) -> list[Item]: ...

    def finish(self) -> list[Item]: ...


def problem() -> str | None:
    """Why the fast path cannot run with this SDK, or None when it can."""
    return PROBLEM


def post_streaming(
    client: openai.AsyncOpenAI, body: dict[str, Any], extra_headers: dict[str, str]
) -> AbstractAsyncContextManager[Any]:
    """Post `body` as it is through the SDK's client (auth, base URL, headers, error types)
    and give the response unread, as `with_streaming_response` does."""
    headers = {**extra_headers, RAW_RESPONSE_HEADER: "stream"}
    return AsyncResponseContextManager(
        client.post(  # with this header: an AsyncAPIResponse
            "/chat/completions",
            body=body,
            cast_to=ChatCompletion,
            options=make_request_options(extra_headers=headers),
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
    )


def aiohttp_response(response: Any) -> aiohttp.ClientResponse | None:
    """The aiohttp response under the SDK's when aiohttp carries it (the SDK's
    `DefaultAioHttpClient`), else None. Reading its body directly skips four layers of httpx2
    wrappers (raw bytes, decoded bytes, text, lines) for every network read."""
    if map_aiohttp_exceptions is None:
        return None
    stream = response.http_response.stream
    raw = getattr(getattr(stream, "_stream", stream), "_aiohttp_response", None)
    return raw if isinstance(raw, aiohttp.ClientResponse) else None


async def read_deltas(
    response: AsyncAPIResponse[Any],
    parser: StreamParser[Item],
    *,
    pace: Callable[[], float | None] | None = None,
    read_pacing: bool = False,
) -> AsyncGenerator[Item, None]:
    """The Deltas of an unread streaming response, parsed by `parser` from each network read.

    With `pace` and `read_pacing`, what arrives before the consumer next shows text stays in
    the kernel and is read in one go then (read_pacing.py). Transport failures surface as the
    SDK's aiohttp stream raises them (httpx2 exceptions), so errors map alike on both paths.
    """
    raw = aiohttp_response(response)
    hold: SocketHold | None = None
    if raw is not None and pace is not None and read_pacing:
        hold = SocketHold.attach(raw.connection.transport if raw.connection else None)
    try:
        mapped: Callable[[], contextlib.AbstractContextManager[Any]] = (
            map_aiohttp_exceptions if raw is not None else contextlib.nullcontext
        )
        with mapped():
            reads = raw.content.iter_any() if raw is not None else response.iter_bytes()
            async for data in reads:
                for delta in parser.feed(data):
                    yield delta
                if parser.ended:
                    break
                if hold is not None and pace is not None and (when := pace()) is not None:
                    hold.hold_until(when)
            for delta in parser.finish():
                yield delta
    finally:
        # Before the response's own exit: a pooled connection goes back unheld.
        if hold is not None:
            hold.close()
