"""The agent on the offline demo model, through the running app: no key and no network, and
still the Agent profile calls tools (Socket.IO), the SSE endpoint's agent mode, the console's
--agent and the classroom's /AgentDemo in English and Hinglish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from tests.harness import REPO, AppProcess, ChainlitClient
from tests.test_agent_integration import answer_text, input_pieces, tool_steps
from tests.test_sse_integration import Received, read_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app() -> Iterator[AppProcess]:
    # The offline model the app starts itself; guardrails off so each piece shows as it comes
    # (the guarded steps are tested against a scripted upstream).
    env = {"GUARDRAILS": "off", "STREAM_FLUSH_MS": "0", "OFFLINE_TPS": "400"}
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def agent(app: AppProcess) -> AsyncIterator[ChainlitClient]:
    client = await ChainlitClient(app.url, chat_profile="Agent").connect()
    try:
        yield client
    finally:
        await client.close()


async def test_the_offline_model_calls_the_calculator_and_answers_from_its_result(agent):
    answer = await agent.ask("What is 17 * 23?")
    (step,) = tool_steps(answer).values()
    assert step["name"].startswith("calculate in ")
    assert json.loads(step["input"]) == {"expression": "17 * 23"}
    assert step["output"] == "391"
    assert len(input_pieces(answer, step["id"])) >= 2  # the arguments came in pieces
    assert "391" in answer_text(answer)


async def test_the_offline_model_calls_two_tools_in_one_turn(agent):
    answer = await agent.ask("What is 2+2 and what time is it?")
    names = sorted(step["name"].split(" in ")[0] for step in tool_steps(answer).values())
    assert names == ["calculate", "current_time"]
    assert "4" in answer_text(answer)


async def test_a_tool_error_on_the_offline_model_is_shown_and_answered(agent):
    answer = await agent.ask("What is 1/0?")
    (step,) = tool_steps(answer).values()
    assert step["isError"] is True and "zero" in step["output"].lower()
    assert answer_text(answer)  # the model answered from the error


async def test_a_model_that_refuses_tools_gets_one_message_naming_it(agent):
    answer = await agent.ask("[fault: no_tools] What is 17 * 23?")
    errors = [m["output"] for m in answer.messages() if m.get("isError") and m["type"] != "tool"]
    assert len(errors) == 1 and "does not support tools" in errors[0]
    assert "streamchat-demo" in errors[0]


async def test_sse_agent_mode_on_the_offline_model(app):
    body = {"messages": [{"role": "user", "content": "What is 17 * 23?"}], "mode": "agent"}
    async with httpx2.AsyncClient(base_url=app.url, timeout=30) as http:
        events = [
            e
            for e in await read_all(http, "POST", "/api/stream", json=body)
            if isinstance(e, Received)
        ]
    calls = [e.data for e in events if e.event == "tool_call"]
    assert json.loads("".join(c["arguments"] for c in calls)) == {"expression": "17 * 23"}
    assert len(calls) > 2
    assert [e.data["result"] for e in events if e.event == "tool_result"] == ["391"]
    assert "391" in "".join(e.data["text"] for e in events if e.event == "token")
    assert events[-1].event == "done"


def test_the_console_agent_on_the_offline_model():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENT_"))}
    done = subprocess.run(
        [sys.executable, "-m", "streamchat", "--agent", "What is 17 * 23?"],
        cwd=REPO,
        env={**env, "OFFLINE_TPS": "400", "OFFLINE_TTFT_MS": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "391" in done.stdout and "calculate" not in done.stdout
    assert '[tool] calculate({"expression": "17 * 23"})' in done.stderr
    assert "[tool] calculate -> 391 (" in done.stderr


@pytest.mark.parametrize(
    ("language", "heading"),
    [("en", "arguments piece in the chunk"), ("hinglish", "chunk mein arguments ka tukda")],
)
async def test_agent_demo_shows_the_raw_chunks_of_a_tool_call_beside_its_step(
    app, language, heading
):
    client = await ChainlitClient(app.url, chat_profile="Classroom").connect()
    try:
        await client.change_settings({"language": language})
        answer = await client.ask("", command="AgentDemo")
        steps = tool_steps(answer)
        (call,) = [s for s in steps.values() if s["name"].startswith("calculate")]
        assert call["output"] == "391"
        table = next(text for text in answer.texts() if heading in text)
        rows = [
            line for line in table.splitlines() if line.startswith("| ") and "calculate(" in line
        ]
        # One row per chunk that carried a piece, the step growing with each.
        assert len(rows) >= 3
        assert rows[-1].endswith('`calculate({"expression": "17 * 23"})` |')
        # The Raw chunks step holds the chunks' JSON: the arguments piece by piece.
        (raw,) = [m for m in answer.messages() if "raw chunks" in str(m.get("name", ""))]
        assert raw["output"].count("tool_call[0]") >= 3
        assert "tool_calls" in raw["output"]  # the call's finish_reason
    finally:
        await client.close()
