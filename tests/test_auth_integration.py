"""Login on (CHAINLIT_AUTH_SECRET set): password login from the users file, wrong passwords
refused, and the SSE endpoint open only to a logged-in session (cookie or bearer token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from streamchat.users import UsersFile
from tests.harness import AppProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    users = Path(tmp_path_factory.mktemp("auth")) / "users.txt"
    UsersFile(users).add("alice", "correct horse battery")
    env = {
        "CHAINLIT_AUTH_SECRET": "a-test-secret-that-is-long-enough-for-hs256-0123456789",
        "AUTH_USERS_FILE": str(users),
        "AUTH_HEADER": "X-Forwarded-User",
        "OFFLINE_TPS": "500",
        "OFFLINE_TTFT_MS": "5",
    }
    with AppProcess(env) as running:
        yield running


def login(app: AppProcess, password: str) -> httpx2.Response:
    return httpx2.post(
        f"{app.url}/login", data={"username": "alice", "password": password}, timeout=30
    )


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
