"""PostgreSQL stopped while people chat: the chat goes on, each chat is told once that history
is not being saved, nothing escapes as an unhandled task error, and what was said meanwhile is
in the stored thread once the database is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from streamchat.hosting.persistence import UNSAVED_NOTICE
from streamchat.hosting.users import UsersFile
from streamchat.offline import OfflineServer
from tests.databases import PostgresCluster, postgres_cluster
from tests.harness import AppProcess, ChainlitClient, login, strip_footer
from tests.waiting import eventually

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"


@pytest.fixture
def database() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


def stored_outputs(app: AppProcess, token: str, thread_id: str) -> list[str]:
    response = httpx2.get(
        f"{app.url}/project/thread/{thread_id}", cookies={"access_token": token}, timeout=30
    )
    if response.status_code != 200:
        return []
    return [str(s.get("output") or "") for s in response.json().get("steps") or []]


async def test_a_chat_during_an_outage_is_saved_when_the_database_is_back(
    database, offline_server: OfflineServer, tmp_path: Path
):
    UsersFile(tmp_path / "users.txt").add("alice", "alice's long password")
    env = {
        "CHAINLIT_AUTH_SECRET": SECRET,
        "AUTH_USERS_FILE": str(tmp_path / "users.txt"),
        "DATABASE_URL": database.url,
        "OPENAI_BASE_URL": offline_server.base_url,
    }
    with AppProcess(env) as app:
        token = login(app.url, "alice", "alice's long password")
        chat = await ChainlitClient(app.url, access_token=token).connect()
        try:
            first = await chat.ask("What is a token?")
            assert strip_footer(first.final_assistant_text())
            thread_id = await chat.started_thread()

            await asyncio.to_thread(database.stop)
            second = await chat.ask("What is backpressure?")
            during = strip_footer(second.final_assistant_text())
            assert during, "the chat goes on without its database"
            third = await chat.ask("And time to first token?")
            assert strip_footer(third.final_assistant_text())
            toasts = [e.data for e in chat.events if e.name == "toast"]
            assert toasts == [{"message": UNSAVED_NOTICE, "type": "warning"}], "told once"

            assert await asyncio.to_thread(database.start)
            await eventually(
                lambda: "What is backpressure?" in stored_outputs(app, token, thread_id),
                within=30,
                every=0.2,
                what="the writes queued during the outage are saved",
            )
            outputs = stored_outputs(app, token, thread_id)
            assert "And time to first token?" in outputs
            assert any(during in output for output in outputs), "the answer too"
        finally:
            await chat.close()
        log = app.log()
        assert "never retrieved" not in log and "Traceback" not in log
        assert "database is back" in log
