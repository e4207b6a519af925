"""Login on (CHAINLIT_AUTH_SECRET set): password login from the users file, wrong passwords
refused, and the SSE endpoint open only to a logged-in session (cookie or bearer token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import socketio

from streamchat.hosting.users import UsersFile
from tests.harness import AppProcess, ChainlitClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    users = Path(tmp_path_factory.mktemp("auth")) / "users.txt"
    UsersFile(users).add("alice", "correct horse battery")
    UsersFile(users).add("bob", "bob's own passphrase")
    env = {
        "CHAINLIT_AUTH_SECRET": "a-test-secret-that-is-long-enough-for-hs256-0123456789",
        "AUTH_USERS_FILE": str(users),
        "AUTH_HEADER": "X-Forwarded-User",
        "OFFLINE_TPS": "500",
        "OFFLINE_TTFT_MS": "5",
    }
    with AppProcess(env) as running:
        yield running


def login(app: AppProcess, password: str, user: str = "alice") -> httpx2.Response:
    return httpx2.post(
        f"{app.url}/login", data={"username": user, "password": password}, timeout=30
    )


async def test_feedback_only_on_answers_in_ones_own_chats(app):
    alice = login(app, "correct horse battery").cookies["access_token"]
    bob = login(app, "bob's own passphrase", user="bob").cookies["access_token"]
    chat = await ChainlitClient(app.url, access_token=alice).connect()
    try:
        answer = await chat.ask("What is a token?")
        answer_id = next(e.data["id"] for e in answer.named("stream_start"))
        thread_id = await chat.started_thread()
    finally:
        await chat.close()

    def feedback(token: str, value: int) -> httpx2.Response:
        return httpx2.put(
            f"{app.url}/feedback",
            json={
                "sessionId": "",
                "feedback": {"forId": answer_id, "threadId": thread_id, "value": value},
            },
            cookies={"access_token": token},
            timeout=30,
        )

    assert feedback(bob, 0).status_code >= 400, "bob cannot rate alice's answer"
    assert feedback(alice, 1).status_code == 200
    thread = httpx2.get(
        f"{app.url}/project/thread/{thread_id}", cookies={"access_token": alice}, timeout=30
    ).json()
    rated = [s for s in thread["steps"] if s["id"] == answer_id]
    assert rated and rated[0]["feedback"]["value"] == 1


def test_wrong_password_is_refused(app):
    assert login(app, "wrong horse").status_code == 401
    assert httpx2.get(f"{app.url}/auth/config", timeout=10).json()["requireLogin"] is True


def test_sse_needs_a_session_and_accepts_cookie_or_bearer(app):
    anonymous = httpx2.get(f"{app.url}/api/stream", params={"prompt": "hi"}, timeout=30)
    assert anonymous.status_code == 401
    assert "Log in first" in anonymous.json()["error"]["message"]

    logged_in = login(app, "correct horse battery")
    assert logged_in.status_code == 200
    token = logged_in.cookies.get("access_token")
    assert token
    with httpx2.Client(base_url=app.url, timeout=30, cookies={"access_token": token}) as http:
        by_cookie = http.get("/api/stream", params={"prompt": "hi"})
        assert by_cookie.status_code == 200 and "event: done" in by_cookie.text
    with httpx2.Client(base_url=app.url, timeout=30) as http:
        by_bearer = http.get(
            "/api/stream", params={"prompt": "hi"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert by_bearer.status_code == 200 and "event: token" in by_bearer.text
        forged = http.get(
            "/api/stream", params={"prompt": "hi"}, headers={"Authorization": "Bearer x.y.z"}
        )
        assert forged.status_code == 401


def test_header_login_from_a_trusted_proxy(app):
    response = httpx2.post(
        f"{app.url}/auth/header", headers={"X-Forwarded-User": "bob"}, timeout=30
    )
    assert response.status_code == 200
    assert response.cookies.get("access_token")


async def test_other_sites_cannot_open_a_socket_or_call_the_api(app):
    token = login(app, "correct horse battery").cookies.get("access_token")
    auth = {"clientType": "webapp", "sessionId": "s-origin", "threadId": "", "userEnv": "{}"}

    async def connect(origin: str) -> bool:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(
                app.url,
                headers={"Origin": origin, "Cookie": f"access_token={token}"},
                socketio_path="/ws/socket.io",
                transports=["websocket"],
                auth=auth,
                wait_timeout=10,
            )
        except socketio.exceptions.ConnectionError:
            return False
        await client.disconnect()
        return True

    assert not await connect("https://evil.example"), "a page on another site is refused"
    assert await connect(app.url), "the app's own pages connect"

    preflight = httpx2.options(
        f"{app.url}/project/threads",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_every_response_carries_the_security_headers(app):
    for path in ("/", "/auth/config", "/public/stream.html"):
        response = httpx2.get(f"{app.url}{path}", timeout=30)
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert response.headers.get("x-frame-options") == "SAMEORIGIN", path


def test_allow_origins_opens_the_app_to_the_listed_site_only(tmp_path):
    users = tmp_path / "users.txt"
    UsersFile(users).add("alice", "correct horse battery")
    env = {
        "CHAINLIT_AUTH_SECRET": "a-test-secret-that-is-long-enough-for-hs256-0123456789",
        "AUTH_USERS_FILE": str(users),
        "ALLOW_ORIGINS": "https://portal.example",
    }
    with AppProcess(env) as other:
        for origin, allowed in (("https://portal.example", True), ("https://evil.example", False)):
            preflight = httpx2.options(
                f"{other.url}/project/threads",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
                timeout=10,
            )
            assert (preflight.headers.get("access-control-allow-origin") == origin) is allowed
        # Socket.IO's long-polling answers too, with the header once: browsers refuse two.
        polling = httpx2.get(
            f"{other.url}/ws/socket.io/",
            params={"EIO": "4", "transport": "polling"},
            headers={"Origin": "https://portal.example"},
            timeout=10,
        )
        assert polling.status_code == 200
        assert polling.headers.get_list("access-control-allow-origin") == ["https://portal.example"]
        assert len(polling.headers.get_list("access-control-allow-credentials")) == 1
