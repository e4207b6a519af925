"""The real app over real Socket.IO, as the browser uses it, against the offline model.

Each app runs as `chainlit run app.py -h` in a subprocess. Where a test must see what the
upstream saw (history sent, client went away), the app is pointed at a standalone offline
server through OPENAI_BASE_URL: that is also the "any OpenAI-compatible server" path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from streamchat.offline import MODEL_ID, OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.harness import (
    Answer,
    AppProcess,
    ChainlitClient,
    GatedProxy,
    closed_port,
    speedups_on,
    strip_footer,
    upstream_ended,
    upstream_requests,
)

pytestmark = pytest.mark.integration

SECRET = "sk-proj-wrongwrongwrongwrongwrongwrong0123456789"


@pytest.fixture(scope="module")
def offline_app() -> Iterator[AppProcess]:
    """The newcomer's app: no key, no base URL, the built-in demo model."""
    with AppProcess({"OFFLINE_TPS": "150", "OFFLINE_TTFT_MS": "50"}) as app:
        yield app


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=300, first_token_delay_ms=20) as server:
        yield server


@pytest.fixture(scope="module")
def base_url_app(upstream: OfflineServer) -> Iterator[AppProcess]:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "STREAM_RETRIES": "0",
        "STREAM_RESUMES": "0",
        "SYSTEM_PROMPT": "Be brief.",
    }
    with AppProcess(env) as app:
        yield app


@pytest.fixture
async def client(offline_app: AppProcess) -> AsyncIterator[ChainlitClient]:
    chat = await ChainlitClient(offline_app.url).connect()
    yield chat
    await chat.close()


@pytest.fixture
async def upstream_client(base_url_app: AppProcess) -> AsyncIterator[ChainlitClient]:
    chat = await ChainlitClient(base_url_app.url).connect()
    yield chat
    await chat.close()


def request_messages(record) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in record.messages]


# --- the newcomer's first run ---------------------------------------------------------------------


async def test_offline_answer_arrives_as_many_stream_events_spread_over_time(client):
    answer = await client.ask("What is a token?")
    events = answer.stream_events
    assert len(events) >= 20, "the answer should stream token by token"
    assert events[-1].at - events[0].at > 0.2, "tokens should arrive over time, not at once"
    final = answer.final_assistant_text()
    assert strip_footer(final) == answer.streamed_text
    assert "TTFT" in final, "the stats line is shown under the answer"
    assert "offline demo model" in final.splitlines()[0].lower()
    assert "token" in final.lower()
    assert answer.errors() == []


async def test_a_browser_back_on_its_session_gets_the_next_answer_whole(offline_app):
    """Chainlit moves a session to the browser's new socket and puts its own event sender
    back; the next answer, with every Chainlit event around it, reaches the new socket."""
    first = await ChainlitClient(offline_app.url).connect()
    try:
        earlier = await first.ask("What is a token?")
    finally:
        await first.close()
    back = ChainlitClient(offline_app.url)
    back.session_id = first.session_id
    await back.connect(restored=True)
    try:
        answer = await back.ask("What is streaming?")
    finally:
        await back.close()
    for one in (earlier, answer):
        assert one.errors() == []
        assert one.stream_events and strip_footer(one.final_assistant_text()) == one.streamed_text
    names = [e.name for e in answer.events]
    assert names[-1] == "task_end" and "task_start" in names
    assert names.index("new_message") < names.index("stream_start") < names.index("stream_token")
    last_token = len(names) - 1 - names[::-1].index("stream_token")
    assert "update_message" in names[last_token:], "the finished answer comes after its tokens"


async def test_a_message_sent_while_the_chat_starts_shows_running_until_its_answer_ends(upstream):
    """A quick user can send the first message before the chat has started (here the provider
    holds its model list). Chainlit runs the chat start as a task of its own that tells the page
    its task ended when it returns: that must not come while the answer streams, or the page
    drops the Stop button and shows a reasoning step as "Used" while it is still thinking."""
    async with GatedProxy(urlsplit(upstream.base_url).port or 0) as gate:
        with AppProcess({"OPENAI_BASE_URL": gate.base_url, "STREAM_RETRIES": "0"}) as app:
            chat = await ChainlitClient(app.url).connect(wait=False)
            try:
                mark = await chat.send("What is streaming?")
                # The message's own run has begun; the chat start still waits for the models.
                await chat.wait_for(
                    lambda e: e.name == "new_message" and e.data.get("name") == "on_message",
                    start=mark,
                )
                async with asyncio.timeout(30):
                    await gate.connected.wait()  # the chat start asks for the models
                assert not any(
                    e.name == "update_message" and e.data.get("name") == "on_chat_start"
                    for e in chat.events
                ), "the chat should still be starting when the message arrives"
                gate.release()
                ended = await chat.wait_for(
                    lambda e: e.name == "update_message" and e.data.get("name") == "on_message",
                    start=mark,
                )
                await chat.wait_for(lambda e: e.name == "task_end", start=chat.events.index(ended))
            finally:
                await chat.close()
    running = False
    shown_while: list[bool] = []  # for each stream update: was the page showing a task running
    for event in chat.events:
        if event.name in ("task_start", "task_end"):
            running = event.name == "task_start"
        elif event.name in ("stream_start", "stream_token"):
            shown_while.append(running)
    assert len(shown_while) > 5, f"the answer should have streamed: {chat.events[mark:]}"
    assert all(shown_while), f"{shown_while.count(False)} stream updates came with no task running"
    assert not running, "the answer's own task_end closes it"
    answer = Answer(chat.events[mark:])
    assert answer.errors() == [] and answer.streamed_text


async def test_the_app_runs_on_uvloop_by_default(offline_app, client):
    assert (await client.ask("hello")).final_assistant_text()
    # Speed-ups off: the loop Chainlit makes itself, and startup says each speed-up is off.
    loop = "uvloop" if speedups_on() else "asyncio"
    assert f"event loop: {loop}" in offline_app.log()
    assert ("STREAM_SPEEDUPS=off" in offline_app.log()) is not speedups_on()
    # And once started, what start-up built is frozen for the garbage collector.
    assert ("objects from start-up frozen" in offline_app.log()) is speedups_on()


async def test_only_the_first_answer_says_it_is_the_demo_model(client):
    first = await client.ask("hello")
    second = await client.ask("What does stream=True do?")
    assert "offline demo model" in first.final_assistant_text().lower()
    assert "offline demo model" not in second.final_assistant_text().splitlines()[0].lower()


async def test_chat_start_sends_settings_for_model_temperature_and_prompt(client):
    settings = next(e for e in client.events if e.name == "chat_settings").data
    by_id = {widget["id"]: widget for widget in settings}
    assert set(by_id) == {
        "model",
        "temperature",
        "language",
        "system_prompt",
        "show_metrics",
        "show_reasoning",
        "guardrails_on",
        "guardrail_mode",
    }
    assert MODEL_ID in json.dumps(by_id["model"])
    assert by_id["temperature"]["initial"] == 0.7


# --- any OpenAI-compatible server -----------------------------------------------------------------


async def test_base_url_server_streams_the_intended_answer_with_history(upstream, upstream_client):
    upstream.records.clear()
    first = await upstream_client.ask("Tell me about time to first token")
    second = await upstream_client.ask("And what about backpressure?")
    records = await upstream_requests(upstream, 2, within=5)
    first_text = strip_footer(first.final_assistant_text())
    assert first_text == choose_answer(records[0].messages)
    assert strip_footer(second.final_assistant_text()) == choose_answer(records[1].messages)
    assert request_messages(records[1]) == [
        ("system", "Be brief."),
        ("user", "Tell me about time to first token"),
        ("assistant", first_text),
        ("user", "And what about backpressure?"),
    ]
    assert all(r.stream and r.completed for r in records)


async def test_settings_change_applies_to_the_next_request(upstream, upstream_client):
    upstream.records.clear()
    await upstream_client.change_settings(
        {"model": MODEL_ID, "temperature": 0.2, "system_prompt": "Answer like a teacher."}
    )
    await upstream_client.ask("What is SSE?")
    record = (await upstream_requests(upstream, 1, within=5))[0]
    assert request_messages(record)[0] == ("system", "Answer like a teacher.")
    assert record.body.get("temperature") == 0.2


async def test_bad_setting_is_refused_with_a_message(upstream_client):
    mark = len(upstream_client.events)
    await upstream_client.change_settings({"temperature": "very hot"})
    event = await upstream_client.wait_for(
        lambda e: e.name == "new_message" and e.data.get("isError"), start=mark
    )
    assert "Temperature must be a number" in event.data["output"]


async def test_unknown_model_from_settings_gets_a_clear_404_message(upstream_client):
    await upstream_client.change_settings({"model": "no-such-model"})
    answer = await upstream_client.ask("hello")
    assert any("'no-such-model' was not found" in text for text in answer.errors())
    await upstream_client.change_settings({"model": MODEL_ID})
    assert (await upstream_client.ask("hello")).final_assistant_text()


# --- Stop -----------------------------------------------------------------------------------------


async def test_stop_ends_the_answer_keeps_the_partial_and_closes_upstream():
    slow = OfflineServer(tokens_per_second=25, first_token_delay_ms=20)
    with slow, AppProcess({"OPENAI_BASE_URL": slow.base_url}) as app:
        chat = await ChainlitClient(app.url).connect()
        try:
            mark = await chat.send("Explain error handling and resume in detail")
            await chat.wait_for(lambda e: e.name == "stream_token", start=mark)
            await chat.wait_for(lambda e: e.name == "stream_token", start=len(chat.events))
            await chat.stop()
            record = (await upstream_requests(slow, 1, within=5))[0]
            assert await upstream_ended(record, within=1.0), (
                "the upstream must see the client go away within 1 s"
            )
            assert record.client_disconnected and not record.completed
            answer = await chat.finished(mark)
            partial = answer.final_assistant_text()
            assert "Stopped by you" in partial
            shown = partial.split("\n\n*(Stopped by you")[0]
            intended = choose_answer(record.messages)
            assert shown and intended.startswith(shown) and shown != intended
            assert "Task manually stopped." in answer.texts()

            # The partial answer is in the history sent with the next question.
            slow.records.clear()
            await chat.ask("hello")
            nxt = (await upstream_requests(slow, 1, within=5))[0]
            assert ("assistant", shown) in request_messages(nxt)
        finally:
            await chat.close()


# --- errors a person can act on, and the app keeps working ----------------------------------------


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ("[fault: 429 retry_after=3]", "rate-limiting requests (429). Wait 3 s"),
        ("[fault: 500]", "had an error (500)"),
        ("[fault: 503]", "had an error (503)"),
    ],
)
async def test_provider_errors_before_the_answer_get_a_clear_message(
    upstream_client, directive, expected
):
    answer = await upstream_client.ask(f"What is a token? {directive}")
    errors = answer.errors()
    assert len(errors) == 1 and expected in errors[0]
    assert "Traceback" not in json.dumps([e.data for e in answer.events])
    assert answer.stream_events == []
    assert (await upstream_client.ask("What is a token?")).final_assistant_text()


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ("[fault: drop after=8]", "connection to the provider was lost"),
        ("[fault: malformed after=8]", "could not be read"),
    ],
)
async def test_a_broken_stream_keeps_the_partial_answer_and_explains(
    upstream_client, directive, expected
):
    answer = await upstream_client.ask(f"What is a token? {directive}")
    final = answer.final_assistant_text()
    assert "Interrupted:" in final and "after 8 tokens" in final
    assert any(expected in text for text in answer.errors())
    assert (await upstream_client.ask("What is a token?")).final_assistant_text()


async def test_wrong_key_gets_a_401_message_and_the_key_is_never_shown():
    with OfflineServer(api_key="the-right-key", tokens_per_second=200) as guarded:
        env = {"OPENAI_BASE_URL": guarded.base_url, "OPENAI_API_KEY": SECRET}
        with AppProcess(env) as app:
            chat = await ChainlitClient(app.url).connect()
            try:
                answer = await chat.ask("hello")
                assert any("rejected the API key (401)" in text for text in answer.errors())
                everything = json.dumps([e.data for e in chat.events])
                assert SECRET not in everything and SECRET[:12] not in everything
                assert SECRET not in app.log()
            finally:
                await chat.close()


async def test_unreachable_provider_gets_a_clear_message_and_chat_still_starts():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with AppProcess({"OPENAI_BASE_URL": url, "STREAM_RETRIES": "0"}) as app:
        chat = await ChainlitClient(app.url).connect()
        try:
            answer = await chat.ask("hello")
            errors = answer.errors()
            assert errors and "Could not reach the model provider at" in errors[-1]
            assert url in errors[-1]
            # A second message gets the same clear answer: the app has not crashed.
            assert (await chat.ask("hello again")).errors()
        finally:
            await chat.close()


async def test_bad_setting_in_the_environment_is_shown_in_the_chat_not_a_crash():
    with AppProcess({"OFFLINE_TPS": "fast"}) as app:
        chat = ChainlitClient(app.url)
        try:
            await chat.connect()
            shown = [e.data["output"] for e in chat.events if e.name == "new_message"]
            assert any("OFFLINE_TPS must be a number" in text for text in shown)
            answer = await chat.ask("hello")
            assert any("OFFLINE_TPS" in text for text in answer.errors())
        finally:
            await chat.close()


@pytest.mark.parametrize(
    ("setting", "loop", "problem"),
    [
        ("asyncio", "asyncio", None),
        ("fast", "uvloop", "EVENT_LOOP must be one of auto, uvloop, asyncio (got 'fast')"),
    ],
)
async def test_event_loop_setting_is_followed_and_a_bad_value_is_shown(setting, loop, problem):
    env = {"EVENT_LOOP": setting, "LOG_LEVEL": "INFO", "OFFLINE_TPS": "400"}
    with AppProcess(env) as app:
        chat = await ChainlitClient(app.url, chat_profile="Classroom").connect()
        try:
            shown = [e.data["output"] for e in chat.events if e.name == "new_message"]
            if problem:
                assert any(problem in text for text in shown)
            else:
                assert not any("EVENT_LOOP" in text for text in shown)
            answer = await chat.ask("What is a token?")
            assert strip_footer(answer.final_assistant_text())
            # With STREAM_SPEEDUPS=off, Chainlit's own loop (asyncio's) whatever EVENT_LOOP says.
            assert f"event loop: {loop if speedups_on() else 'asyncio'}" in app.log()
            assert (problem in app.log()) if problem else ("EVENT_LOOP" not in app.log())
            assert "never awaited" not in app.log() and "Traceback" not in app.log()
        finally:
            await chat.close()


@pytest.mark.parametrize(
    ("setting", "compressed", "problem"),
    [
        (None, not speedups_on(), None),  # speed-ups off: Chainlit's own default
        ("true", True, None),
        (
            "sometimes",
            False,
            "UVICORN_WS_PER_MESSAGE_DEFLATE must be true or false, or yes/no, on/off, 1/0 (got ",
        ),
    ],
)
async def test_websocket_compression_is_declined_unless_asked_for(setting, compressed, problem):
    env = {"OFFLINE_TPS": "400", "LOG_LEVEL": "INFO"}
    if setting is not None:
        env["UVICORN_WS_PER_MESSAGE_DEFLATE"] = setting
    with AppProcess(env) as app:
        # The client offers permessage-deflate, as every browser does.
        chat = await ChainlitClient(app.url, offer_deflate=True).connect()
        try:
            assert chat.compressed is compressed
            shown = [e.data["output"] for e in chat.events if e.name == "new_message"]
            if problem:
                assert any(problem in text for text in shown)
                assert problem in app.log()
            else:
                assert not any("UVICORN_WS" in text for text in shown)
            answer = await chat.ask("What is a token?")
            assert strip_footer(answer.final_assistant_text()), "streamed either way"
            assert "Traceback" not in app.log()
        finally:
            await chat.close()


async def test_model_default_comes_from_the_servers_model_list(upstream, upstream_client):
    upstream.records.clear()
    await upstream_client.ask("hello")
    assert (await upstream_requests(upstream, 1, within=5))[0].model == MODEL_ID
