"""Open an OpenAI-compatible chat stream and yield `Delta`s; map SDK errors to ours.

The `openai` SDK's client does what it is good at (auth, base URL, headers, error types). We
post the request body as it is and read the SSE stream's bytes ourselves, from aiohttp's body
when aiohttp carries the response: the SDK's typed request walk and typed chunk objects cost
several times more CPU than our plain dict from the JSON scanner, and we only need a few fields.
Provider chunk shapes never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import aiohttp
import httpx2
import openai
from openai._base_client import make_request_options
from openai._constants import DEFAULT_CONNECTION_LIMITS, RAW_RESPONSE_HEADER
from openai._response import AsyncAPIResponse, AsyncResponseContextManager
from openai.types.chat import ChatCompletion, ChatCompletionChunk

try:
    from openai._vendor.httpx_aiohttp.transport import map_aiohttp_exceptions
except ImportError:  # an SDK without it: streams are read through httpx2's line iterator
    map_aiohttp_exceptions = None  # type: ignore[assignment]

from streamchat.core.errors import (
    AuthenticationFailed,
    BadRequest,
    ModelNotFound,
    ProviderError,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
    redact_secrets,
)
from streamchat.core.types import ChatRequest, Delta, Usage
from streamchat.settings import DEFAULT_OPENAI_MODEL, Settings, public_url
from streamchat.speedups.read_pacing import ReadPace, SocketHold

log = logging.getLogger("streamchat.core.provider")

# Local servers (Ollama, llama.cpp, LM Studio) ignore the key, but the SDK insists on one.
_PLACEHOLDER_KEY = "not-needed"
# How long a server's model list is reused: every new chat shows it in its settings, and a
# model loaded into a local server meanwhile appears within this time.
MODEL_LIST_TTL_S = 60.0
# A pooled connection to the provider unused for this long is not used again. Servers close
# idle keep-alive connections after a limit of their own, most often 5 s (uvicorn, under vLLM
# and the offline model; Node.js; llama.cpp's server), and a pool that keeps them for as long
# hands out, to a request that comes in that instant, connections the server is closing. The
# SDK's pool keeps them 5 s.
POOL_IDLE_S = 4.0
# json.loads without its two Python layers (type checks, trailing-whitespace handling) around
# the C scanner: one call per chunk. The payload comes stripped; what follows the value is
# refused as json.loads refuses it.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class ChunkParser:
    """Turns a chat-completions SSE stream into Deltas.

    Feed it the body's bytes as they arrive (`feed`, then `finish` at the end) or single lines
    (`feed_line`); it keeps no buffer beyond the current line (servers send one `data:` line per
    event). `done` becomes true at `data: [DONE]`; nothing after it is read.
    """

    __slots__ = ("_broken", "_index", "_lines", "done", "finish_reason")

    def __init__(self) -> None:
        self._index = 0
        self._lines = LineSplitter()
        self._broken: StreamBroken | None = None
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
            # Blank lines only end events: skipped here without a call.
            if line and not self.done:
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
        lines = self._lines.finish()
        return [d for line in lines if not self.done and (d := self.feed_line(line)) is not None]

    def feed_line(self, line: str) -> Delta | None:
        """The Delta of one line of the stream, if it carries one."""
        chunk = self._chunk(line)
        return None if chunk is None else self._delta(*chunk)

    def _chunk(self, line: str) -> tuple[dict[str, Any], str] | None:
        """The chunk a line carries and its JSON text; raises StreamBroken for one that cannot
        be read or that reports an error."""
        # Blank lines end events, ':' starts keep-alive comments, and `event:`/`id:`/`retry:`
        # fields carry nothing we use: only `data:` lines matter.
        if not line.startswith("data:"):
            return None
        payload = line[5:].strip()
        if not payload:
            return None
        if payload == "[DONE]":
            self.done = True
            return None
        try:
            chunk, end = _scan_json(payload, 0)
        except (StopIteration, ValueError):
            end = -1
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
        text = ""
        finish_reason = None
        for choice in chunk.get("choices") or ():
            # We ask for one choice; some servers still number it. Ignore others defensively.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                text = content
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
        )
        self._index += 1
        return delta_obj


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    try:
        return Usage(
            prompt_tokens=int(value.get("prompt_tokens") or 0),
            completion_tokens=int(value.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None


def _stream_error(error: object) -> ProviderError:
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    return StreamBroken(
        "The provider reported an error in the middle of the answer, so it stopped here.",
        cause="error_event",
        detail=f"error event: {message}",
    )


class Provider:
    """One OpenAI-compatible endpoint. Builds its SDK client on first use, never at import."""

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._base_url = base_url or settings.base_url
        self._http_client = http_client  # a custom transport (tests, proxies); None: the SDK's
        self._client: openai.AsyncOpenAI | None = None
        # Some compatible servers reject `stream_options`; we learn that once and stop sending it.
        self._send_stream_options = True
        self._default_model: str | None = None
        self._models: tuple[float, list[str]] | None = None  # (fetched at, ids)
        self._models_fetch: asyncio.Future[list[str]] | None = None

    @property
    def label(self) -> str:
        """Where answers come from, safe to show: never includes a key."""
        if self._settings.offline:
            return "offline demo model"
        return public_url(self._base_url or "https://api.openai.com/v1")

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self._settings.api_key or _PLACEHOLDER_KEY,
                base_url=self._base_url,
                # StreamRun retries (it also covers failures after the headers and before the
                # first token, which the SDK cannot see), so the SDK must not retry as well.
                max_retries=0,
                timeout=self._timeout(),
                http_client=self._http_client or self._default_http_client(),
            )
        return self._client

    def _default_http_client(self) -> httpx2.AsyncClient | None:
        """aiohttp under the SDK (its `DefaultAioHttpClient`) unless OPENAI_HTTP_CLIENT=httpx:
        reading a stream token by token costs about half the CPU of the httpx2 stack (see
        docs/benchmarks.md). Proxies from the environment are honoured either way."""
        if self._settings.http_client != "aiohttp":
            return None  # the SDK's own httpx2 client (it checks a pooled connection first)
        return openai.DefaultAioHttpClient(
            timeout=self._timeout(),
            # The SDK's limits, with connections let go before the server lets them go.
            limits=httpx2.Limits(
                max_connections=DEFAULT_CONNECTION_LIMITS.max_connections,
                max_keepalive_connections=DEFAULT_CONNECTION_LIMITS.max_keepalive_connections,
                keepalive_expiry=POOL_IDLE_S,
            ),
        )

    def _timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(
            self._settings.request_timeout_s, connect=self._settings.connect_timeout_s
        )

    async def aclose(self) -> None:
        if self._models_fetch is not None:
            self._models_fetch.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def default_model(self) -> str:
        """The model to use when the user has not picked one.

        OPENAI_MODEL wins; against OpenAI itself a sensible default; any other server is asked
        for its models (local servers name them freely) and the first one is used.
        """
        if self._settings.model:
            return self._settings.model
        if self._base_url is None:
            return DEFAULT_OPENAI_MODEL
        if self._default_model is None:
            models = await self.list_models()
            if not models:
                raise ModelNotFound(
                    f"The server at {self.label} offers no models. Load a model there, "
                    "or set OPENAI_MODEL."
                )
            self._default_model = models[0]
        return self._default_model

    async def list_models(self) -> list[str]:
        """Model ids the server offers (GET /models), reused for MODEL_LIST_TTL_S.

        Chats that start together share one request; a failure is not remembered, so the next
        call asks again.
        """
        if self._models is not None and time.monotonic() - self._models[0] < MODEL_LIST_TTL_S:
            return list(self._models[1])
        if self._models_fetch is None:
            self._models_fetch = asyncio.ensure_future(self._fetch_models())
            self._models_fetch.add_done_callback(self._fetched)
        # shield: one caller giving up (a timeout) does not cancel the others' request.
        return list(await asyncio.shield(self._models_fetch))

    async def _fetch_models(self) -> list[str]:
        try:
            page = await self.client.models.list()
        except openai.APIError as exc:
            raise self._map_error(exc, model=None) from exc
        models = sorted(model.id for model in page.data)
        self._models = (time.monotonic(), models)
        return models

    def _fetched(self, fetch: asyncio.Future[list[str]]) -> None:
        self._models_fetch = None
        if not fetch.cancelled():
            fetch.exception()  # retrieved here, so a failure nobody awaited is not logged

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        """Yield the answer's Deltas. Closing this generator closes the HTTP response.

        With `pace` (and STREAM_READ_PACING on), what arrives before the consumer next shows
        text stays in the kernel and is read in one go then (see pacing.py).
        """
        # Whoever opens the response closes it: the exit stack does so on completion, on error,
        # and when the consumer stops early (Stop pressed, a guardrail fired, the task was
        # cancelled). Closing a response that is still streaming drops the connection, which
        # tells the provider to stop generating and billing.
        async with contextlib.AsyncExitStack() as stack:
            response = await self._open(stack, request)
            parser = ChunkParser()
            raw = aiohttp_response(response)
            hold = None
            if raw is not None and pace is not None and self._settings.read_pacing:
                hold = SocketHold.attach(raw.connection.transport if raw.connection else None)
                if hold is not None:
                    # Before the response's own exit: a pooled connection goes back unheld.
                    stack.callback(hold.close)
            try:
                # aiohttp's body directly where aiohttp carries the stream; the same exceptions
                # as the SDK's aiohttp stream raises, so errors map alike on both paths.
                with map_aiohttp_exceptions() if raw is not None else contextlib.nullcontext():
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
            except httpx2.TimeoutException as exc:
                if not _really_timed_out(exc):
                    raise StreamBroken(
                        "The connection to the provider was lost in the middle of the answer.",
                        detail=repr(exc),
                    ) from exc
                raise StreamBroken(
                    "The provider stopped sending the answer (nothing arrived for "
                    f"{self._settings.request_timeout_s:g} s), so it stopped here.",
                    cause="stalled",
                    detail=repr(exc),
                ) from exc
            except (httpx2.TransportError, httpx2.StreamError) as exc:
                raise StreamBroken(
                    "The connection to the provider was lost in the middle of the answer.",
                    detail=repr(exc),
                ) from exc
        if not parser.done and parser.finish_reason is None:
            raise StreamBroken(
                "The connection to the provider ended before the answer was complete.",
                cause="ended_early",
                detail="stream ended without finish_reason or [DONE]",
            )

    async def _open(
        self, stack: contextlib.AsyncExitStack, request: ChatRequest
    ) -> AsyncAPIResponse[Any]:
        """Send the request; return the response once its status says the stream started.

        The body is posted as it is, through the SDK's client (auth, base URL, headers, error
        types): `chat.completions.create` would first walk it against the SDK's parameter
        types, about 0.5 ms of CPU per history message on every answer, to change nothing in
        a body of plain strings and numbers like ours.
        """
        body = request.as_kwargs()
        extra_headers = body.pop("extra_headers", {})
        if not body["model"]:
            body["model"] = await self.default_model()
        body["stream"] = True
        if self._send_stream_options:
            body["stream_options"] = {"include_usage": True}
        try:
            try:
                return await self._post_on_live_connection(stack, body, extra_headers)
            except openai.BadRequestError as exc:
                if "stream_options" not in body or "stream_options" not in str(exc.message):
                    raise
                log.info("provider rejects stream_options; retrying without usage reporting")
                self._send_stream_options = False
                del body["stream_options"]
                return await self._post_on_live_connection(stack, body, extra_headers)
        except openai.APIError as exc:
            raise self._map_error(exc, model=body["model"]) from exc

    async def _post_on_live_connection(
        self, stack: contextlib.AsyncExitStack, body: dict[str, Any], extra_headers: dict[str, str]
    ) -> AsyncAPIResponse[Any]:
        """Post the request; once more at once if the pooled connection it was given turned
        out closed before anything was written to it.

        A server closes an idle keep-alive connection when its own idle limit passes (5 s for
        uvicorn, under vLLM and many other servers), and a request that picks the connection
        from the pool in that instant finds it closing. The provider has seen nothing of such
        a request, so sending it again on a new connection is safe, and it is not the
        provider's failure: no retry of STREAM_RETRIES is spent on it, and no backoff.
        """
        try:
            return await stack.enter_async_context(self._post_streaming(body, extra_headers))
        except openai.APIConnectionError as exc:
            if not _never_sent(exc):
                raise
            log.info("the pooled connection to the provider had closed; sending again")
        return await stack.enter_async_context(self._post_streaming(body, extra_headers))

    def _post_streaming(
        self, body: dict[str, Any], extra_headers: dict[str, str]
    ) -> AsyncResponseContextManager[AsyncAPIResponse[Any]]:
        # What `with_streaming_response` does: ask for the response unread, as a context.
        headers = {**extra_headers, RAW_RESPONSE_HEADER: "stream"}
        return AsyncResponseContextManager(
            self.client.post(  # type: ignore[arg-type]  # with this header: an AsyncAPIResponse
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                options=make_request_options(extra_headers=headers),
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
        )

    async def complete(self, request: ChatRequest) -> tuple[str, str | None, Usage | None]:
        """One non-streamed answer: (text, finish_reason, usage). For comparisons with streaming."""
        kwargs = request.as_kwargs()
        if not kwargs["model"]:
            kwargs["model"] = await self.default_model()
        try:
            completion = await self.client.chat.completions.create(**kwargs, stream=False)
        except openai.APIError as exc:
            raise self._map_error(exc, model=kwargs["model"]) from exc
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "") if choice else ""
        usage = completion.usage
        return (
            text,
            choice.finish_reason if choice else None,
            Usage(usage.prompt_tokens, usage.completion_tokens) if usage else None,
        )

    def _map_error(self, exc: openai.APIError, *, model: str | None) -> ProviderError:
        """Translate an SDK error into a short message a person can act on."""
        detail = f"{type(exc).__name__}: {exc.message}"
        if (cause := _root_cause(exc)) is not exc:
            # What the transport reported: the SDK calls every aiohttp failure a timeout.
            detail += f" ({type(cause).__name__}{f': {cause}' if str(cause) else ''})"
        detail = redact_secrets(detail)
        where = self.label
        if isinstance(exc, openai.APITimeoutError) and _really_timed_out(exc):
            return ProviderUnreachable(
                f"The model provider at {where} did not answer in time. "
                "Check that it is running, then try again.",
                detail=detail,
            )
        if isinstance(exc, openai.APIConnectionError):
            hint = (
                "Check OPENAI_BASE_URL and that the server is running."
                if self._base_url
                else "Check your network connection."
            )
            return ProviderUnreachable(
                f"Could not reach the model provider at {where}. {hint}", detail=detail
            )
        if not isinstance(exc, openai.APIStatusError):
            return ProviderError(
                "The model provider returned something unexpected. Try again.", detail=detail
            )
        status = exc.status_code
        if status == 401:
            return AuthenticationFailed(
                f"The model provider at {where} rejected the API key (401). "
                "Check OPENAI_API_KEY in your .env or environment.",
                status=status,
                detail=detail,
            )
        if status == 403:
            return AuthenticationFailed(
                f"The API key is not allowed to use this model at {where} (403). "
                "Check the key's permissions or pick another model.",
                status=status,
                detail=detail,
            )
        if status == 404:
            name = f"'{model}' " if model else ""
            return ModelNotFound(
                f"The model {name}was not found at {where} (404). "
                "Pick another model in the chat settings or set OPENAI_MODEL.",
                status=status,
                detail=detail,
            )
        if status == 429:
            retry_after = _retry_after(exc.response)
            wait = (
                f"Wait {retry_after:g} s and try again."
                if retry_after
                else "Wait a moment and try again."
            )
            return RateLimited(
                f"The model provider is rate-limiting requests (429). {wait}",
                detail=detail,
                retry_after=retry_after,
            )
        if status >= 500:
            return ProviderUnavailable(
                f"The model provider at {where} had an error ({status}). Try again in a moment.",
                status=status,
                detail=detail,
            )
        return BadRequest(
            f"The model provider refused the request ({status}). "
            "Check the model and settings, then try again.",
            status=status,
            detail=detail,
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


def aiohttp_response(response: AsyncAPIResponse[Any]) -> aiohttp.ClientResponse | None:
    """The aiohttp response under the SDK's when aiohttp carries it (the SDK's
    `DefaultAioHttpClient`), else None. Reading its body directly skips four layers of httpx2
    wrappers (raw bytes, decoded bytes, text, lines) for every network read."""
    if map_aiohttp_exceptions is None:
        return None
    stream = response.http_response.stream
    raw = getattr(getattr(stream, "_stream", stream), "_aiohttp_response", None)
    return raw if isinstance(raw, aiohttp.ClientResponse) else None


def _really_timed_out(exc: BaseException) -> bool:
    """Whether a timeout error really comes from a timeout. The aiohttp transport reports any
    aiohttp connection error (a refused connection, a server that hung up) as a timeout; its
    original exception, kept as the cause, tells the truth."""
    for current in _chain(exc):
        if isinstance(current, TimeoutError | aiohttp.ServerTimeoutError):
            return True
        if isinstance(current, aiohttp.ClientConnectionError | ConnectionError):
            return False
    return True


def _never_sent(exc: BaseException) -> bool:
    """Whether a request failed because its connection was closing before any of it was
    written (aiohttp refuses to write to a closing transport): the server saw nothing."""
    cause = _root_cause(exc)
    refused = isinstance(cause, aiohttp.ClientConnectionResetError)
    return refused and "closing transport" in str(cause)


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception in `exc`'s chain of causes (itself if it has none)."""
    *_, first = _chain(exc)
    return first


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, then what caused that, ... (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class WholeAnswer:
    """A DeltaSource that asks without `stream=True`: the whole answer arrives as one piece.

    Everything downstream (stats, sinks, history) works unchanged, so "normal vs streaming"
    comparisons measure only the difference that streaming makes.
    """

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        text, finish_reason, usage = await self.provider.complete(request)
        yield Delta(text=text, index=0, finish_reason=finish_reason or "stop", usage=usage)
