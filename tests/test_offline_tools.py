"""The offline demo model calls tools: which questions call which offered tool (pure), and over
real loopback HTTP the official openai SDK (raw chunks and its `stream()` helper) and the OpenAI
Agents SDK read its `delta.tool_calls` unchanged: ids, names, arguments split across chunks,
two calls in one turn, `finish_reason: tool_calls`, then a text answer from the results."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from streamchat.agent.tools import TOOLS, TOOLS_BY_NAME, calculate
from streamchat.classroom.tools import ChunkLog
from streamchat.core.types import Delta
from streamchat.languages import instruction
from streamchat.offline import MODEL_ID, OfflineServer, choose_answer
from streamchat.offline.toolcalls import (
    KNOWN_TOOLS,
    ToolRequestError,
    answer_from_results,
    plan_tool_calls,
)

ALL_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        },
    }
    for tool in TOOLS
]


def offer(*names: str) -> list[dict[str, Any]]:
    return [t for t in ALL_TOOLS if t["function"]["name"] in names] + [
        {"type": "function", "function": {"name": name}}
        for name in names
        if name not in KNOWN_TOOLS
    ]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def planned(question: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    body.setdefault("tools", ALL_TOOLS)
    return [(c.name, json.loads(c.arguments)) for c in plan_tool_calls(ask(question), body)]


# --- which question calls which tool (no server) ----------------------------------------------


@pytest.mark.parametrize(
    ("question", "calls"),
    [
        ("What is 17 * 23?", [("calculate", {"expression": "17 * 23"})]),
        ("what's (3 + 4) * 2 - 1?", [("calculate", {"expression": "(3 + 4) * 2 - 1"})]),
        ("What is -5 x 3?", [("calculate", {"expression": "-5 * 3"})]),
        ("17*23 kitna hai?", [("calculate", {"expression": "17*23"})]),
        ("What time is it?", [("current_time", {"timezone": "UTC"})]),
        (
            "What's the date today in Asia/Kolkata?",
            [("current_time", {"timezone": "Asia/Kolkata"})],
        ),
        ("Abhi kitne baje hain?", [("current_time", {"timezone": "UTC"})]),
        ("lessons mein backpressure dhoondo", [("search_lessons", {"query": "backpressure"})]),
        (
            "Search the lessons for time to first token",
            [("search_lessons", {"query": "time to first token"})],
        ),
        ("Find a lesson about backpressure.", [("search_lessons", {"query": "backpressure"})]),
        (
            "What is 2+2 and what time is it?",
            [("calculate", {"expression": "2+2"}), ("current_time", {"timezone": "UTC"})],
        ),
        ("What is a token?", []),
        ("Is 2024-01-01 a Monday?", []),
        ("What does HTTP/2 change for streaming?", []),
    ],
)
def test_questions_call_the_tools_they_ask_for(question, calls):
    assert planned(question) == calls


def test_only_offered_tools_are_called():
    assert planned("What is 2+2 and what time is it?", tools=offer("current_time")) == [
        ("current_time", {"timezone": "UTC"})
    ]
    assert planned("What is 17 * 23?", tools=offer("weather", "current_time")) == []
    assert planned("What is 17 * 23?", tools=[]) == []


def test_tool_choice_none_answers_in_text_and_a_named_function_is_called():
    assert planned("What is 17 * 23?", tool_choice="none") == []
    forced = {"type": "function", "function": {"name": "current_time"}}
    assert planned("What is 17 * 23?", tool_choice=forced) == [
        ("current_time", {"timezone": "UTC"})
    ]
    assert planned("What is a token?", tool_choice="required") == [
        ("search_lessons", {"query": "What is a token?"})
    ]


def test_required_with_no_tool_it_knows_is_refused():
    with pytest.raises(ToolRequestError, match="can only call"):
        planned("What is 17 * 23?", tools=offer("weather"), tool_choice="required")


def test_without_parallel_tool_calls_one_call_per_turn_until_all_are_made():
    body = {"tools": ALL_TOOLS, "parallel_tool_calls": False}
    messages = ask("What is 2+2 and what time is it?")
    [first] = plan_tool_calls(messages, body)
    assert first.name == "calculate"
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [first.as_message_part()]},
        {"role": "tool", "tool_call_id": first.id, "content": "4"},
    ]
    [second] = plan_tool_calls(messages, body)
    assert second.name == "current_time"
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [second.as_message_part()]},
        {"role": "tool", "tool_call_id": second.id, "content": "2026-03-01T12:00:00+00:00"},
    ]
    assert plan_tool_calls(messages, body) == []
    assert "2 + 2" not in (answer_from_results(messages) or "")  # answers the latest results
    assert "2026-03-01T12:00:00+00:00" in (answer_from_results(messages) or "")


def conversation(question: str, results: dict[str, str], **extra: Any) -> list[dict[str, Any]]:
    """The question, the model's calls for it, and a result for each call (by tool name)."""
    messages = ask(question)
    calls = plan_tool_calls(messages, {"tools": ALL_TOOLS})
    messages.append(
        {"role": "assistant", "content": None, "tool_calls": [c.as_message_part() for c in calls]}
    )
    messages += [
        {"role": "tool", "tool_call_id": call.id, "content": results[call.name]} for call in calls
    ]
    if extra.get("system"):
        messages.insert(0, {"role": "system", "content": extra["system"]})
    return messages


def test_the_answer_is_built_from_the_tool_results():
    answer = answer_from_results(conversation("What is 17 * 23?", {"calculate": "391"}))
    assert answer is not None and "17 × 23 = 391." in answer
    assert answer.startswith("*This is streamchat's offline demo model")


def test_a_failed_tool_is_said_plainly_not_guessed():
    for output in (
        "Error: Division by zero.",
        "An error occurred while running the tool. Please try again. Error: Division by zero.",
    ):
        answer = answer_from_results(conversation("What is 1/0?", {"calculate": output}))
        assert answer is not None
        assert "The `calculate` tool failed: Division by zero. So I cannot answer" in answer
        assert "1 ÷ 0 =" not in answer


def test_the_answer_from_results_follows_the_language():
    messages = conversation(
        "What time is it?",
        {"current_time": "2026-03-01T12:00:00+00:00 (Sunday, UTC)"},
        system=instruction("hinglish"),
    )
    answer = answer_from_results(messages)
    assert answer is not None
    assert "UTC mein abhi ki date aur waqt 2026-03-01T12:00:00+00:00 (Sunday, UTC) hai." in answer
    failed = conversation("17*23 kitna hai?", {"calculate": "Error: boom"})
    assert "`calculate` tool fail ho gaya: boom." in (answer_from_results(failed) or "")


def test_two_results_are_answered_in_the_order_of_the_calls():
    answer = answer_from_results(
        conversation(
            "What is 2+2 and what time is it?",
            {"calculate": "4", "current_time": "2026-03-01T12:00:00+00:00 (Sunday, UTC)"},
        )
    )
    assert answer is not None
    sum_at = answer.index("2 + 2 = 4.")
    assert sum_at < answer.index("The current date and time in UTC is 2026-03-01T12:00:00+00:00")


def test_messages_without_tool_results_get_no_answer_from_results():
    assert answer_from_results(ask("What is 17 * 23?")) is None


# --- over HTTP, read by the official SDKs -----------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=400, first_token_delay_ms=5) as offline:
        yield offline


@pytest.fixture
def client(server):
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


async def stream_chunks(client, messages, **options):
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=messages,
        tools=options.pop("tools", ALL_TOOLS),
        stream=True,
        stream_options={"include_usage": True},
        **options,
    )
    return [chunk async for chunk in stream]


def reassemble(chunks) -> dict[int, dict[str, str]]:
    """What a client rebuilds from the deltas: per index, id, type, name and arguments."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(piece.index, {"id": "", "type": "", "name": "", "args": ""})
            call["id"] += piece.id or ""
            call["type"] += piece.type or ""
            call["name"] += (piece.function and piece.function.name) or ""
            call["args"] += (piece.function and piece.function.arguments) or ""
    return calls


@pytest.mark.integration
async def test_the_sdk_reads_a_streamed_tool_call_split_across_chunks(client, server):
    chunks = await stream_chunks(client, ask("What is 17 * 23?"))
    calls = reassemble(chunks)
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["name"] == "calculate"
    assert json.loads(call["args"]) == {"expression": "17 * 23"}

    pieces = [
        c.choices[0].delta.tool_calls[0]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    first = pieces[0]
    assert first.id == call["id"] and first.function.name == "calculate"
    assert first.function.arguments == ""
    assert all(p.id is None and p.function.name is None for p in pieces[1:]), "named once"
    assert len(pieces) > 5, "the arguments arrive in several pieces"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)

    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(pieces)
    assert server.records.last().tokens_sent == len(pieces)


@pytest.mark.integration
async def test_two_tools_in_one_turn_are_indices_0_and_1(client):
    calls = reassemble(await stream_chunks(client, ask("What is 2+2 and what time is it?")))
    assert [calls[i]["name"] for i in sorted(calls)] == ["calculate", "current_time"]
    assert json.loads(calls[0]["args"]) == {"expression": "2+2"}
    assert json.loads(calls[1]["args"]) == {"timezone": "UTC"}
    assert calls[0]["id"] != calls[1]["id"]


@pytest.mark.integration
async def test_the_sdk_stream_helper_accumulates_the_tool_calls(client):
    deltas: list[str] = []
    async with client.chat.completions.stream(
        model=MODEL_ID, messages=ask("What is 2+2 and what time is it?"), tools=ALL_TOOLS
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                deltas.append(event.arguments_delta)
        completion = await stream.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("calculate", {"expression": "2+2"}),
        ("current_time", {"timezone": "UTC"}),
    ]
    assert "".join(deltas) == "".join(c.function.arguments for c in calls)
    assert len(deltas) > 2 * len(calls)


@pytest.mark.integration
async def test_results_sent_back_get_a_streamed_text_answer(client):
    messages = ask("What is 17 * 23?")
    calls = reassemble(await stream_chunks(client, messages))
    call = calls[0]
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["args"]},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": TOOLS_BY_NAME[call["name"]].run(**json.loads(call["args"])),
        },
    ]
    chunks = await stream_chunks(client, messages)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "17 × 23 = 391." in text
    assert text == answer_from_results(messages)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert not reassemble(chunks), "no further call once the results are in"


@pytest.mark.integration
async def test_non_streamed_requests_return_message_tool_calls(client):
    completion = await client.chat.completions.create(
        model=MODEL_ID, messages=ask("Search the lessons for backpressure"), tools=ALL_TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "search_lessons"
    assert json.loads(call.function.arguments) == {"query": "backpressure"}


@pytest.mark.integration
async def test_a_question_no_offered_tool_answers_is_answered_in_text_as_before(client):
    messages = ask("What is a token?")
    chunks = await stream_chunks(client, messages, tools=offer("weather"))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        choose_answer(messages)
    )
    assert not reassemble(chunks)


@pytest.mark.integration
async def test_max_tokens_cuts_a_tool_call_with_finish_reason_length(client):
    chunks = await stream_chunks(client, ask("What is 17 * 23?"), max_tokens=4)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    assert reassemble(chunks)[0]["args"] == '{"expre'


@pytest.mark.integration
async def test_a_model_without_tool_support_answers_400_naming_itself(server):
    body = {
        "model": MODEL_ID,
        "messages": ask("What is 17 * 23? [fault: no_tools]"),
        "tools": ALL_TOOLS,
    }
    async with httpx2.AsyncClient(timeout=10) as http:
        refused = await http.post(f"{server.base_url}/chat/completions", json=body)
        del body["tools"]
        plain = await http.post(f"{server.base_url}/chat/completions", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": f"tools is not supported by model {MODEL_ID}",
        "type": "invalid_request_error",
        "param": "tools",
        "code": "unsupported_parameter",
    }
    assert plain.status_code == 200, "without tools the same model answers"


@pytest.mark.integration
async def test_a_drop_fault_can_break_a_tool_call_midway(client):
    with pytest.raises(openai.APIConnectionError):
        await stream_chunks(client, ask("What is 17 * 23? [fault: drop after=3]"))


@pytest.mark.integration
async def test_the_agents_sdk_runs_a_tool_call_end_to_end(server):
    agents = pytest.importorskip("agents")
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel

    agents.set_tracing_disabled(True)
    called: list[str] = []

    @agents.function_tool
    def calculator(expression: str) -> str:
        """Exact arithmetic."""
        called.append(expression)
        return calculate(expression)

    # The SDK offers the tool under its function's name; the demo model knows "calculate".
    calculator.name = "calculate"
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    agent = agents.Agent(
        name="demo",
        instructions="Use the calculator.",
        tools=[calculator],
        model=OpenAIChatCompletionsModel(model=MODEL_ID, openai_client=client),
    )
    result = agents.Runner.run_streamed(agent, input="What is 17 * 23?")
    kinds = [
        event.item.type
        async for event in result.stream_events()
        if event.type == "run_item_stream_event"
    ]
    assert called == ["17 * 23"]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert "17 × 23 = 391" in str(result.final_output)


@pytest.mark.integration
async def test_the_raw_chunk_log_shows_tool_call_pieces_for_what_they_are(server):
    body = {
        "model": MODEL_ID,
        "messages": ask("What is 17 * 23?"),
        "tools": ALL_TOOLS,
        "stream": True,
    }
    log = ChunkLog()
    async with (
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                log(Delta(text="", index=0, raw=line.removeprefix("data: ")))
    lines = [line.split(" s  ", 1)[1] for line in log.render(first=100).splitlines()]
    assert re.fullmatch(r"tool_call\[0\] calculate id=call_\w+", lines[1])
    assert lines[2:5] == [
        "tool_call[0] calculate args+='{'",
        "tool_call[0] calculate args+='\"'",
        "tool_call[0] calculate args+='expre'",
    ]
    assert lines[-1] == '{"delta":{},"finish_reason":"tool_calls"}'
