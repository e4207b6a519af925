"""The offline demo model, checked with the official openai SDK over real loopback HTTP."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamchat.offline import MODEL_ID, OfflineServer, choose_answer
from streamchat.offline.faults import FaultSyntaxError, parse_fault
from streamchat.offline.lessons import DEMO_NOTICE, GUARDRAIL_DEMO_KINDS, lessons
from streamchat.offline.tokens import count_tokens, tokenize
from tests.harness import REPO, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def client(offline_server):
    return openai.AsyncOpenAI(base_url=offline_server.base_url, api_key="unused", max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_sdk_parses_the_stream_role_first_then_text_finish_and_usage(client):
    messages = ask("What is a token?")
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choose_answer(messages)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens(text)
    assert chunks[-1].usage.prompt_tokens == count_tokens("What is a token?")


async def test_non_streamed_answer_and_model_list(client):
    messages = ask("What is SSE?")
    completion = await client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert completion.choices[0].message.content == choose_answer(messages)
    assert completion.usage is not None and completion.usage.total_tokens > 0
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


async def test_max_tokens_cuts_with_finish_reason_length(client):
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=ask("What is a token?"), stream=True, max_tokens=5
    )
    chunks = [c async for c in stream]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-nope", messages=ask("hi"))


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_value"),
        (
            {"tools": [{"type": "custom", "custom": {"name": "f"}}]},
            "tools[0].type",
            "unsupported_value",
        ),
        (
            {"tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
            "invalid_value",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"functions": [{"name": "calculate"}]}, "functions", "unsupported_parameter"),
        (
            {"messages": [*ask("1+1?"), {"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages[1].tool_calls[0]",
            "invalid_type",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "calculate"}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
            },
            "tool_choice",
            "invalid_value",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "weather"}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
            },
            "tool_choice",
            "unsupported_value",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": 1},
            "parallel_tool_calls",
            "invalid_type",
        ),
        (
            {"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "4"}]},
            "messages[0].tool_call_id",
            "invalid_value",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format", None),
        ({"temperature": 5}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"max_tokens": -1}, "max_tokens", "invalid_value"),
        ({"max_tokens": "abc"}, "max_tokens", "invalid_type"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "invalid_value"),
        ({"model": None}, "model", "missing_required_parameter"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ],
)
async def test_what_the_demo_model_cannot_do_is_a_400_naming_the_parameter(
    offline_server, change, param, code
):
    body = {"model": MODEL_ID, "messages": ask("What is a token?"), **change}
    body = {k: v for k, v in body.items() if v is not None}
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(f"{offline_server.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["code"] == (code or "unsupported_parameter")
    assert error["message"]


async def test_stop_ends_the_answer_before_the_first_stop_sequence(client):
    messages = ask("What is a token?")
    whole = choose_answer(messages)
    stop = whole.split()[5]
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=messages, stream=True, stop=[stop, "no such text"]
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole[: whole.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    completion = await client.chat.completions.create(model=MODEL_ID, messages=messages, stop=stop)
    assert completion.choices[0].message.content == text


async def test_completions_carry_the_time_they_were_made(client):
    before = int(time.time())
    completion = await client.chat.completions.create(model=MODEL_ID, messages=ask("hi"))
    assert before <= completion.created <= int(time.time())


async def test_unknown_routes_and_wrong_methods_answer_in_json(offline_server):
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.get(f"{offline_server.base_url}/nope")
        wrong = await http.get(f"{offline_server.base_url}/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


async def test_a_model_is_described_only_with_the_right_key():
    with OfflineServer(api_key="right-key", tokens_per_second=500) as guarded:
        async with httpx2.AsyncClient(timeout=10) as http:
            url = f"{guarded.base_url}/models/{MODEL_ID}"
            assert (await http.get(url)).status_code == 401
            wrong = await http.get(url, headers={"Authorization": "Bearer wrong-key"})
            assert wrong.status_code == 401
            right = await http.get(url, headers={"Authorization": "Bearer right-key"})
            assert right.status_code == 200 and right.json()["id"] == MODEL_ID


async def test_wrong_key_is_a_401_that_does_not_echo_the_key():
    with OfflineServer(api_key="right-key", tokens_per_second=500) as guarded:
        client = openai.AsyncOpenAI(base_url=guarded.base_url, api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(model=MODEL_ID, messages=ask("hi"))
        assert "wrong-key" not in str(info.value.body) and "right-key" not in str(info.value.body)


async def test_rate_limit_fault_sends_retry_after(client):
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model=MODEL_ID, messages=ask("hi [fault: 429 retry_after=7]")
        )
    assert info.value.response.headers["retry-after"] == "7"


async def test_drop_fault_breaks_the_connection_mid_stream(client, offline_server):
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=ask("What is a token? [fault: drop after=5]"), stream=True
    )
    received = 0
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
    assert received == 5
    record = offline_server.records.last()
    assert record.tokens_sent == 5 and not record.completed


async def test_client_closing_the_stream_is_seen_within_a_second(client, offline_server):
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=ask("Explain backpressure"), stream=True
    )
    count = 0
    async for _ in stream:
        count += 1
        if count == 3:
            break
    await stream.close()
    record = offline_server.records.last()
    assert await asyncio.to_thread(record.ended.wait, 1.0)
    assert record.client_disconnected and record.tokens_sent < 20


async def test_stalled_stream_notices_the_client_leaving(client, offline_server):
    stream = await client.chat.completions.create(
        model=MODEL_ID, messages=ask("What is SSE? [fault: stall after=2]"), stream=True
    )
    got = 0
    async for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got == 2:
            break
    await stream.close()
    record = offline_server.records.last()
    assert await asyncio.to_thread(record.ended.wait, 1.0) and record.client_disconnected


async def test_times_fails_only_the_first_requests(client):
    messages = ask(f"What is a token? [fault: 500 times=1] {time.time()}")
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL_ID, messages=messages)
    completion = await client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert completion.choices[0].message.content


async def test_malformed_fault_sends_a_chunk_that_is_not_json(offline_server):
    import httpx2

    body = {"model": MODEL_ID, "stream": True, "messages": ask("hi [fault: malformed after=2]")}
    async with (
        httpx2.AsyncClient() as http,
        http.stream("POST", f"{offline_server.base_url}/chat/completions", json=body) as resp,
    ):
        lines = [line async for line in resp.aiter_lines() if line.startswith("data:")]
    assert any("{not json" in line for line in lines)
    assert lines[-1] == "data: [DONE]"


async def test_bad_directive_is_a_400_naming_the_problem(client):
    with pytest.raises(openai.BadRequestError, match="unknown fault kind"):
        await client.chat.completions.create(model=MODEL_ID, messages=ask("[fault: explode]"))


def test_fault_grammar():
    fault = parse_fault("stall after=3 seconds=1.5 times=2")
    assert (fault.kind, fault.after, fault.seconds, fault.times) == ("stall", 3, 1.5, 2)
    for bad in ("drop after=x", "429 after=3", "drop after=-1", ""):
        with pytest.raises(FaultSyntaxError):
            parse_fault(bad)


def test_run_alone_and_stop_with_ctrl_c():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamchat.offline", "--port", str(port), "--tps", "500"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}/v1" in line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        answer = client.chat.completions.create(model=MODEL_ID, messages=ask("hello"))
        assert "offline demo model" in (answer.choices[0].message.content or "")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@given(st.text(max_size=300))
def test_tokens_join_back_to_the_text_exactly(text):
    assert "".join(tokenize(text)) == text
    assert all(tokens for tokens in tokenize(text))


def test_words_keep_their_space_and_long_words_split():
    assert tokenize("Hi, streaming!") == ["Hi", ",", " strea", "ming", "!"]


def test_first_answer_says_it_is_a_demo_model_and_later_ones_do_not():
    first = choose_answer(ask("What is a token?"))
    assert first.startswith(DEMO_NOTICE)
    later = choose_answer(
        [*ask("hi"), {"role": "assistant", "content": "hello"}, *ask("What is a token?")]
    )
    assert not later.startswith(DEMO_NOTICE) and "token" in later


@pytest.mark.parametrize(
    ("question", "title"),
    [
        ("What is a token?", "What is a token?"),
        ("what does stream=True do", "What does stream=True do?"),
        ("why does time to first token matter?", "Time to first token and tokens per second"),
        ("SSE or websockets?", "SSE or WebSocket?"),
        ("how does backpressure work", "Buffering and backpressure"),
        ("how do guardrails work", "Guardrails on a stream"),
        ("what happens on a 429 or a dropped connection?", "Error handling and resume"),
        ("how do I deploy this behind nginx?", "Streaming in production"),
        ("how does a tool call stream?", "Agents and tool calls: arguments arrive piece by piece"),
    ],
)
def test_lessons_are_chosen_by_relevance(question, title):
    assert f"## {title}" in choose_answer(ask(question))


def test_unknown_questions_get_the_list_of_topics():
    answer = choose_answer(ask("What is the capital of France?"))
    assert "scripted demo model" in answer
    assert all(lesson.title in answer for lesson in lessons())


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("email", "jane.doe@example.com"),
        ("card", "4111 1111 1111 1111"),
        ("phone", "+1 415 555 0123"),
        ("api key", "sk-proj-"),
        ("blocked word", "darn"),
        ("moderation", "you worthless fool"),
    ],
)
def test_guardrail_demos_put_the_value_in_the_middle(kind, value):
    answer = choose_answer(ask(f"show me a guardrail demo with a {kind}"))
    position = answer.index(value)
    assert 50 < position < len(answer) - 100
    assert len(GUARDRAIL_DEMO_KINDS) == 6


def check_continuation(question: list[dict[str, object]], cut: int) -> list[dict[str, object]]:
    """Ask to continue the answer to `question` cut after `cut` characters; check the
    continuation repeats a few words, then goes on to the intended end. Returns the follow-up."""
    intended = choose_answer(question)
    partial = intended[:cut]
    follow_up = [
        *question,
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Your previous answer was cut off. Continue it exactly."},
    ]
    continuation = choose_answer(follow_up)
    assert intended.endswith(continuation)
    repeated = len(continuation) - (len(intended) - len(partial))
    assert 3 <= repeated < 60, "starts by repeating the last few words"
    return follow_up


def test_continuation_repeats_a_few_words_then_goes_on():
    check_continuation(ask("What is a token?"), 200)
