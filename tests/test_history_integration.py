"""Chat history end to end, on a SQLite file and on PostgreSQL: chat with login on, restart the
app, log in again, resume the thread. The history is there (including an interrupted answer and a
guardrail stop, with their markers), the next question carries it upstream, Continue still
works, and another user can open the thread neither over Socket.IO nor over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import socketio

from streamchat.hosting.users import UsersFile
from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.databases import postgres_server
from tests.harness import (
    AppProcess,
    ChainlitClient,
    click_action,
    login,
    strip_footer,
    upstream_requests,
)

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
FIRST = "What is a token?"
CUT_OFF = "How does time to first token work? [fault: drop after=15 times=1]"
GUARDED = "Show me a guardrail demo with an email"
NEXT = "What is backpressure?"


@pytest.fixture
def upstream() -> Iterator[OfflineServer]:
    # One per test: a fault's `times` counts across the server's life.
    with OfflineServer(tokens_per_second=300, first_token_delay_ms=5) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
    else:
        with postgres_server() as url:
            yield url


@pytest.fixture
def app_env(upstream: OfflineServer, database_url: str, tmp_path: Path) -> dict[str, str]:
    users = UsersFile(tmp_path / "users.txt")
    users.add("alice", "alice's long password")
    users.add("bob", "bob's long password")
    return {
        "CHAINLIT_AUTH_SECRET": SECRET,
        "AUTH_USERS_FILE": str(tmp_path / "users.txt"),
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": upstream.base_url,
        "STREAM_RESUMES": "0",
    }


async def test_a_chat_survives_a_restart_and_is_resumed_with_its_history(app_env, upstream):
    with AppProcess(app_env) as app:
        chat = await ChainlitClient(
            app.url, access_token=login(app.url, "alice", "alice's long password")
        ).connect()
        try:
            upstream.records.clear()
            first = await chat.ask(FIRST)
            first_answer = strip_footer(first.final_assistant_text())
            assert first_answer
            guarded = await chat.ask(GUARDED)
            assert "Stopped: the answer contained an email address." in (
                guarded.final_assistant_text()
            )
            stopped = strip_footer(guarded.final_assistant_text())
            # The last answer is cut off: after the restart its Continue button is back.
            cut = await chat.ask(CUT_OFF)
            assert "Interrupted: connection lost after" in cut.final_assistant_text()
            partial = strip_footer(cut.final_assistant_text())
            thread_id = await chat.started_thread()
            records = await upstream_requests(upstream, 3)
            intended_cut = choose_answer(records[2].messages)
        finally:
            await chat.close()

    # A new process on the same database: nothing of the chat is left in memory.
    with AppProcess(app_env) as app:
        token = login(app.url, "alice", "alice's long password")
        threads = httpx2.post(
            f"{app.url}/project/threads",
            json={"pagination": {"first": 20}, "filter": {}},
            cookies={"access_token": token},
            timeout=30,
        )
        assert threads.status_code == 200, threads.text
        assert [t["id"] for t in threads.json()["data"]] == [thread_id]

        resumed = await ChainlitClient(app.url, access_token=token, thread_id=thread_id).connect()
        try:
            event = resumed.events[-1]
            assert event.name == "resume_thread", event
            shown = [s["output"] for s in event.data["steps"] if s["type"] == "assistant_message"]
            # The markers are stored with the answers: interrupted and stopped, as shown live.
            assert any("Interrupted: connection lost after" in text for text in shown)
            assert any("Stopped: the answer contained an email address." in t for t in shown)
            assert "jane" not in json.dumps(event.data)

            # Continue under the interrupted last answer still finishes it, exactly.
            upstream.records.clear()
            mark = len(resumed.events)
            await click_action(app.url, resumed, "continue")
            continued = await resumed.finished(mark)
            assert partial + strip_footer(continued.final_assistant_text()) == intended_cut
            # The next question carries the whole conversation upstream, as the model saw it.
            upstream.records.clear()
            await resumed.ask(NEXT)
            sent = [
                m
                for m in (await upstream_requests(upstream, 1))[0].messages
                if m["role"] != "system"
            ]
            assert [m["role"] for m in sent] == ["user", "assistant"] * 3 + ["user"]
            assert [m["content"] for m in sent] == [
                FIRST,
                first_answer,
                GUARDED,
                stopped,
                CUT_OFF,
                intended_cut,
                NEXT,
            ]

        finally:
            await resumed.close()

        # Bob may neither resume alice's thread nor read it.
        bob_token = login(app.url, "bob", "bob's long password")
        intruder = ChainlitClient(app.url, access_token=bob_token, thread_id=thread_id)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await intruder.connect()
        await intruder.close()
        stolen = httpx2.get(
            f"{app.url}/project/thread/{thread_id}",
            cookies={"access_token": bob_token},
            timeout=30,
        )
        assert stolen.status_code in (401, 403, 404)
        assert "What is a token" not in stolen.text
        bobs = httpx2.post(
            f"{app.url}/project/threads",
            json={"pagination": {"first": 20}, "filter": {}},
            cookies={"access_token": bob_token},
            timeout=30,
        )
        assert bobs.status_code == 200 and bobs.json()["data"] == []
        mine = httpx2.get(
            f"{app.url}/project/thread/{thread_id}", cookies={"access_token": token}, timeout=30
        )
        assert mine.status_code == 200 and mine.json()["id"] == thread_id


async def test_an_unreachable_database_leaves_login_and_chat_working(tmp_path, upstream):
    from tests.harness import free_port

    UsersFile(tmp_path / "users.txt").add("alice", "alice's long password")
    env = {
        "CHAINLIT_AUTH_SECRET": SECRET,
        "AUTH_USERS_FILE": str(tmp_path / "users.txt"),
        "DATABASE_URL": f"postgresql://app:secret-pw@127.0.0.1:{free_port()}/nowhere",
        "OPENAI_BASE_URL": upstream.base_url,
    }
    with AppProcess(env) as app:
        chat = await ChainlitClient(
            app.url, access_token=login(app.url, "alice", "alice's long password")
        ).connect()
        try:
            notices = [e.data["output"] for e in chat.events if e.name == "new_message"]
            assert any("Chat history is unavailable" in n for n in notices)
            answer = await chat.ask(FIRST)
            assert strip_footer(answer.final_assistant_text())
        finally:
            await chat.close()
        assert "secret-pw" not in app.log_path.read_text()
