"""AgentSource against a scripted OpenAI-compatible upstream over real loopback HTTP: tool
calls whose arguments arrive split across chunks, two tools in one turn, a failing tool, Stop
during a tool call and during the answer (the upstream connection closes), a guardrail match
in the answer and in a tool's result, the turn limit, a model without tools, usage per turn."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from agents.mcp import MCPServerStdio, MCPServerStreamableHttp

from streamchat.agent.run import AgentSource, ToolActivity, mcp_servers, tool_guards
from streamchat.agent.tools import TOOLS
from streamchat.core.relay import Resilience, StreamRun
from streamchat.core.sinks import MemorySink
from streamchat.core.types import ChatMessage, ChatRequest, EndReason
from streamchat.guardrails import GuardrailConfig, build_guard
from tests.agent_upstream import Script, ToolUpstream, chunk_bytes, ends, text, tool_call
from tests.waiting import eventually

EMAIL = "jane.doe@example.com"
PII = GuardrailConfig(policies=("pii",))


@pytest.fixture(scope="module")
def upstream() -> Iterator[ToolUpstream]:
    with ToolUpstream() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(upstream: ToolUpstream) -> None:
    upstream.scripts.clear()
    upstream.seen.clear()


class Activity:
    def __init__(self) -> None:
        self.seen: list[ToolActivity] = []

    async def __call__(self, activity: ToolActivity) -> None:
        self.seen.append(activity)

    def of(self, kind: str) -> list[ToolActivity]:
        return [a for a in self.seen if a.kind == kind]

    def arguments(self, call_id: str) -> str:
        return "".join(a.text for a in self.of("arguments") if a.call_id == call_id)


def source(upstream: ToolUpstream, activity: Activity, **options: object) -> AgentSource:
    client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
    return AgentSource(client, activity, **options)  # type: ignore[arg-type]


async def closed(upstream: ToolUpstream, request_number: int) -> bool:
    """Whether the upstream saw that request's connection end (it would hold it forever)."""
    ended = upstream.seen[request_number].ended
    return await asyncio.to_thread(ended.wait, 10)


def request(question: str) -> ChatRequest:
    return ChatRequest(
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", question)),
        model="scripted",
    )


async def answer(agent: AgentSource, question: str, *, guarded: bool = False) -> MemorySink:
    sink = MemorySink()
    run = StreamRun(agent, sink, resilience=Resilience(retries=0, resumes=0), guard=None)
    if guarded:
        run.guard = build_guard(PII)
    await run.run(request(question))
    return sink


@pytest.mark.parametrize("size", [1, 3, 97])
async def test_a_tool_calls_arguments_split_across_chunks_arrive_whole_and_in_order(upstream, size):
    arguments = json.dumps({"expression": "17 * 23"})
    upstream.scripts += [
        Script(tool_call("calculate", arguments, size=size) + ends("tool_calls")),
        Script(text("17 × 23 = 391.") + ends("stop")),
    ]
    activity = Activity()
    sink = await answer(source(upstream, activity), "What is 17 * 23?")
    assert sink.text == "17 × 23 = 391."
    assert [a.name for a in activity.of("call")] == ["calculate"]
    assert activity.arguments("call_1") == arguments
    assert len(activity.of("arguments")) == -(-len(arguments) // size)
    (result,) = activity.of("result")
    assert (result.text, result.error) == ("391", False)
    assert result.duration_s is not None and result.duration_s >= 0
    # The model got the tool's output as the tool message of its next request.
    tool_messages = [m for m in upstream.seen[1].body["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages] == [("call_1", "391")]
    # Activity never enters the answer.
    assert "expression" not in sink.text


async def test_two_tools_in_one_turn_each_get_their_call_and_result(upstream):
    upstream.scripts += [
        Script(
            tool_call("calculate", '{"expression": "2+2"}', call_id="call_a", index=0)
            + tool_call("current_time", '{"timezone": "UTC"}', call_id="call_b", index=1)
            + ends("tool_calls")
        ),
        Script(text("2 + 2 = 4, and it is late.") + ends("stop")),
    ]
    activity = Activity()
    sink = await answer(source(upstream, activity), "What is 2+2 and what time is it?")
    assert [(a.call_id, a.name) for a in activity.of("call")] == [
        ("call_a", "calculate"),
        ("call_b", "current_time"),
    ]
    assert activity.arguments("call_a") == '{"expression": "2+2"}'
    assert activity.arguments("call_b") == '{"timezone": "UTC"}'
    results = {a.call_id: a for a in activity.of("result")}
    assert results["call_a"].text == "4" and not results["call_b"].error
    assert sink.text.startswith("2 + 2 = 4")


async def test_a_failing_tool_shows_its_error_and_the_model_goes_on_from_it(upstream):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1/0"}') + ends("tool_calls")),
        Script(text("The calculator could not divide by zero.") + ends("stop")),
    ]
    activity = Activity()
    sink = await answer(source(upstream, activity), "What is 1/0?")
    (result,) = activity.of("result")
    assert result.error and result.text.startswith("Error:")
    assert "zero" in result.text.lower()
    (tool_message,) = [m for m in upstream.seen[1].body["messages"] if m["role"] == "tool"]
    assert tool_message["content"] == result.text
    assert sink.text == "The calculator could not divide by zero."
    assert sink.result is not None and sink.result.reason is EndReason.COMPLETE


async def test_stop_during_a_tool_call_cancels_the_run_and_closes_the_upstream(upstream):
    upstream.scripts.append(Script(tool_call("calculate", '{"expression": "17', size=2), hold=True))
    activity = Activity()
    sink = MemorySink()
    run = StreamRun(source(upstream, activity), sink, resilience=Resilience(retries=0, resumes=0))
    task = asyncio.create_task(run.run(request("What is 17 * 23?")))
    await eventually(
        lambda: activity.arguments("call_1") == '{"expression": "17',
        within=10,
        what="the arguments so far",
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await closed(upstream, 0)
    assert sink.result is not None and sink.result.reason is EndReason.STOPPED_BY_USER
    assert not activity.of("result")


async def test_stop_during_the_answer_keeps_what_was_shown_and_closes_the_upstream(upstream):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "17 * 23"}') + ends("tool_calls")),
        Script(text("17 × 23 is "), hold=True),
    ]
    sink = MemorySink()
    run = StreamRun(source(upstream, Activity()), sink, resilience=Resilience(retries=0, resumes=0))
    task = asyncio.create_task(run.run(request("What is 17 * 23?")))
    await eventually(lambda: sink.text == "17 × 23 is ", within=10, what="the answer's start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await closed(upstream, 1)
    assert sink.result is not None and sink.result.text == "17 × 23 is "
    assert sink.result.reason is EndReason.STOPPED_BY_USER


async def test_a_guardrail_match_in_the_answer_stops_it_before_it_is_shown(upstream):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1+1"}') + ends("tool_calls")),
        Script(text(f"Two. Write to {EMAIL} for more, it is a long answer.", 2) + ends("stop")),
    ]
    sink = await answer(source(upstream, Activity()), "1+1?", guarded=True)
    assert sink.result is not None and sink.result.reason is EndReason.GUARDRAIL
    assert "jane" not in sink.text and "@example" not in sink.text
    assert sink.text.startswith("Two.")


async def test_a_tools_result_and_arguments_are_guarded_in_their_steps(upstream):
    upstream.scripts += [
        Script(
            tool_call("search_lessons", json.dumps({"query": f"mail {EMAIL} please"}))
            + ends("tool_calls")
        ),
        Script(text("Nothing found.") + ends("stop")),
    ]
    activity = Activity()
    await answer(source(upstream, activity, guards=tool_guards(PII)), "find it")
    shown = json.dumps([a.text for a in activity.seen])
    assert "jane" not in shown and "@example" not in shown
    assert any(a.withheld for a in activity.of("arguments"))


async def test_a_run_past_its_turn_limit_says_so(upstream):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1+1"}') + ends("tool_calls")),
        Script(tool_call("calculate", '{"expression": "2+2"}') + ends("tool_calls")),
    ]
    sink = await answer(source(upstream, Activity(), max_turns=1), "loop")
    assert sink.result is not None and sink.result.reason is EndReason.ERROR
    assert sink.result.error is not None and sink.result.error.kind == "max_turns"
    assert "1 of its turns" in sink.result.error.user_message


async def test_a_model_without_tools_gets_one_short_message_naming_it(upstream):
    error = {"message": "tools is not supported by model scripted", "type": "invalid_request_error"}
    upstream.scripts.append(Script(status=400, error=error))
    sink = await answer(source(upstream, Activity()), "1+1?")
    assert sink.result is not None and sink.result.error is not None
    message = sink.result.error.user_message
    assert "'scripted' does not support tools" in message
    assert "Traceback" not in message and "\n" not in message


async def test_usage_is_told_per_turn_and_summed_for_the_answer(upstream):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1+1"}') + ends("tool_calls", 10, 4)),
        Script(text("Two.") + ends("stop", 30, 2)),
    ]
    activity = Activity()
    sink = await answer(source(upstream, activity), "1+1?")
    turns = activity.of("turn")
    assert [(t.turn, t.usage.prompt_tokens if t.usage else None) for t in turns] == [
        (1, 10),
        (2, 30),
    ]
    assert sink.result is not None
    assert (sink.result.stats.prompt_tokens, sink.result.stats.completion_tokens) == (40, 6)


def test_the_built_in_tools_are_offered_to_the_model_by_name():
    names = [tool.name for tool in TOOLS]
    assert names == ["calculate", "current_time", "search_lessons"]


async def test_an_mcp_servers_tools_are_offered_and_their_calls_shown_like_the_built_ins(
    upstream,
):
    command = f"{sys.executable} {Path(__file__).parent / 'agent_mcp_server.py'}"
    upstream.scripts += [
        Script(tool_call("shout", json.dumps({"text": "hello"})) + ends("tool_calls")),
        Script(text("HELLO, it says.") + ends("stop")),
    ]
    activity = Activity()
    sink = await answer(source(upstream, activity, mcp=[command]), "Shout hello")
    offered = [tool["function"]["name"] for tool in upstream.seen[0].body["tools"]]
    assert "shout" in offered and "calculate" in offered
    (result,) = activity.of("result")
    assert (result.name, result.error) == ("shout", False)
    assert "HELLO" in result.text and result.duration_s is not None
    assert sink.text == "HELLO, it says."


def test_mcp_server_entries_are_urls_or_command_lines():
    url, command = mcp_servers(["http://127.0.0.1:9/mcp", "python server.py --quiet"])
    assert isinstance(url, MCPServerStreamableHttp) and isinstance(command, MCPServerStdio)
    assert command.name == "python"


async def test_an_mcp_server_that_cannot_start_gets_a_message_naming_it(upstream):
    sink = await answer(source(upstream, Activity(), mcp=["no-such-mcp-program --x"]), "hi")
    assert sink.result is not None and sink.result.error is not None
    message = sink.result.error.user_message
    assert "The MCP server no-such-mcp-program could not be started" in message
    assert "--x" not in message and not upstream.seen  # nothing was asked of the model


async def test_an_unreadable_mcp_command_line_is_a_clear_message(upstream):
    sink = await answer(source(upstream, Activity(), mcp=["python 'unclosed"]), "hi")
    assert sink.result is not None and sink.result.error is not None
    assert "AGENT_MCP_SERVERS has a command line that cannot be read" in (
        sink.result.error.user_message
    )


async def test_a_reasoning_models_thinking_travels_beside_the_answer(upstream):
    thinking = [chunk_bytes({"reasoning_content": piece}) for piece in ("Seventeen ", "times 23.")]
    upstream.scripts += [
        Script(thinking + tool_call("calculate", '{"expression": "17*23"}') + ends("tool_calls")),
        Script(text("It is 391.") + ends("stop")),
    ]
    sink = await answer(source(upstream, Activity()), "17*23?")
    assert sink.reasoning_text == "Seventeen times 23."
    assert sink.text == "It is 391."


async def test_a_tool_call_that_streams_longer_than_the_first_token_timeout_is_no_stall(upstream):
    # Each piece comes well within the timeout, the whole call takes longer than it.
    arguments = json.dumps({"expression": "1 + 2 + 3 + 4"})
    upstream.scripts += [
        Script(tool_call("calculate", arguments, size=2) + ends("tool_calls"), pause_s=0.05),
        Script(text("Ten.") + ends("stop")),
    ]
    sink = MemorySink()
    patience = Resilience(retries=0, resumes=0, first_token_timeout_s=0.4, stall_s=0.4)
    await StreamRun(source(upstream, Activity()), sink, resilience=patience).run(request("sum?"))
    assert sink.result is not None and sink.result.reason is EndReason.COMPLETE
    assert sink.text == "Ten."
