"""The Classroom profile end to end: the real app over Socket.IO against the offline model.
Each tool is checked by the events the browser receives: raw chunks, token view, timeline,
slow motion, normal vs streaming, side by side (with its own Stop per answer), the guardrail
and fault demos, and the language setting."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from streamchat.languages import HINGLISH_INSTRUCTION
from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.harness import (
    AppProcess,
    ChainlitClient,
    click_action,
    strip_footer,
    upstream_requests,
)

pytestmark = pytest.mark.integration

QUESTION = "What is a token?"


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=150, first_token_delay_ms=20) as server:
        yield server


@pytest.fixture(scope="module")
def app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {"OPENAI_BASE_URL": upstream.base_url, "STREAM_RESUMES": "1"}
    with AppProcess(env) as running:
        yield running


@pytest.fixture
async def classroom(app: AppProcess) -> AsyncIterator[ChainlitClient]:
    client = await ChainlitClient(app.url, chat_profile="Classroom").connect()
    yield client
    await client.close()


def tokens_by_message(events) -> list[str]:
    """The message id of each stream_token event, in order."""
    return [e.data["id"] for e in events if e.name == "stream_token"]


def runs(sequence: list[str]) -> int:
    """How many runs of equal neighbours `sequence` has (a, a, b, a -> 3)."""
    return sum(1 for i, item in enumerate(sequence) if i == 0 or item != sequence[i - 1])


async def test_the_classroom_offers_its_commands_and_the_chat_profile_does_not(app, classroom):
    commands = [e for e in classroom.events if e.name == "set_commands"]
    assert commands and {c["id"] for c in commands[-1].data} == {
        "Compare",
        "SideBySide",
        "GuardrailDemo",
        "FaultDemo",
        "AgentDemo",
    }
    plain = await ChainlitClient(app.url).connect()
    try:
        assert not [e for e in plain.events if e.name == "set_commands"]
    finally:
        await plain.close()


async def test_raw_chunks_token_view_and_timeline(classroom, upstream):
    upstream.records.clear()
    answer = await classroom.ask(QUESTION)
    record = (await upstream_requests(upstream, 1))[0]
    assert strip_footer(answer.final_assistant_text()) == choose_answer(record.messages)

    steps = [m for m in answer.messages() if m.get("type") == "tool"]
    assert steps, "a raw chunks step under the answer"
    step = steps[-1]
    assert step["name"] == f"{record.chunks_sent} raw chunks", "one per upstream chunk"
    lines = step["output"].splitlines()
    assert lines[0].startswith("#1 ") and '"role":"assistant"' in lines[0]
    assert re.search(r"… \d+ more chunks …", step["output"])
    assert '"usage"' in lines[-1]

    mark = len(classroom.events)
    await click_action(classroom.app_url, classroom, "token_view")
    element = await classroom.wait_for(
        lambda e: e.name == "element" and e.data.get("type") == "custom", start=mark
    )
    props = element.data["props"]
    assert len(props["tokens"]) == props["usage_tokens"] == record.tokens_sent
    assert "".join(props["tokens"]) == choose_answer(record.messages)

    mark = len(classroom.events)
    await click_action(classroom.app_url, classroom, "timeline")
    chart = await classroom.wait_for(
        lambda e: e.name == "element" and e.data.get("type") == "plotly", start=mark
    )
    assert chart.data["display"] == "inline"

    # A view of an answer whose chunks are no longer kept says so, for both views.
    for name in ("token_view", "timeline"):
        action = next(
            e.data for e in classroom.events if e.name == "action" and e.data.get("name") == name
        )
        mark = len(classroom.events)
        async with httpx2.AsyncClient(base_url=classroom.app_url, timeout=30) as http:
            response = await http.post(
                "/project/action",
                json={
                    "sessionId": classroom.session_id,
                    "action": {**action, "payload": {"answer": "long-gone"}},
                },
            )
            response.raise_for_status()
        await classroom.wait_for(
            lambda e: e.name == "new_message" and "too old" in e.data.get("output", ""),
            start=mark,
        )


async def test_slow_motion_paces_the_screen_not_the_provider(classroom, upstream):
    await classroom.change_settings({"slow_motion": "5 words/s"})
    try:
        upstream.records.clear()
        mark = await classroom.send(QUESTION)
        first = await classroom.wait_for(lambda e: e.name == "stream_token", start=mark)
        record = (await upstream_requests(upstream, 1))[0]
        # The provider finishes at its own speed while the screen is still near the start.
        assert await _ended(record, within=30) and record.completed
        watched = time.monotonic() - first.at
        shown = [e for e in classroom.events[mark:] if e.name == "stream_token"]
        words = sum(len(e.data["token"].split()) for e in shown)
        assert words <= 5 * watched + 3, "no faster than 5 words a second"
        assert words < record.tokens_sent / 2
        await classroom.stop()
        await classroom.finished(mark)
    finally:
        await classroom.change_settings({"slow_motion": "1x"})


async def _ended(record, *, within: float) -> bool:
    import asyncio

    return await asyncio.to_thread(record.ended.wait, within)


async def test_normal_vs_streaming_shows_streamed_text_first(classroom, upstream):
    upstream.records.clear()
    answer = await classroom.ask("Explain time to first token", command="Compare")
    starts = {e.data["id"]: e.data.get("name") for e in answer.named("stream_start")}
    assert sorted(starts.values()) == ["Not streamed", "Streamed"]
    order = [starts[i] for i in tokens_by_message(answer.events)]
    assert order[0] == "Streamed", "the streamed answer shows text first"
    assert order.index("Not streamed") > 5, "the whole answer comes at the end, in one piece"
    records = await upstream_requests(upstream, 2)
    assert sorted(r.stream for r in records) == [False, True]
    table = next(t for t in answer.texts() if "| **Not streamed** |" in t)
    assert "| **Streamed** |" in table and "Time to first visible text" in table


def lane_controls(events: list) -> list[dict]:
    """The lanes of the last LaneControls element sent (their names, ids and states)."""
    sent = [e for e in events if e.name == "element" and e.data.get("name") == "LaneControls"]
    return sent[-1].data["props"]["lanes"]


async def post_action(client, action: dict) -> None:
    """What the LaneControls element's button does: POST /project/action."""
    cookies = {"access_token": client.access_token} if client.access_token else None
    async with httpx2.AsyncClient(base_url=client.app_url, timeout=30, cookies=cookies) as http:
        response = await http.post(
            "/project/action", json={"sessionId": client.session_id, "action": action}
        )
        response.raise_for_status()


async def test_side_by_side_streams_interleave_and_each_has_its_own_stop(classroom, upstream):
    upstream.records.clear()
    answer = await classroom.ask(QUESTION, command="SideBySide")
    lanes = tokens_by_message(answer.events)
    assert len(set(lanes)) == 2
    assert runs(lanes) > 6, "the two answers stream at the same time, not one after the other"
    controls = lane_controls(answer.events)
    assert [lane["name"][0] for lane in controls] == ["A", "B"], "each lane says what it is"
    assert all("temperature" in lane["name"] for lane in controls)
    records = await upstream_requests(upstream, 2)
    texts = {
        r.body["temperature"]: choose_answer(r.messages, r.body["temperature"]) for r in records
    }
    assert len(set(texts.values())) == 2, (
        "the offline model answers differently at each temperature"
    )

    # Stop one lane: it ends as stopped, the other finishes.
    mark = await classroom.send(QUESTION, command="SideBySide")
    event = await classroom.wait_for(
        lambda e: e.name == "element" and e.data.get("name") == "LaneControls", start=mark
    )
    first_lane = event.data["props"]["lanes"][0]["id"]
    # As a person would: once the lanes are streaming.
    await classroom.wait_for(lambda e: e.name == "stream_start", start=mark)
    await post_action(classroom, {"name": "stop_lane", "payload": {"lane": first_lane}})
    answer = await classroom.finished(mark)
    # A lane stopped right after its first text has a stream_start and no stream_token yet.
    streamed = {e.data["id"] for e in answer.events if e.name in ("stream_start", "stream_token")}
    finals = [m for m in answer.messages() if m["id"] in streamed]
    outputs = {m["id"]: m["output"] for m in finals}
    stopped = [o for o in outputs.values() if "Stopped by you after" in o]
    assert len(stopped) == 1 and len(outputs) == 2


async def test_guardrail_demo_holds_back_and_stops(classroom, upstream):
    answer = await classroom.ask("", command="GuardrailDemo")
    everything = json.dumps([e.data for e in answer.events])
    assert "jane.doe@example.com" not in everything
    assert "Stopped: the answer contained an email address." in answer.final_assistant_text()
    story = next(t for t in answer.texts() if "held back at most" in t)
    assert "never reached the screen" in story


async def test_fault_demo_cuts_the_stream_and_resume_finishes_it(classroom, upstream):
    upstream.records.clear()
    answer = await classroom.ask("", command="FaultDemo")
    first, _ = await upstream_requests(upstream, 2)
    assert first.client_disconnected
    final = answer.final_assistant_text()
    assert "Resumed once after the stream broke." in final
    assert strip_footer(final) == choose_answer(first.messages)
    assert any("The connection was cut after 20 tokens" in t for t in answer.texts())


async def test_the_language_setting_switches_answers_to_hinglish(classroom, upstream):
    await classroom.change_settings({"language": "hinglish"})
    try:
        upstream.records.clear()
        answer = await classroom.ask(QUESTION)
        record = (await upstream_requests(upstream, 1))[0]
        assert HINGLISH_INSTRUCTION in record.messages[0]["content"]
        text = strip_footer(answer.final_assistant_text())
        assert text == choose_answer(record.messages)
        assert text != choose_answer([{"role": "user", "content": QUESTION}])
        step = next(m for m in answer.messages() if m.get("type") == "tool")
        assert step["name"].endswith("raw chunks jaise aaye"), "tool labels follow the language"
    finally:
        await classroom.change_settings({"language": "en"})
