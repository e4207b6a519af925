"""The provider: cheap SSE parsing of every chunk shape, and SDK errors mapped to messages a
person can act on, without ever showing the key. Faked at the HTTP transport (httpx2, the
library the installed openai SDK runs on). Streaming and errors are checked on both paths: the
fast one (speedups/fast_stream.py) and the SDK's own public stream (STREAM_SPEEDUPS=off)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamchat.core.errors import (
    AuthenticationFailed,
    BadRequest,
    ModelNotFound,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StreamBroken,
)
from streamchat.core.parser import ChunkParser, LineSplitter
from streamchat.core.provider import Provider
from streamchat.core.types import ChatMessage, ChatRequest
from streamchat.settings import Settings
from streamchat.speedups.fast_stream import aiohttp_response

SECRET = "sk-proj-THISISNOTAREALKEYbutlookslikeone1234567890"


def chunk(content=None, *, role=None, finish=None, usage=None, choices=True, **extra):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        **extra,
    }
    body["choices"] = (
        [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []
    )
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def sse(*events: str) -> bytes:
    return "".join(events).encode()


class RecordingStream(httpx2.AsyncByteStream):
    """A response body sent in pieces; records whether the client closed it early."""

    def __init__(self, pieces: list[bytes], *, then_hang: bool = False) -> None:
        self.pieces = pieces
        self.then_hang = then_hang
        self.closed = asyncio.Event()

    async def __aiter__(self):
        for piece in self.pieces:
            yield piece
        if self.then_hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed.set()


PATHS = {"fast": "true", "public": "false"}  # STREAM_SPEEDUPS for each way of streaming


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> str:
    """The fast stream path, or the SDK's own public stream (speed-ups off)."""
    return str(request.param)


def provider_of(settings: Settings, **kwargs) -> Provider:
    """A Provider from the plain values it takes, as the Runtime builds one."""
    return Provider(
        api_key=settings.api_key,
        base_url=settings.base_url,
        model=settings.model,
        request_timeout_s=settings.request_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
        http_stack=settings.http_client,
        speedups=settings.speedups,
        read_pacing=settings.read_pacing,
        offline=settings.offline,
        **kwargs,
    )


def provider_with(handler, path: str = "fast", **settings_env) -> Provider:
    env = {
        "OPENAI_BASE_URL": "http://upstream.test/v1",
        "STREAM_RETRIES": "0",
        "STREAM_SPEEDUPS": PATHS[path],
        **settings_env,
    }
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    provider = provider_of(Settings.from_env(env), http_client=client)
    assert provider.fast is (path == "fast")
    return provider


def request(model="m") -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", "hi"),), model=model)


async def collect(provider, req=None):
    return [d async for d in provider.stream(req or request())]


def streaming_response(body: bytes | httpx2.AsyncByteStream) -> httpx2.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(body, bytes):
        return httpx2.Response(200, headers=headers, content=body)
    return httpx2.Response(200, headers=headers, stream=body)


# --- parsing ---------------------------------------------------------------------------------


def test_parser_handles_every_common_chunk_shape():
    parser = ChunkParser()
    lines = (
        sse(
            ": keep-alive comment\n\n",
            chunk("", role="assistant"),
            chunk("Hel"),
            "event: message\n" + chunk("lo", system_fingerprint="fp", service_tier="x"),
            chunk(None),  # content: null
            chunk(finish="stop"),
            chunk(choices=False, usage={"prompt_tokens": 3, "completion_tokens": 2}),
            "data: [DONE]\n\n",
        )
        .decode()
        .splitlines()
    )
    deltas = [d for line in lines if (d := parser.feed_line(line)) is not None]
    assert "".join(d.text for d in deltas) == "Hello"
    # One Delta per chunk (role-only and null-content ones too), none for comments or [DONE].
    assert [d.text for d in deltas] == ["", "Hel", "lo", "", "", ""]
    assert [d.finish_reason for d in deltas] == [None, None, None, None, "stop", None]
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 2
    assert [d.index for d in deltas] == [0, 1, 2, 3, 4, 5]
    assert '"role": "assistant"' in deltas[0].raw
    assert parser.done


def test_parser_fed_bytes_in_any_split_gives_the_same_deltas_as_line_by_line():
    body = sse(
        ": keep-alive comment\n\n",
        chunk("", role="assistant"),
        chunk("café 字 🙂"),
        chunk(finish="stop"),
        "data: [DONE]\n\n",
        chunk("after the end is not read"),
    )
    by_line = ChunkParser()
    expected = [
        (d.text, d.index, d.finish_reason)
        for line in body.decode().splitlines()
        if not by_line.done and (d := by_line.feed_line(line)) is not None
    ]
    assert [text for text, _, _ in expected] == ["", "café 字 🙂", ""]

    @given(st.lists(st.integers(min_value=1, max_value=40), max_size=60))
    def check(sizes: list[int]) -> None:
        parser, got, at = ChunkParser(), [], 0
        for size in [*sizes, len(body)]:
            read = parser.feed(body[at : at + size])
            # What one read brought says so: every Delta but its last has more to follow.
            assert [d.more for d in read] == [True] * (len(read) - 1) + [False] * bool(read)
            got += read
            at += size
        got += parser.finish()
        assert [(d.text, d.index, d.finish_reason) for d in got] == expected
        assert parser.done

    check()


def test_the_deltas_of_one_read_say_more_but_the_last():
    parser = ChunkParser()
    read = parser.feed(sse(chunk("a"), ": ping\n\n", chunk("b"), chunk(finish="stop")))
    assert [(d.text, d.more) for d in read] == [("a", True), ("b", True), ("", False)]
    assert [d.more for d in parser.feed(sse(chunk("c"), "data: [DONE]\n\n"))] == [False]


def test_text_before_an_unreadable_chunk_in_the_same_read_is_kept():
    parser = ChunkParser()
    deltas = parser.feed(sse(chunk("a"), chunk("b"), "data: {not json\n\n", chunk("c")))
    assert [d.text for d in deltas] == ["a", "b"] and parser.ended
    assert [d.more for d in deltas] == [True, False], "the last one handed over says so"
    with pytest.raises(StreamBroken, match="could not be read"):
        parser.finish()


async def test_stream_yields_the_text_before_an_unreadable_chunk_then_breaks(path):
    body = sse(chunk("a"), chunk("b"), "data: {not json\n\n", chunk("c"), "data: [DONE]\n\n")
    provider = provider_with(lambda request: streaming_response(body), path)
    texts = []
    with pytest.raises(StreamBroken, match="could not be read"):
        async for delta in provider.stream(request()):
            texts.append(delta.text)
    assert texts == ["a", "b"]


def test_parser_reads_a_last_event_without_a_line_end():
    parser = ChunkParser()
    assert parser.feed(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}') == []
    assert [d.text for d in parser.finish()] == ["x"]


def test_parser_accepts_data_without_space_and_crlf_framing():
    parser = ChunkParser()
    delta = parser.feed_line('data:{"choices":[{"index":0,"delta":{"content":"x"}}]}\r')
    assert delta is not None and delta.text == "x"


@pytest.mark.parametrize(
    "line", ["data: {not json", "data: [1, 2]", 'data: {"a": 1} {"b": 2}', "data: {", "data: 12x"]
)
def test_malformed_chunk_is_a_broken_stream_not_a_crash(line):
    with pytest.raises(StreamBroken, match="could not be read"):
        ChunkParser().feed_line(line)


def test_error_event_in_the_stream_is_reported():
    with pytest.raises(StreamBroken, match="reported an error"):
        ChunkParser().feed_line('data: {"error": {"message": "overloaded"}}')


# --- streaming over a transport ----------------------------------------------------------------


STREAM_BYTES = (
    b'data: {"a": "caf\xc3\xa9 \xe5\xad\x97 \xf0\x9f\x99\x82"}\n\n'  # multi-byte UTF-8
    b": keep-alive\r\n\r\n"  # CRLF
    b"data: cr only\r\rdata: last without a line end"  # CR
)
STREAM_LINES = [
    'data: {"a": "café 字 🙂"}',
    "",
    ": keep-alive",
    "",
    "data: cr only",
    "",
    "data: last without a line end",
]


def split_lines(data: bytes, sizes: list[int]) -> list[str]:
    splitter, lines, at = LineSplitter(), [], 0
    for size in sizes:
        lines += splitter.feed(data[at : at + size])
        at += size
    lines += splitter.feed(data[at:])
    return lines + splitter.finish()


@pytest.mark.parametrize("size", [1, 3, 97, len(STREAM_BYTES)])
def test_lines_are_the_same_however_the_bytes_arrive(size):
    sizes = [size] * (len(STREAM_BYTES) // size)
    assert split_lines(STREAM_BYTES, sizes) == STREAM_LINES


@given(st.lists(st.integers(min_value=0, max_value=12), max_size=40))
def test_lines_are_the_same_for_any_split_into_reads(sizes):
    assert split_lines(STREAM_BYTES, sizes) == STREAM_LINES


def test_a_crlf_split_between_reads_is_one_line_end():
    splitter = LineSplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\ndata: b\r") == ["data: a"]
    assert splitter.feed(b"data: c") == ["data: b"]
    assert splitter.finish() == ["data: c"]
    assert splitter.finish() == []


async def test_stream_yields_text_and_usage_and_asks_for_usage(path):
    seen = {}

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen["body"] = json.loads(req.content)
        return streaming_response(
            sse(
                chunk("", role="assistant"),
                chunk("a"),
                chunk("b"),
                chunk(finish="stop"),
                chunk(choices=False, usage={"prompt_tokens": 1, "completion_tokens": 2}),
                "data: [DONE]\n\n",
            )
        )

    deltas = await collect(provider_with(handler, path))
    assert "".join(d.text for d in deltas) == "ab"
    assert seen["body"]["stream"] is True
    assert seen["body"]["stream_options"] == {"include_usage": True}


async def test_the_request_is_the_one_the_sdks_typed_method_sends():
    """We post the body ourselves (the SDK's typed method would spend CPU walking it): the
    upstream must see exactly what `chat.completions.create` sends, headers included."""
    sent: list[httpx2.Request] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        sent.append(req)
        return streaming_response(sse(chunk("a"), chunk(finish="stop"), "data: [DONE]\n\n"))

    provider = provider_with(handler, OPENAI_API_KEY="sk-test-key")
    history = tuple(
        ChatMessage(role, text)
        for role, text in [
            ("system", "Be brief."),
            ("user", "hi"),
            ("assistant", "hello, 字 🙂"),
            ("user", "and now?"),
        ]
    )
    ours = ChatRequest(
        messages=history,
        model="m",
        temperature=0.3,
        max_tokens=50,
        extra_headers={"X-Request-Id": "r1"},
    )
    await collect(provider, ours)
    kwargs = ours.as_kwargs()
    async with provider.client.chat.completions.with_streaming_response.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    ) as response:
        await response.read()
    ours_sent, sdk_sent = sent
    assert json.loads(ours_sent.content) == json.loads(sdk_sent.content)
    assert ours_sent.url == sdk_sent.url and ours_sent.method == sdk_sent.method
    varying = {"x-stainless-retry-count", "x-stainless-read-timeout"}
    assert {k: v for k, v in ours_sent.headers.items() if k not in varying} == {
        k: v for k, v in sdk_sent.headers.items() if k not in varying
    }
    assert ours_sent.headers["authorization"] == "Bearer sk-test-key"
    assert ours_sent.headers["x-request-id"] == "r1"


async def test_servers_that_reject_stream_options_are_retried_without_them(path):
    bodies = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        body = json.loads(req.content)
        bodies.append(body)
        if "stream_options" in body:
            return httpx2.Response(
                400, json={"error": {"message": "Unrecognized request argument: stream_options"}}
            )
        return streaming_response(sse(chunk("ok"), chunk(finish="stop"), "data: [DONE]\n\n"))

    provider = provider_with(handler, path)
    assert "".join(d.text for d in await collect(provider)) == "ok"
    assert "".join(d.text for d in await collect(provider)) == "ok"
    assert ["stream_options" in b for b in bodies] == [True, False, False]


async def test_stream_that_ends_without_finish_or_done_is_broken(path):
    def handler(req):
        return streaming_response(sse(chunk("partial")))

    with pytest.raises(StreamBroken, match="ended before the answer was complete"):
        await collect(provider_with(handler, path))


async def test_dropped_connection_mid_stream_is_broken_and_keeps_yielded_text(path):
    class Dropping(httpx2.AsyncByteStream):
        async def __aiter__(self):
            yield sse(chunk("one "))
            raise httpx2.ReadError("connection reset")

    def handler(req):
        return streaming_response(Dropping())

    got = []
    with pytest.raises(StreamBroken, match="connection to the provider was lost"):
        async for delta in provider_with(handler, path).stream(request()):
            got.append(delta.text)
    assert got == ["one "]


async def test_closing_the_stream_early_closes_the_http_response(path):
    body = RecordingStream([sse(chunk("a")), sse(chunk("b"))], then_hang=True)

    def handler(req):
        return streaming_response(body)

    stream = provider_with(handler, path).stream(request())
    first = await anext(stream)
    assert first.text == "a"
    await stream.aclose()
    await asyncio.wait_for(body.closed.wait(), 1.0)


async def test_cancelling_the_consumer_closes_the_http_response(path):
    body = RecordingStream([sse(chunk("a"))], then_hang=True)

    def handler(req):
        return streaming_response(body)

    provider = provider_with(handler, path)
    started = asyncio.Event()

    async def consume():
        async for _ in provider.stream(request()):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(body.closed.wait(), 1.0)


def models_handler(calls: list[str], *, fail_first: int = 0):
    def handler(req: httpx2.Request) -> httpx2.Response:
        calls.append(req.url.path)
        if len(calls) <= fail_first:
            return httpx2.Response(503, json={"error": {"message": "warming up"}})
        return httpx2.Response(
            200,
            json={
                "object": "list",
                "data": [{"id": "llama3", "object": "model", "created": 0, "owned_by": "x"}],
            },
        )

    return handler


async def test_the_model_list_is_fetched_once_for_chats_that_start_together_and_then_reused():
    calls: list[str] = []
    provider = provider_with(models_handler(calls))
    together = await asyncio.gather(*(provider.list_models() for _ in range(5)))
    assert together == [["llama3"]] * 5
    assert await provider.list_models() == ["llama3"]
    assert calls == ["/v1/models"]


async def test_the_model_list_is_asked_again_once_it_is_old(monkeypatch):
    import streamchat.core.provider as providers

    calls: list[str] = []
    provider = provider_with(models_handler(calls))
    await provider.list_models()
    monkeypatch.setattr(providers, "MODEL_LIST_TTL_S", 0.0)
    await provider.list_models()
    assert len(calls) == 2


async def test_a_failed_model_list_is_not_remembered():
    calls: list[str] = []
    provider = provider_with(models_handler(calls, fail_first=1))
    with pytest.raises(ProviderUnavailable):
        await provider.list_models()
    assert await provider.list_models() == ["llama3"]
    assert len(calls) == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_model_list_for_the_others():
    release = asyncio.Event()
    calls: list[str] = []
    plain = models_handler(calls)

    async def slow(req: httpx2.Request) -> httpx2.Response:
        await release.wait()
        return plain(req)

    provider = provider_with(slow)
    impatient = asyncio.create_task(asyncio.wait_for(provider.list_models(), 0.01))
    patient = asyncio.create_task(provider.list_models())
    with pytest.raises(TimeoutError):
        await impatient
    release.set()
    assert await patient == ["llama3"]
    assert calls == ["/v1/models"]


async def test_empty_model_asks_the_server_for_its_models():
    seen = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        if req.url.path.endswith("/models"):
            return httpx2.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {"id": "zeta", "object": "model", "created": 0, "owned_by": "x"},
                        {"id": "llama3", "object": "model", "created": 0, "owned_by": "x"},
                    ],
                },
            )
        seen.append(json.loads(req.content)["model"])
        return streaming_response(sse(chunk("ok"), chunk(finish="stop")))

    await collect(provider_with(handler), request(model=""))
    assert seen == ["llama3"]


# --- error mapping -------------------------------------------------------------------------------


def error_response(status, message, headers=None):
    return httpx2.Response(
        status,
        headers=headers or {},
        json={"error": {"message": message, "type": "x", "code": None, "param": None}},
    )


@pytest.mark.parametrize(
    ("status", "error_type", "fragment"),
    [
        (401, AuthenticationFailed, "rejected the API key (401)"),
        (403, AuthenticationFailed, "not allowed"),
        (404, ModelNotFound, "model 'm' was not found"),
        (400, BadRequest, "refused the request (400)"),
        (500, ProviderUnavailable, "had an error (500)"),
        (503, ProviderUnavailable, "had an error (503)"),
        (408, ProviderUnavailable, "could not take the request just now (408)"),
        (409, ProviderUnavailable, "could not take the request just now (409)"),
    ],
)
async def test_http_errors_become_short_messages_without_the_key(
    path, status, error_type, fragment
):
    def handler(req):
        return error_response(status, f"Incorrect API key provided: {SECRET}")

    provider = provider_with(handler, path, OPENAI_API_KEY=SECRET)
    with pytest.raises(error_type) as info:
        await collect(provider)
    error = info.value
    assert fragment in error.user_message
    assert SECRET not in error.user_message
    assert SECRET not in error.detail
    assert "Traceback" not in error.user_message
    # What the resilience docs promise: 408, 409, 429 and 5xx are worth another try.
    assert error.retryable is (status in (408, 409) or status >= 500)


async def test_a_generic_400_shows_the_providers_own_words_without_secrets(path):
    said = f"Model 'gpt-x' is not served by this proxy\n(key {SECRET})"

    def handler(req):
        return error_response(400, said)

    with pytest.raises(BadRequest) as info:
        await collect(provider_with(handler, path, OPENAI_API_KEY=SECRET))
    message = info.value.user_message
    assert "refused the request (400)" in message
    assert "Model 'gpt-x' is not served by this proxy (key [redacted])" in message
    assert SECRET not in message and "\n" not in message


async def test_a_missing_model_does_not_point_to_one_face(path):
    with pytest.raises(ModelNotFound) as info:
        await collect(provider_with(lambda req: error_response(404, "no such model"), path))
    assert "chat settings" not in info.value.user_message
    assert "OPENAI_MODEL" in info.value.user_message


async def test_rate_limit_reports_retry_after(path):
    def handler(req):
        return error_response(429, "slow down", headers={"retry-after": "7"})

    with pytest.raises(RateLimited) as info:
        await collect(provider_with(handler, path))
    assert info.value.retry_after == 7
    assert "Wait 7 s" in info.value.user_message


async def test_unreachable_server_names_the_url_but_not_credentials(path):
    def handler(req):
        raise httpx2.ConnectError("connection refused")

    provider = provider_with(handler, path, OPENAI_BASE_URL="http://bob:pw@localhost:9/v1")
    with pytest.raises(ProviderUnreachable) as info:
        await collect(provider)
    assert "http://localhost:9/v1" in info.value.user_message
    assert "pw" not in info.value.user_message
    assert "OPENAI_BASE_URL" in info.value.user_message


# --- the real HTTP stacks (aiohttp by default, httpx2 on request) against the offline model ---


@pytest.fixture(params=["aiohttp", "httpx"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def real_provider(base_url: str, stack: str, path: str = "fast", **env: str) -> Provider:
    settings = Settings.from_env(
        {
            "OPENAI_BASE_URL": base_url,
            "OPENAI_HTTP_CLIENT": stack,
            "OPENAI_TIMEOUT_S": "1",
            "STREAM_SPEEDUPS": PATHS[path],
            **env,
        }
    )
    return provider_of(settings)


async def test_both_http_stacks_stream_the_same_answer(stack, path):
    from streamchat.offline import OfflineServer
    from streamchat.offline.lessons import choose_answer

    with OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, stack, path)
        try:
            deltas = await collect(provider, request(model=""))
        finally:
            await provider.aclose()
        text = "".join(d.text for d in deltas)
        assert text == choose_answer(server.records.last().messages)
        assert deltas[-1].usage is not None


async def test_the_public_path_yields_the_same_deltas_as_the_fast_path(stack):
    """With speed-ups off the SDK's typed stream is read instead of our parser: the same
    answer, Delta for Delta (text, finish reason, usage, the chunk's JSON), over real HTTP."""
    from streamchat.offline import OfflineServer

    answers = {}
    with OfflineServer(tokens_per_second=2000, first_token_delay_ms=1) as server:
        for path in PATHS:
            provider = real_provider(server.base_url, stack, path)
            try:
                answers[path] = await collect(provider, request(model=""))
            finally:
                await provider.aclose()
    fast, public = answers["fast"], answers["public"]
    assert len(fast) > 10 and not any(d.more for d in public)

    def shape(deltas):
        # Each answer has its own id and time; everything else in a chunk is the same.
        return [
            (
                d.text,
                d.index,
                d.finish_reason,
                d.usage,
                {**json.loads(d.raw), "id": "", "created": 0},
            )
            for d in deltas
        ]

    assert shape(public) == shape(fast)


async def test_an_error_event_in_the_stream_breaks_it_alike_on_both_paths(path):
    body = sse(chunk("a"), 'data: {"error": {"message": "overloaded"}}\n\n', "data: [DONE]\n\n")
    texts = []
    with pytest.raises(StreamBroken, match="reported an error") as info:
        async for delta in provider_with(lambda r: streaming_response(body), path).stream(
            request()
        ):
            texts.append(delta.text)
    assert texts == ["a"]
    assert info.value.cause == "error_event" and "overloaded" in info.value.detail


async def test_an_aiohttp_stream_is_read_from_aiohttps_body_directly(stack):
    """The installed SDK still carries aiohttp's response where the fast path looks for it:
    an SDK upgrade that moves it fails here instead of silently costing CPU."""
    import contextlib

    from streamchat.offline import OfflineServer

    with OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, stack)
        try:
            async with contextlib.AsyncExitStack() as exits:
                response = await provider._open(exits, request(model=""), provider._fast_post)
                raw = aiohttp_response(response)
                assert (raw is not None) == (stack == "aiohttp")
        finally:
            await provider.aclose()


async def test_both_http_stacks_tell_a_refused_connection_from_a_timeout(stack, path):
    from tests.harness import free_port

    provider = real_provider(f"http://127.0.0.1:{free_port()}/v1", stack, path)
    try:
        with pytest.raises(ProviderUnreachable) as info:
            await collect(provider)
    finally:
        await provider.aclose()
    assert "Could not reach the model provider" in info.value.user_message


@pytest.mark.parametrize(
    ("fault", "cause"), [("drop after=5", "dropped"), ("stall after=5", "stalled")]
)
async def test_both_http_stacks_tell_a_dropped_stream_from_a_stalled_one(stack, path, fault, cause):
    from streamchat.offline import OfflineServer

    with OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, stack, path)
        seen: list[str] = []
        try:
            with pytest.raises(StreamBroken) as info:
                async for delta in provider.stream(
                    ChatRequest(messages=(ChatMessage("user", f"hi [fault: {fault}]"),), model="")
                ):
                    seen.append(delta.text)
        finally:
            await provider.aclose()
        assert info.value.cause == cause
        assert "".join(seen), "the text before the break was yielded"


async def test_closing_a_real_stream_early_closes_the_upstream_request(stack, path):
    from streamchat.offline import OfflineServer

    with OfflineServer(tokens_per_second=50, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, stack, path)
        try:
            stream = provider.stream(request(model=""))
            async for delta in stream:
                if delta.text:
                    break
            await stream.aclose()
            record = server.records.last()
            assert await asyncio.to_thread(record.ended.wait, 2), "closed within 2 s"
            assert record.client_disconnected and not record.completed
        finally:
            await provider.aclose()


async def test_a_paced_stream_is_read_in_a_few_large_reads_and_its_connection_reused():
    import time

    from streamchat.offline import OfflineServer
    from streamchat.offline.lessons import choose_answer
    from streamchat.speedups.read_pacing import supported
    from tests.conftest import require_component

    require_component(supported(), "a Linux kernel 4.18+ with SO_RCVLOWAT")
    asked: list[float] = []

    def pace() -> float:
        asked.append(time.monotonic())
        return time.monotonic() + 0.05  # the screen is next updated 50 ms from now

    with OfflineServer(tokens_per_second=400, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, "aiohttp")
        try:
            deltas = [d async for d in provider.stream(request(model=""), pace=pace)]
            # The connection went back to the pool unheld: the next answer streams as usual.
            again = [d async for d in provider.stream(request(model=""))]
        finally:
            await provider.aclose()
    text = "".join(d.text for d in deltas)
    assert text == choose_answer(server.records.last().messages)
    assert "".join(d.text for d in again) == text
    content = sum(1 for d in deltas if d.text)
    reads = sum(1 for d in deltas if not d.more)
    assert content > 100 and reads <= content / 4, "chunks that came while held: read together"
    assert asked, "the provider asked when to read next"


async def test_read_pacing_switched_off_reads_every_chunk_as_it_comes():
    from streamchat.offline import OfflineServer

    asked: list[float] = []

    def pace() -> float | None:
        asked.append(1.0)
        return None

    with OfflineServer(tokens_per_second=2000, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, "aiohttp", STREAM_READ_PACING="false")
        try:
            deltas = [d async for d in provider.stream(request(model=""), pace=pace)]
        finally:
            await provider.aclose()
    assert deltas and asked == [], "never asked when to read: reads as data arrives"


def close_before_writing(monkeypatch, times: int) -> list[object]:
    """Close the connection of the next `times` requests just before aiohttp writes them, as
    when a server's close of an idle keep-alive connection is read in that instant."""
    from aiohttp.client_reqrep import ClientRequest

    real_write = ClientRequest.write_bytes
    closed: list[object] = []

    async def write_after_close(self, writer, conn, *args):  # type: ignore[no-untyped-def]
        if len(closed) < times:
            closed.append(conn)
            conn.transport.close()
        return await real_write(self, writer, conn, *args)

    monkeypatch.setattr(ClientRequest, "write_bytes", write_after_close)
    return closed


async def test_a_pooled_connection_found_closing_is_replaced_without_spending_a_retry(
    monkeypatch,
):
    """A server closes an idle keep-alive connection (uvicorn after 5 s) just as the next
    request is written to it: nothing was sent, so the request goes again at once on a new
    connection, with STREAM_RETRIES=0, and the provider sees it once."""
    from streamchat.offline import OfflineServer
    from streamchat.offline.lessons import choose_answer

    with OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, "aiohttp", STREAM_RETRIES="0")
        try:
            first = "".join([d.text async for d in provider.stream(request(model=""))])
            closed = close_before_writing(monkeypatch, times=1)
            again = "".join([d.text async for d in provider.stream(request(model=""))])
        finally:
            await provider.aclose()
        assert closed, "the second request found its connection closing"
        assert again == first == choose_answer(server.records.last().messages)
        assert len(server.records.all()) == 2, "the provider saw each request once"


async def test_a_connection_that_keeps_closing_is_reported_with_what_the_transport_said(
    monkeypatch,
):
    from streamchat.offline import OfflineServer

    with OfflineServer(tokens_per_second=500, first_token_delay_ms=5) as server:
        provider = real_provider(server.base_url, "aiohttp", STREAM_RETRIES="0")
        closed = close_before_writing(monkeypatch, times=10)
        try:
            with pytest.raises(ProviderUnreachable) as info:
                await collect(provider, request(model=""))
        finally:
            await provider.aclose()
        assert len(closed) == 2, "sent once more at once, then given up"
        assert server.records.all() == []
    assert "Could not reach the model provider" in info.value.user_message
    assert "Cannot write to closing transport" in info.value.detail


async def test_a_connection_idle_for_longer_than_the_pool_keeps_one_is_not_used_again(
    monkeypatch,
):
    """The pool lets an idle connection go before the provider's server would close it, so a
    request never picks one the server is closing in that instant; one in use again at once
    is reused."""
    import aiohttp

    from streamchat.core import provider as providers
    from streamchat.offline import OfflineServer

    opened: list[object] = []
    real_create = aiohttp.TCPConnector._create_connection

    async def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(self)
        return await real_create(self, *args, **kwargs)

    # The pool's clock, moved on by hand: how long a connection sat idle is then exact, however
    # busy the machine (aiohttp stamps a released connection and checks its age with this clock).
    skipped = 0.0
    monkeypatch.setattr(aiohttp.connector, "monotonic", lambda: time.monotonic() + skipped)
    monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", counted)
    with OfflineServer(tokens_per_second=1000, first_token_delay_ms=1) as server:
        provider = real_provider(server.base_url, "aiohttp")
        try:
            answers = [await collect(provider, request(model="")) for _ in range(2)]
            assert len(opened) == 1, "back to back: the same connection"
            skipped = providers.POOL_IDLE_S + 1  # idle for longer than the pool keeps one
            answers.append(await collect(provider, request(model="")))
        finally:
            await provider.aclose()
    assert len(opened) == 2, "after the pause: a new connection"
    assert len(server.records.all()) == 3 and all(answers)


def test_the_pool_lets_connections_go_before_uvicorn_closes_them():
    """uvicorn (under vLLM, the offline model and many others) closes a keep-alive connection
    after `timeout_keep_alive` idle seconds; the pool must not keep it as long."""
    import uvicorn

    from streamchat.core.provider import POOL_IDLE_S

    assert 0 < POOL_IDLE_S < uvicorn.Config(app=None).timeout_keep_alive


def sdk_events(data: bytes) -> list[dict]:
    """What the openai SDK's own decoder (the reference) makes of a stream's bytes: the JSON of
    each event's data, up to [DONE]."""
    from openai._streaming import SSEDecoder  # a test reference only; the app does not use it

    events = []
    for event in SSEDecoder().iter_bytes(iter([data])):
        if event.data.startswith("[DONE]"):
            break
        if event.data:
            events.append(json.loads(event.data))
    return events


SPEC_STREAM = (
    b": a comment the server sends to keep the connection open\n"
    b"retry: 3000\n"
    b"id: 1\n"
    b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n'
    b"\n"
    b"event: message\n"
    b'data: {"choices": [{"index": 0,\n'
    b'data:  "delta": {"content": "lo,\\nworld"}}]}\n'
    b"\n"
    b'data:{"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}\r\n'
    b"\r\n"
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 3, 7, 97, len(SPEC_STREAM)])
def test_the_parser_reads_an_sse_stream_as_the_sdks_decoder_does(size):
    parser = ChunkParser()
    deltas = []
    for start in range(0, len(SPEC_STREAM), size):
        deltas += parser.feed(SPEC_STREAM[start : start + size])
    deltas += parser.finish()
    reference = sdk_events(SPEC_STREAM)
    assert [json.loads(d.raw) for d in deltas] == reference
    assert "".join(d.text for d in deltas) == "Hello,\nworld!"
    assert parser.done and deltas[-1].finish_reason == "stop"


def test_an_event_of_several_data_lines_that_never_ends_is_read_at_the_end_of_the_body():
    parser = ChunkParser()
    parser.feed(b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "x"}}]}\n')
    assert [d.text for d in parser.finish()] == ["x"]


def test_data_lines_that_join_into_no_json_break_the_stream_at_the_events_end():
    parser = ChunkParser()
    assert parser.feed(b'data: {"choices": [\ndata: oops\n') == []
    with pytest.raises(StreamBroken, match="could not be read"):
        parser.feed(b"\n")
