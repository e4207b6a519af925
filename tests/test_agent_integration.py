"""The agent through the running app, over real Socket.IO (the Agent profile), HTTP (the SSE
endpoint's agent mode) and the console, against a scripted upstream that streams tool calls:
each tool call a step with its arguments streaming in and its result, two tools in a turn, a
failing tool, Stop during a tool call and during the answer, a guardrail match in the answer,
the turn limit and a model without tools."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

from tests.agent_upstream import Script, ToolUpstream, ends, text, tool_call
from tests.harness import REPO, Answer, AppProcess, ChainlitClient, click_action
from tests.test_sse_integration import Received, read_all

pytestmark = pytest.mark.integration

EMAIL = "jane.doe@example.com"
ARGUMENTS = json.dumps({"expression": "17 * 23"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[ToolUpstream]:
    with ToolUpstream() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(upstream: ToolUpstream) -> None:
    upstream.scripts.clear()
    upstream.seen.clear()


@pytest.fixture(scope="module")
def app(upstream: ToolUpstream) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-scripted",
        "OPENAI_MODEL": "scripted",
        "STREAM_RETRIES": "0",
        "STREAM_FLUSH_MS": "0",
        "GUARDRAILS": "pii",
        "AGENT_MAX_TURNS": "2",
    }
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def agent(app: AppProcess) -> AsyncIterator[ChainlitClient]:
    client = await ChainlitClient(app.url, chat_profile="Agent").connect()
    try:
        yield client
    finally:
        await client.close()


def tool_steps(answer: Answer) -> dict[str, dict[str, Any]]:
    """Each tool step's last state (by id), with the input it streamed as `streamed_input`."""
    steps: dict[str, dict[str, Any]] = {}
    inputs: dict[str, str] = {}
    for event in answer.events:
        data = event.data if isinstance(event.data, dict) else {}
        if event.name in ("new_message", "update_message", "stream_start"):
            if data.get("type") == "tool" and not str(data.get("name", "")).startswith("Raw"):
                steps[data["id"]] = {**steps.get(data["id"], {}), **data}
        elif event.name == "stream_token" and data.get("isInput"):
            inputs[data["id"]] = inputs.get(data["id"], "") + data["token"]
    for step_id, streamed in inputs.items():
        if step_id in steps:
            steps[step_id]["streamed_input"] = streamed
    return steps


def answer_text(answer: Answer) -> str:
    """The answer's final text: the assistant message that streamed (not a tool step)."""
    streamed = {
        e.data["id"] for e in answer.named("stream_start") if e.data["type"] == "assistant_message"
    }
    finals = [m for m in answer.messages() if m["id"] in streamed]
    return finals[-1]["output"] if finals else ""


def input_pieces(answer: Answer, step_id: str) -> list[str]:
    """The pieces a step's input streamed in: the first starts the stream, tokens follow."""
    pieces = []
    for event in answer.named("stream_start", "stream_token"):
        if event.data.get("id") != step_id:
            continue
        if event.name == "stream_start":
            pieces.append(event.data.get("input") or "")
        elif event.data.get("isInput"):
            pieces.append(event.data["token"])
    return pieces


@pytest.mark.parametrize("guardrails_on", [False, True])
async def test_a_tool_call_is_a_step_whose_arguments_stream_in_then_its_result(
    upstream, agent, guardrails_on
):
    await agent.change_settings({"guardrails_on": guardrails_on})
    upstream.scripts += [
        Script(tool_call("calculate", ARGUMENTS, size=3) + ends("tool_calls")),
        Script(text("17 × 23 = 391.") + ends("stop")),
    ]
    answer = await agent.ask("What is 17 * 23?")
    (step,) = tool_steps(answer).values()
    assert step["name"].startswith("calculate in ")
    assert step["input"] == ARGUMENTS and step["output"] == "391"
    assert step.get("isError") is not True and step["end"]
    pieces = input_pieces(answer, step["id"])
    assert "".join(pieces) == ARGUMENTS
    if not guardrails_on:  # each piece as the model sent it
        assert pieces == [ARGUMENTS[at : at + 3] for at in range(0, len(ARGUMENTS), 3)]
    # (With guardrails on, a piece shows once the guard has checked it: short arguments
    # wait for the end of the call.)
    assert answer_text(answer).startswith("17 × 23 = 391.")
    # Each model call's usage under the answer, the total in its stats line.
    *_, stats, turns = answer_text(answer).split("\n\n")
    assert turns == "*Tokens per model call: 1) 10 in, 5 out · 2) 10 in, 5 out*"
    assert "10 tokens" in stats


async def test_two_tools_in_one_turn_are_two_steps(upstream, agent):
    upstream.scripts += [
        Script(
            tool_call("calculate", '{"expression": "2+2"}', call_id="call_a", index=0)
            + tool_call("current_time", '{"timezone": "UTC"}', call_id="call_b", index=1)
            + ends("tool_calls")
        ),
        Script(text("Four, and now is now.") + ends("stop")),
    ]
    answer = await agent.ask("What is 2+2 and what time is it?")
    steps = sorted(tool_steps(answer).values(), key=lambda s: s["name"])
    assert [s["name"].split(" in ")[0] for s in steps] == ["calculate", "current_time"]
    assert steps[0]["output"] == "4" and steps[1]["output"][:2] == "20"
    assert answer_text(answer).startswith("Four")


async def test_a_failing_tool_shows_the_error_in_its_step_and_the_answer_goes_on(upstream, agent):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1/0"}') + ends("tool_calls")),
        Script(text("That cannot be computed: division by zero.") + ends("stop")),
    ]
    answer = await agent.ask("What is 1/0?")
    (step,) = tool_steps(answer).values()
    assert step["isError"] is True and step["output"].startswith("Error:")
    assert answer_text(answer).startswith("That cannot be computed")
    assert [m for m in answer.messages() if m.get("isError") and m["type"] != "tool"] == []


async def test_stop_during_a_tool_call_closes_the_upstream_and_ends_the_step(upstream, agent):
    upstream.scripts.append(Script(tool_call("calculate", '{"expression": "17', size=2), hold=True))
    mark = await agent.send("What is 17 * 23?")
    await agent.wait_for(lambda e: e.name == "new_message" and e.data["type"] == "tool", start=mark)
    await agent.stop()
    answer = await agent.finished(mark)
    assert await asyncio.to_thread(upstream.seen[0].ended.wait, 10)
    (step,) = tool_steps(answer).values()
    assert step["end"] and step["output"] == "Stopped."


async def test_stop_during_the_answer_keeps_it_and_closes_the_upstream(upstream, agent):
    upstream.scripts += [
        Script(tool_call("calculate", ARGUMENTS) + ends("tool_calls")),
        Script(text("17 × 23 is "), hold=True),
    ]
    # Without guardrails the held-back window is nil: the text shows as it comes.
    await agent.change_settings({"guardrails_on": False})
    mark = await agent.send("What is 17 * 23?")
    await agent.wait_for(
        lambda e: e.name == "stream_start" and e.data["type"] == "assistant_message",
        start=mark,
    )
    await agent.stop()
    answer = await agent.finished(mark)
    assert await asyncio.to_thread(upstream.seen[1].ended.wait, 10)
    assert "Stopped by you" in answer_text(answer)
    assert answer_text(answer).startswith("17 × 23 is")


async def test_continue_after_a_broken_stream_goes_on_with_the_agent(app, upstream, agent):
    upstream.scripts += [
        Script(tool_call("calculate", ARGUMENTS) + ends("tool_calls")),
        Script(text("17 × 23 is "), drop=True),
        Script(text("391.") + ends("stop")),
    ]
    await agent.change_settings({"guardrails_on": False})
    mark = await agent.send("What is 17 * 23?")
    broken = await agent.finished(mark)
    # (What came before the break is kept; how much of it was read depends on the HTTP stack.)
    assert answer_text(broken).startswith("17 ×")
    assert "Interrupted" in answer_text(broken)
    again = len(agent.events)
    await click_action(app.url, agent, "continue", start=mark)
    continued = await agent.finished(again)
    assert upstream.seen[2].body["messages"][-2]["content"].startswith("17 ×")
    assert "391." in answer_text(continued)
    # The continuation was the agent's: its tools were offered again.
    assert [tool["function"]["name"] for tool in upstream.seen[2].body["tools"]][:1] == [
        "calculate"
    ]


async def test_a_guardrail_match_in_the_final_answer_never_reaches_the_client(upstream, agent):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1+1"}') + ends("tool_calls")),
        Script(text(f"Two. Mail {EMAIL} for the long version of it all.", 2) + ends("stop")),
    ]
    answer = await agent.ask("1+1?")
    everything = json.dumps([e.data for e in answer.events], ensure_ascii=False)
    assert "jane" not in everything and "@example" not in everything
    assert "Stopped: the answer contained" in answer_text(answer)


async def test_a_run_past_its_turn_limit_says_so(upstream, agent):
    upstream.scripts += [
        Script(tool_call("calculate", '{"expression": "1+1"}') + ends("tool_calls")),
        Script(tool_call("calculate", '{"expression": "2+2"}', call_id="c2") + ends("tool_calls")),
    ]
    answer = await agent.ask("Loop forever")
    assert any("used all 2 of its turns" in error for error in answer.errors())


async def test_a_model_without_tools_gets_one_short_message_naming_it(upstream, agent):
    error = {"message": "tools is not supported by model scripted"}
    upstream.scripts.append(Script(status=400, error=error))
    answer = await agent.ask("1+1?")
    (message,) = answer.errors()
    assert "The model 'scripted' does not support tools" in message
    assert "Traceback" not in message


# --- the SSE endpoint's agent mode ---------------------------------------------------------


@pytest.fixture
async def http(app: AppProcess) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=app.url, timeout=30) as client:
        yield client


def received(events: list) -> list[Received]:
    return [e for e in events if isinstance(e, Received)]


async def test_sse_agent_mode_sends_tool_events_in_the_id_sequence_and_resumes(upstream, http):
    upstream.scripts += [
        Script(tool_call("calculate", ARGUMENTS, size=4) + ends("tool_calls")),
        Script(text("17 × 23 = 391.") + ends("stop")),
    ]
    body = {"messages": [{"role": "user", "content": "What is 17 * 23?"}], "mode": "agent"}
    events = received(await read_all(http, "POST", "/api/stream", json=body))
    names = [e.event for e in events]
    calls = [e.data for e in events if e.event == "tool_call"]
    assert calls[0] == {"call_id": "call_1", "name": "calculate", "arguments": ""}
    assert "".join(c["arguments"] for c in calls) == ARGUMENTS and len(calls) > 2
    (result,) = [e.data for e in events if e.event == "tool_result"]
    assert (result["name"], result["result"], result["error"]) == ("calculate", "391", False)
    assert names.index("tool_result") < names.index("token")
    assert "".join(e.data["text"] for e in events if e.event == "token") == "17 × 23 = 391."
    # One id sequence for every event; a reconnect after a tool event gets the rest.
    sequence = [int(e.id.rsplit(":", 1)[-1]) if ":" in e.id else e.id for e in events]
    assert sequence == sorted(sequence)
    at = names.index("tool_result")
    rest = received(
        await read_all(http, "GET", "/api/stream", headers={"Last-Event-ID": events[at].id})
    )
    assert [(e.id, e.event) for e in rest] == [(e.id, e.event) for e in events[at + 1 :]]


async def test_sse_refuses_an_unknown_mode(http):
    response = await http.post(
        "/api/stream", json={"messages": [{"role": "user", "content": "hi"}], "mode": "robot"}
    )
    assert response.status_code == 400
    assert "mode" in response.json()["error"]["message"]


# --- the console ----------------------------------------------------------------------------


def test_the_console_agent_prints_tool_activity_to_stderr_and_the_answer_to_stdout(upstream):
    upstream.scripts += [
        Script(tool_call("calculate", ARGUMENTS) + ends("tool_calls")),
        Script(text("17 × 23 = 391.") + ends("stop")),
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "STREAM_", "GUARDRAIL", "AGENT_"))
    }
    env.update(OPENAI_BASE_URL=upstream.base_url, OPENAI_MODEL="scripted", STREAM_RETRIES="0")
    done = subprocess.run(
        [sys.executable, "-m", "streamchat", "--agent", "What is 17 * 23?"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "17 × 23 = 391."
    assert f"[tool] calculate({ARGUMENTS})" in done.stderr
    assert "[tool] calculate -> 391 (" in done.stderr
