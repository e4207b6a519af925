"""A replica lost mid-answer: two app processes sharing one history database (a SQLite file),
one killed (kill -9) or stopped for a deploy (SIGTERM) while it writes an answer slowly. The
words already shown are in the history, marked interrupted, and Continue on the other replica
finishes the answer from the stored thread. A button pressed through the replica that does not
hold the page's socket runs where the page is (Redis). Feedback on another user's answer is
refused, 403."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from streamchat.hosting.persistence import LOST_WRITER_NOTE
from streamchat.hosting.setup import DRAINING_NOTICE, SESSION_ELSEWHERE
from streamchat.hosting.users import UsersFile
from streamchat.offline import OfflineServer
from tests.databases import redis_server
from tests.harness import AppProcess, ChainlitClient, click_action, login, strip_footer
from tests.waiting import accepts_connections, eventually

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
PASSWORD = "alice's long password"


@pytest.fixture(scope="module")
def slow_model() -> Iterator[OfflineServer]:
    # Slow enough that an answer is still being written when its replica goes.
    with OfflineServer(tokens_per_second=12, first_token_delay_ms=10) as server:
        yield server


@pytest.fixture(scope="module")
def shared(slow_model: OfflineServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("failover")
    users = UsersFile(root / "users.txt")
    users.add("alice", PASSWORD)
    users.add("bob", "bob's own long passphrase")
    return {
        "CHAINLIT_AUTH_SECRET": SECRET,
        "AUTH_USERS_FILE": str(root / "users.txt"),
        "DATABASE_URL": f"sqlite:///{root / 'history.db'}",
        "OPENAI_BASE_URL": slow_model.base_url,
        "PARTIAL_SAVE_S": "0.5",
        "DRAIN_TIMEOUT_S": "2",
    }


@pytest.fixture(scope="module")
def survivor(shared: dict[str, str]) -> Iterator[AppProcess]:
    with AppProcess(shared) as app:
        yield app


def stored_steps(app: AppProcess, token: str, thread_id: str) -> list[dict[str, Any]]:
    response = httpx2.get(
        f"{app.url}/project/thread/{thread_id}", cookies={"access_token": token}, timeout=30
    )
    return list(response.json().get("steps") or []) if response.status_code == 200 else []


def stored_answers(app: AppProcess, token: str, thread_id: str) -> list[dict[str, Any]]:
    steps = stored_steps(app, token, thread_id)
    return [s for s in steps if s.get("type") == "assistant_message" and not s.get("isError")]


def metadata(step: dict[str, Any]) -> dict[str, Any]:
    raw = step.get("metadata") or {}
    stored = json.loads(raw) if isinstance(raw, str) else raw
    return dict(stored.get("streamchat") or {})


def answers_sent(client: ChainlitClient, mark: int, end: Any) -> list[str]:
    """The answers (their final text) the app sent to `client` from event `mark` to `end`."""
    return [
        e.data["output"]
        for e in client.events[mark : client.events.index(end)]
        if e.name == "new_message" and e.data.get("type") == "assistant_message"
    ]


async def answer_under_way(app: AppProcess, token: str) -> tuple[ChainlitClient, str, str]:
    """A chat on `app` whose answer has streamed a few words and been saved as in progress;
    returns the client, the thread id and the text saved so far."""
    chat = await ChainlitClient(app.url, access_token=token).connect()
    await chat.send("What is backpressure?")
    await chat.wait_for(lambda e: e.name == "stream_token", within=30)
    thread_id = await chat.started_thread()

    def saved_in_progress() -> str:
        answers = stored_answers(app, token, thread_id)
        if answers and "in_progress" in metadata(answers[-1]) and answers[-1]["output"]:
            return str(answers[-1]["output"])
        return ""

    await eventually(
        lambda: len(saved_in_progress()) > 20,
        within=30,
        every=0.2,
        what="the answer saved as it streams",
    )
    return chat, thread_id, saved_in_progress()


async def resumed_and_continued(
    app: AppProcess, token: str, thread_id: str, shown: str, session_id: str | None = None
) -> tuple[dict[str, Any], str]:
    """Open the thread on `app` as the history sidebar does (or, given the lost page's
    `session_id`, as that page reconnecting does: it names its thread); check the interrupted
    answer is shown with Continue, press it, and return the resumed answer step and the
    continuation."""
    chat = ChainlitClient(app.url, access_token=token, thread_id=thread_id)
    chat.session_id = session_id or chat.session_id
    try:
        await chat.connect()
        resumed = next(e.data for e in chat.events if e.name == "resume_thread")
        answers = [s for s in resumed["steps"] if s.get("type") == "assistant_message"]
        assert answers, "the partial answer is in the thread"
        answer = answers[-1]
        assert strip_footer(answer["output"]).startswith(shown), "the words that were shown"
        assert "*(Interrupted:" in answer["output"]
        assert not answer.get("streaming")
        mark = len(chat.events)
        await click_action(app.url, chat, "continue")
        start = await chat.wait_for(lambda e: e.name == "task_start", start=mark, within=30)
        end = await chat.wait_for(
            lambda e: e.name == "task_end", start=chat.events.index(start), within=90
        )
        continued = answers_sent(chat, mark, end)
        assert continued, "Continue answered"
        return answer, strip_footer(continued[-1])
    finally:
        await chat.close()


async def test_an_answer_whose_replica_is_killed_is_shown_interrupted_and_continues_elsewhere(
    shared, survivor
):
    with AppProcess(shared) as doomed:
        token = login(doomed.url, "alice", PASSWORD)
        chat, thread_id, shown = await answer_under_way(doomed, token)
        os.kill(doomed.pid, signal.SIGKILL)  # nothing can be marked at the end
        await chat.close()

    # The page reconnects to the other replica with its session and thread.
    answer, continuation = await resumed_and_continued(
        survivor, token, thread_id, shown, session_id=chat.session_id
    )
    assert LOST_WRITER_NOTE in answer["output"]
    assert continuation, "the rest of the answer"
    stored = stored_answers(survivor, token, thread_id)
    assert metadata(stored[0])["reason"] == "error" and "in_progress" not in metadata(stored[0])
    assert metadata(stored[-1])["reason"] == "complete", "the continuation finished"


async def test_retry_pressed_after_a_failover_asks_the_question_again_on_the_other_replica(
    shared, survivor
):
    with AppProcess({**shared, "STREAM_RETRIES": "0"}) as doomed:
        token = login(doomed.url, "alice", PASSWORD)
        chat = await ChainlitClient(doomed.url, access_token=token).connect()
        # The request fails before any text (once: the model answers the next one).
        await chat.send("What is a token? [fault: 503 times=1]")
        retry = await chat.wait_for(
            lambda e: e.name == "action" and e.data.get("name") == "retry", within=30
        )
        thread_id = await chat.started_thread()
        os.kill(doomed.pid, signal.SIGKILL)
        await chat.close()

    # The page reconnects to the other replica with its session and thread; its Retry button
    # is still on screen, and the person presses it there.
    page = ChainlitClient(survivor.url, access_token=token, thread_id=thread_id)
    page.session_id = chat.session_id
    try:
        await page.connect()
        mark = len(page.events)
        async with httpx2.AsyncClient(
            base_url=survivor.url, timeout=30, cookies={"access_token": token}
        ) as http:
            response = await http.post(
                "/project/action", json={"sessionId": page.session_id, "action": retry.data}
            )
        assert response.status_code == 200
        end = await page.wait_for(lambda e: e.name == "task_end", start=mark, within=90)
        answers = answers_sent(page, mark, end)
        assert answers and "token" in strip_footer(answers[-1]).lower(), "the question answered"
    finally:
        await page.close()


async def test_sigterm_drains_saves_the_answer_interrupted_and_refuses_new_messages(
    shared, survivor
):
    with AppProcess(shared) as leaving:
        token = login(leaving.url, "alice", PASSWORD)
        chat, thread_id, shown = await answer_under_way(leaving, token)
        other = await ChainlitClient(leaving.url, access_token=token).connect()
        try:
            os.kill(leaving.pid, signal.SIGTERM)
            await eventually(
                lambda: "draining: 1 answers" in leaving.log(), within=10, what="the drain"
            )
            refused = await other.ask("Are you there?")
            assert refused.errors() == [DRAINING_NOTICE]
            # The answer under way ends as interrupted on the page it was streaming to.
            cut = await chat.wait_for(
                lambda e: e.name == "new_message" and "this server restarted" in e.data["output"],
                within=30,
            )
            assert strip_footer(cut.data["output"]).startswith(shown)
            await eventually(
                lambda: not accepts_connections(leaving.port),
                within=30,
                every=0.1,
                what="the server stops",
            )
        finally:
            await other.close()
            await chat.close()
        assert "Traceback" not in leaving.log()

    answer, continuation = await resumed_and_continued(survivor, token, thread_id, shown)
    assert "Interrupted: this server restarted after" in answer["output"]
    assert continuation


async def test_feedback_on_another_users_answer_is_refused_with_403(survivor):
    alice = login(survivor.url, "alice", PASSWORD)
    bob = login(survivor.url, "bob", "bob's own long passphrase")
    chat = await ChainlitClient(survivor.url, access_token=alice).connect()
    try:
        answer = await chat.ask("What is a token?", within=90)
        answer_id = next(e.data["id"] for e in answer.named("stream_start"))
        thread_id = await chat.started_thread()
    finally:
        await chat.close()

    def feedback(token: str) -> httpx2.Response:
        return httpx2.put(
            f"{survivor.url}/feedback",
            json={
                "sessionId": "",
                "feedback": {"forId": answer_id, "threadId": thread_id, "value": 0},
            },
            cookies={"access_token": token},
            timeout=30,
        )

    refused = feedback(bob)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "You can only give feedback on answers in your own chats."
    assert feedback(alice).status_code == 200


async def test_a_button_pressed_through_another_replica_runs_where_the_page_is(
    offline_server: OfflineServer, shared: dict[str, str], tmp_path
):
    env = {
        **shared,
        "OPENAI_BASE_URL": offline_server.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "STREAM_RESUMES": "0",  # a dropped stream stays interrupted, with Continue
    }
    with redis_server() as redis_url:
        env["REDIS_URL"] = redis_url
        with AppProcess(env) as one, AppProcess(env) as two:
            alice = login(one.url, "alice", PASSWORD)
            bob = login(one.url, "bob", "bob's own long passphrase")
            chat = await ChainlitClient(one.url, access_token=alice).connect()
            try:
                cut = await chat.ask("What is a token? [fault: drop after=10 times=1]")
                assert any("Interrupted:" in text for text in cut.texts())
                button = await chat.wait_for(
                    lambda e: e.name == "action" and e.data.get("name") == "continue"
                )

                def press(token: str, session_id: str = chat.session_id) -> httpx2.Response:
                    # The HTTP request reaches the replica that does not hold the page's socket.
                    return httpx2.post(
                        f"{two.url}/project/action",
                        json={"sessionId": session_id, "action": button.data},
                        cookies={"access_token": token},
                        timeout=30,
                    )

                assert (await asyncio.to_thread(press, bob)).status_code == 403
                gone = await asyncio.to_thread(press, alice, "no-such-session")
                assert gone.status_code == 409 and gone.json()["detail"] == SESSION_ELSEWHERE
                mark = len(chat.events)
                assert (await asyncio.to_thread(press, alice)).status_code == 200
                continued = await chat.finished(mark, within=60)
                assert strip_footer(continued.final_assistant_text()), "continued on replica one"
            finally:
                await chat.close()
        assert "Traceback" not in one.log() + two.log()
