"""Open an OpenAI-compatible chat stream and yield `Delta`s; map SDK errors to ours.

The `openai` SDK's client does what it is good at (auth, base URL, headers, retries, error
types). On its public API, the answer streams through `chat.completions.create(stream=True)`
and each typed chunk is mapped to a `Delta`. With speed-ups on (and the SDK as expected),
speedups/fast_stream.py posts the body as it is and parses the SSE bytes itself, to the same
Deltas and the same errors. Provider chunk shapes never leave this module and that one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import httpx2
import openai
from openai.types.chat import ChatCompletionChunk

from streamchat.core.errors import (
    AuthenticationFailed,
    BadRequest,
    ModelNotFound,
    ProviderError,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
    public_url,
    redact_secrets,
)
from streamchat.core.parser import ChunkParser, thinking_of
from streamchat.core.relay import ReadPace
from streamchat.core.types import ChatRequest, Delta, Usage

log = logging.getLogger("streamchat.core.provider")

# The model used against api.openai.com when none is named. For any other base URL we ask the
# server's /v1/models instead, because local servers name their models freely.
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
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
# The SDK's own pool size (openai's DEFAULT_CONNECTION_LIMITS), kept with our idle limit.
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 100
HTTP_CLIENTS = ("aiohttp", "httpx")


class Provider:
    """One OpenAI-compatible endpoint. Builds its SDK client on first use, never at import.

    Plain values in: `api_key` and `base_url` as the SDK takes them (neither: OpenAI itself),
    `model` (None: ask the server), the timeouts, the HTTP stack under the SDK (`aiohttp` or
    `httpx`), and whether speed-ups (the fast stream path) and read pacing may be used.
    `offline` only changes the label. `http_client` is a custom transport (tests, proxies).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        request_timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        http_stack: str = "aiohttp",
        speedups: bool = True,
        read_pacing: bool = True,
        offline: bool = False,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if http_stack not in HTTP_CLIENTS:
            raise ValueError(f"http_stack must be one of {', '.join(HTTP_CLIENTS)}")
        self._api_key = api_key
        # Credentials in the URL (`http://user:key@host/v1`) go as basic auth, never in the URL
        # the HTTP stack logs and connects to.
        self._base_url, self._basic_auth = split_credentials(base_url)
        self._model = model
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._http_stack = http_stack
        self._offline = offline
        self._http_client = http_client  # None: the SDK's own, or aiohttp under it
        self._read_pacing = speedups and read_pacing
        # The fast path's module, or None for the SDK's own stream (speed-ups off, or the SDK
        # is not the one the fast path knows).
        self._fast: ModuleType | None = _fast_stream() if speedups else None
        self._client: openai.AsyncOpenAI | None = None
        # Some compatible servers reject `stream_options`; we learn that once and stop sending it.
        self._send_stream_options = True
        self._default_model: str | None = None
        self._models: tuple[float, list[str]] | None = None  # (fetched at, ids)
        self._models_fetch: asyncio.Future[list[str]] | None = None

    @property
    def fast(self) -> bool:
        """Whether answers stream through the fast path (else the SDK's own stream)."""
        return self._fast is not None

    @property
    def label(self) -> str:
        """Where answers come from, safe to show: never includes a key."""
        if self._offline:
            return "offline demo model"
        return public_url(self._base_url or OPENAI_DEFAULT_BASE_URL)

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key or _PLACEHOLDER_KEY,
                base_url=self._base_url,
                # StreamRun retries (it also covers failures after the headers and before the
                # first token, which the SDK cannot see), so the SDK must not retry as well.
                max_retries=0,
                timeout=self._timeout(),
                http_client=self._http_client or self._default_http_client(),
                default_headers=(
                    {"Authorization": self._basic_auth} if self._basic_auth is not None else None
                ),
            )
        return self._client

    def _default_http_client(self) -> httpx2.AsyncClient | None:
        """aiohttp under the SDK (its public `DefaultAioHttpClient`) unless
        OPENAI_HTTP_CLIENT=httpx (docs/benchmarks.md compares them). Proxies from the
        environment are honoured either way."""
        if self._http_stack != "aiohttp":
            return None  # the SDK's own httpx2 client (it checks a pooled connection first)
        return openai.DefaultAioHttpClient(
            timeout=self._timeout(),
            # The SDK's limits, with connections let go before the server lets them go.
            limits=httpx2.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
                keepalive_expiry=POOL_IDLE_S,
            ),
        )

    def _timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(self._request_timeout_s, connect=self._connect_timeout_s)

    async def aclose(self) -> None:
        if self._models_fetch is not None:
            self._models_fetch.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def default_model(self) -> str:
        """The model to use when the user has not picked one.

        The configured model wins; against OpenAI itself a sensible default; any other server
        is asked for its models (local servers name them freely) and the first one is used.
        """
        if self._model:
            return self._model
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
            raise self.map_error(exc, model=None) from exc
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

        With `pace` (and read pacing on, on the fast path), what arrives before the consumer
        next shows text stays in the kernel and is read in one go then (read_pacing.py).
        """
        # Whoever opens the response closes it: the exit stack does so on completion, on error,
        # and when the consumer stops early (Stop pressed, a guardrail fired, the task was
        # cancelled). Closing a response that is still streaming drops the connection, which
        # tells the provider to stop generating and billing.
        async with contextlib.AsyncExitStack() as stack:
            fast = self._fast
            ended = _Ending()
            if fast is not None:
                response = await self._open(stack, request, self._fast_post)
                parser = ChunkParser()
                ended.parser = parser
                deltas = fast.read_deltas(
                    response, parser, pace=pace, read_pacing=self._read_pacing
                )
            else:
                sdk_stream = await self._open(stack, request, self._sdk_stream)
                deltas = _sdk_deltas(sdk_stream, ended)
            # The generator is closed here too, so its own `finally` (a read hold) runs first.
            stack.push_async_callback(deltas.aclose)
            try:
                async for delta in deltas:
                    yield delta
            # The SDK's stream reports the same transport failures as its own errors.
            except (httpx2.TimeoutException, openai.APITimeoutError) as exc:
                if not _really_timed_out(exc):
                    raise StreamBroken(
                        "The connection to the provider was lost in the middle of the answer.",
                        detail=repr(exc),
                    ) from exc
                raise StreamBroken(
                    "The provider stopped sending the answer (nothing arrived for "
                    f"{self._request_timeout_s:g} s), so it stopped here.",
                    cause="stalled",
                    detail=repr(exc),
                ) from exc
            except (httpx2.TransportError, httpx2.StreamError, openai.APIConnectionError) as exc:
                raise StreamBroken(
                    "The connection to the provider was lost in the middle of the answer.",
                    detail=repr(exc),
                ) from exc
        if not ended.complete():
            raise StreamBroken(
                "The connection to the provider ended before the answer was complete.",
                cause="ended_early",
                detail="stream ended without finish_reason or [DONE]",
            )

    async def _open(
        self,
        stack: contextlib.AsyncExitStack,
        request: ChatRequest,
        post: Callable[[dict[str, Any], dict[str, str]], AbstractAsyncContextManager[Any]],
    ) -> Any:
        """Send the request with `post`; return the response once its status says the stream
        started (its context entered on `stack`)."""
        body = request.as_kwargs()
        extra_headers = body.pop("extra_headers", {})
        if not body["model"]:
            body["model"] = await self.default_model()
        body["stream"] = True
        if self._send_stream_options:
            body["stream_options"] = {"include_usage": True}
        try:
            try:
                return await self._post_on_live_connection(stack, post, body, extra_headers)
            except openai.BadRequestError as exc:
                if "stream_options" not in body or "stream_options" not in str(exc.message):
                    raise
                log.info("provider rejects stream_options; retrying without usage reporting")
                self._send_stream_options = False
                del body["stream_options"]
                return await self._post_on_live_connection(stack, post, body, extra_headers)
        except openai.APIError as exc:
            raise self.map_error(exc, model=body["model"]) from exc

    async def _post_on_live_connection(
        self,
        stack: contextlib.AsyncExitStack,
        post: Callable[[dict[str, Any], dict[str, str]], AbstractAsyncContextManager[Any]],
        body: dict[str, Any],
        extra_headers: dict[str, str],
    ) -> Any:
        """Post the request; once more at once if the pooled connection it was given turned
        out closed before anything was written to it.

        A server closes an idle keep-alive connection when its own idle limit passes (5 s for
        uvicorn, under vLLM and many other servers), and a request that picks the connection
        from the pool in that instant finds it closing. The provider has seen nothing of such
        a request, so sending it again on a new connection is safe, and it is not the
        provider's failure: no retry of STREAM_RETRIES is spent on it, and no backoff.
        """
        try:
            return await stack.enter_async_context(post(body, extra_headers))
        except openai.APIConnectionError as exc:
            if not _never_sent(exc):
                raise
            log.info("the pooled connection to the provider had closed; sending again")
        return await stack.enter_async_context(post(body, extra_headers))

    def _fast_post(
        self, body: dict[str, Any], extra_headers: dict[str, str]
    ) -> AbstractAsyncContextManager[Any]:
        assert self._fast is not None
        return self._fast.post_streaming(self.client, body, extra_headers)

    @contextlib.asynccontextmanager
    async def _sdk_stream(
        self, body: dict[str, Any], extra_headers: dict[str, str]
    ) -> AsyncIterator[openai.AsyncStream[ChatCompletionChunk]]:
        """The SDK's own typed stream (its public API), closed on leaving."""
        stream = await self.client.chat.completions.create(
            **body, extra_headers=extra_headers or None
        )
        async with stream:  # closes the HTTP response, also when the consumer stops early
            yield stream

    async def complete(self, request: ChatRequest) -> tuple[str, str | None, Usage | None, str]:
        """One non-streamed answer: (text, finish_reason, usage, thinking). For comparisons
        with streaming."""
        kwargs = request.as_kwargs()
        if not kwargs["model"]:
            kwargs["model"] = await self.default_model()
        try:
            completion = await self.client.chat.completions.create(**kwargs, stream=False)
        except openai.APIError as exc:
            raise self.map_error(exc, model=kwargs["model"]) from exc
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "") if choice else ""
        extra = choice.message.model_extra if choice else None
        usage = completion.usage
        details = usage.completion_tokens_details if usage else None
        return (
            text,
            choice.finish_reason if choice else None,
            Usage(
                usage.prompt_tokens,
                usage.completion_tokens,
                (details.reasoning_tokens or 0) if details else 0,
            )
            if usage
            else None,
            thinking_of(extra) if extra else "",
        )

    def map_error(self, exc: openai.APIError, *, model: str | None) -> ProviderError:
        """Translate an SDK error into a short message a person can act on."""
        detail = f"{type(exc).__name__}: {exc.message}"
        if (cause := _root_cause(exc)) is not exc:
            # What the transport reported: the SDK calls every aiohttp failure a timeout, so a
            # refused connection is logged as what it is, not as "Request timed out".
            caused = f"{type(cause).__name__}{f': {cause}' if str(cause) else ''}"
            if isinstance(exc, openai.APITimeoutError) and not _really_timed_out(exc):
                detail = f"{caused} (the SDK reported it as {type(exc).__name__})"
            else:
                detail += f" ({caused})"
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
                "Choose another model, or set OPENAI_MODEL.",
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
        if status in (408, 409):
            # A request timeout or a conflict with another request: worth the same request
            # again (STREAM_RETRIES), as the SDK and OpenAI's guidance treat them.
            return ProviderUnavailable(
                f"The model provider at {where} could not take the request just now ({status}). "
                "Try again in a moment.",
                status=status,
                detail=detail,
            )
        if status >= 500:
            return ProviderUnavailable(
                f"The model provider at {where} had an error ({status}). Try again in a moment.",
                status=status,
                detail=detail,
            )
        said = _provider_message(exc.body)
        return BadRequest(
            f"The model provider refused the request ({status})"
            + (f': "{said}". ' if said else ". ")
            + "Check the model and settings, then try again.",
            status=status,
            detail=detail,
        )


def _provider_message(body: object, limit: int = 300) -> str | None:
    """The provider's own words from an error body (OpenAI's `{"error": {"message"}}`, or the
    plain text a proxy sends), fit to show a person: secrets redacted, on one line, bounded.
    None when there is nothing readable (no body, an HTML page)."""
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or message.lstrip().startswith("<"):
        return None
    text = " ".join(redact_secrets(message).split())
    return (text[: limit - 1] + "…" if len(text) > limit else text) or None


class _Ending:
    """How a stream ended: complete once `[DONE]` or a finish reason came."""

    __slots__ = ("finish_reason", "parser")

    def __init__(self) -> None:
        self.parser: ChunkParser | None = None
        self.finish_reason: str | None = None

    def complete(self) -> bool:
        parser = self.parser
        if parser is not None:
            return parser.done or parser.finish_reason is not None
        return self.finish_reason is not None


_MALFORMED = (
    "The provider sent a piece of the answer that could not be read, so the answer stopped here."
)


async def _sdk_deltas(
    stream: openai.AsyncStream[ChatCompletionChunk], ended: _Ending
) -> AsyncGenerator[Delta, None]:
    """The SDK's typed chunks as Deltas, and its mid-stream failures as ours (as the fast
    path's parser reports them)."""
    index = 0
    chunks = stream.__aiter__()
    while True:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except json.JSONDecodeError as exc:
            raise StreamBroken(
                _MALFORMED, cause="malformed", detail=f"malformed chunk: {exc}"
            ) from exc
        except openai.APIConnectionError:
            raise  # the connection failed: mapped where the fast path's failures are
        except openai.APIError as exc:  # an error event in the stream
            raise StreamBroken(
                "The provider reported an error in the middle of the answer, so it stopped here.",
                cause="error_event",
                detail=f"error event: {exc.message}",
            ) from exc
        if not isinstance(chunk, ChatCompletionChunk):
            raise StreamBroken(
                _MALFORMED, cause="malformed", detail=f"chunk is not an object: {chunk!r:.200}"
            )
        delta = _delta_of(chunk, index)
        if delta.finish_reason is not None:
            ended.finish_reason = delta.finish_reason
        index += 1
        yield delta


def _delta_of(chunk: ChatCompletionChunk, index: int) -> Delta:
    """A typed chunk as a Delta, read defensively (empty `choices`, None content, usage-only)."""
    text = reasoning = ""
    finish_reason = None
    for choice in chunk.choices or ():
        # We ask for one choice; some servers still number it. Ignore others defensively.
        if choice.index != 0:
            continue
        content = choice.delta.content if choice.delta is not None else None
        if isinstance(content, str):
            text = content
        if choice.delta is not None and choice.delta.model_extra:
            # Thinking is not in the SDK's types: servers send it as extra fields.
            reasoning = thinking_of(choice.delta.model_extra)
        if choice.finish_reason:
            finish_reason = str(choice.finish_reason)
    reported = chunk.usage
    usage = None
    if reported:
        details = reported.completion_tokens_details
        usage = Usage(
            reported.prompt_tokens or 0,
            reported.completion_tokens or 0,
            (details.reasoning_tokens or 0) if details else 0,
        )
    return Delta(
        text=text,
        index=index,
        finish_reason=finish_reason,
        usage=usage,
        raw=chunk.to_json(indent=None),
        reasoning=reasoning,
    )


def _fast_stream() -> ModuleType | None:
    """speedups/fast_stream.py, or None when it cannot run with this SDK (logged once, by
    `streamchat.speedups.status()` at startup)."""
    from streamchat.speedups import fast_stream_module

    return fast_stream_module()


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
        text, finish_reason, usage, thinking = await self.provider.complete(request)
        yield Delta(
            text=text,
            index=0,
            finish_reason=finish_reason or "stop",
            usage=usage,
            reasoning=thinking,
        )


def split_credentials(url: str | None) -> tuple[str | None, str | None]:
    """`url` without its user info, and that user info as a basic `Authorization` value (None
    when the URL has none)."""
    if url is None:
        return None, None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urlunsplit(
        (parts.scheme, host, parts.path, parts.query, parts.fragment)
    ), f"Basic {token}"
