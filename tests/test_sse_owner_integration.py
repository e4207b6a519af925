"""With login on, an SSE stream belongs to the user who started it: another logged-in user who
knows its id can neither read the rest of it nor stop it."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from streamchat.hosting.users import UsersFile
from tests.harness import AppProcess

pytestmark = pytest.mark.integration


def session(app: AppProcess, user: str, password: str) -> httpx2.Client:
    response = httpx2.post(
        f"{app.url}/login", data={"username": user, "password": password}, timeout=30
    )
    assert response.status_code == 200
    token = response.cookies["access_token"]
    return httpx2.Client(base_url=app.url, timeout=30, cookies={"access_token": token})


def test_another_user_cannot_resume_or_stop_a_users_stream(tmp_path: Path):
    users = tmp_path / "users.txt"
    UsersFile(users).add("alice", "correct horse battery")
    UsersFile(users).add("bob", "bob's own passphrase")
    env = {
        "CHAINLIT_AUTH_SECRET": "a-test-secret-that-is-long-enough-for-hs256-0123456789",
        "AUTH_USERS_FILE": str(users),
        "OFFLINE_TPS": "500",
        "OFFLINE_TTFT_MS": "5",
    }
    with (
        AppProcess(env) as app,
        session(app, "alice", "correct horse battery") as alice,
        session(app, "bob", "bob's own passphrase") as bob,
    ):
        answer = alice.get("/api/stream", params={"prompt": "What is a token?"})
        ids = [line[4:] for line in answer.text.splitlines() if line.startswith("id: ")]
        first, stream_id = ids[0], ids[0].split(":")[0]
        assert "x-stream-token" not in answer.headers, "a user's streams need no token"
        assert bob.get("/api/stream", headers={"Last-Event-ID": first}).status_code == 404
        assert bob.delete(f"/api/stream/{stream_id}").status_code == 404
        again = alice.get("/api/stream", headers={"Last-Event-ID": first})
        assert again.status_code == 200
        assert [line[4:] for line in again.text.splitlines() if line.startswith("id: ")] == ids[1:]
