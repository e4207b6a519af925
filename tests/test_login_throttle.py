"""Password guessing is slowed down: wrong passwords are counted per user name and per client
address, in this process or in Redis (shared by replicas), and a throttled login is refused
with 429 before its password is checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from streamchat.hosting.login_throttle import (
    LoginLimits,
    LoginThrottle,
    LoginThrottled,
    MemoryFailures,
    RedisFailures,
)
from streamchat.hosting.users import UsersFile
from tests.databases import redis_server
from tests.harness import AppProcess


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, max_failures: int = 3) -> LoginThrottle:
    return LoginThrottle(LoginLimits(max_failures, 60.0), MemoryFailures(clock))


async def test_a_user_name_is_throttled_after_too_many_wrong_passwords_from_anywhere():
    clock = Clock()
    guard = throttle(clock)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        await guard.check("alice", address)
        await guard.failed("alice", address)
    with pytest.raises(LoginThrottled) as refused:
        await guard.check("Alice", "10.0.0.4")
    assert 0 < refused.value.retry_after_s <= 60
    assert "Try again in" in str(refused.value)
    await guard.check("bob", "10.0.0.4")  # another name from another address is not affected
    clock.now += 61
    await guard.check("alice", "10.0.0.4")  # the window ended


async def test_an_address_is_throttled_after_too_many_wrong_passwords_for_any_names():
    guard = throttle(Clock())
    for name in ("alice", "bob", "carol"):
        await guard.failed(name, "10.0.0.9")
    with pytest.raises(LoginThrottled):
        await guard.check("dave", "10.0.0.9")
    await guard.check("dave", "10.0.0.10")


async def test_a_right_password_clears_its_users_count():
    guard = throttle(Clock())
    for address in ("10.0.0.1", "10.0.0.2"):
        await guard.failed("alice", address)
    await guard.succeeded("alice", "10.0.0.3")
    await guard.failed("alice", "10.0.0.4")
    await guard.check("alice", "10.0.0.5")


async def test_zero_means_no_throttle():
    guard = LoginThrottle(LoginLimits(0, 60.0), MemoryFailures(Clock()))
    for _ in range(20):
        await guard.failed("alice", "10.0.0.1")
    await guard.check("alice", "10.0.0.1")


def test_limits_are_read_from_the_environment():
    limits = LoginLimits.from_env({"LOGIN_MAX_FAILURES": "5", "LOGIN_WINDOW_S": "90"})
    assert (limits.max_failures, limits.window_s, limits.redis_url) == (5, 90.0, None)
    assert LoginLimits.from_env({}).max_failures == 10
    assert not LoginLimits.from_env({"LOGIN_MAX_FAILURES": "0"}).enabled


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def test_replicas_count_the_same_failures_in_redis(redis_url):
    limits = LoginLimits(3, 60.0, redis_url)
    one, two = LoginThrottle(limits), LoginThrottle(limits)
    try:
        await one.failed("erin", "10.1.0.1")
        await two.failed("erin", "10.1.0.2")
        await one.failed("erin", "10.1.0.3")
        with pytest.raises(LoginThrottled) as refused:
            await two.check("erin", "10.1.0.4")
        assert 0 < refused.value.retry_after_s <= 60
        await two.succeeded("erin", "10.1.0.4")
        await one.check("erin", "10.1.0.5")
    finally:
        await one.aclose()
        await two.aclose()


async def test_an_unreachable_redis_does_not_lock_anybody_out():
    guard = LoginThrottle(LoginLimits(1, 60.0), RedisFailures("redis://127.0.0.1:1/0"))
    try:
        await guard.failed("alice", "10.0.0.1")
        await guard.check("alice", "10.0.0.1")
    finally:
        await guard.aclose()


@pytest.mark.integration
def test_the_login_page_refuses_with_429_on_every_replica_after_too_many_failures(
    redis_url, tmp_path: Path
):
    users = tmp_path / "users.txt"
    UsersFile(users).add("alice", "correct horse battery")
    env = {
        "CHAINLIT_AUTH_SECRET": "a-test-secret-that-is-long-enough-for-hs256-0123456789",
        "AUTH_USERS_FILE": str(users),
        "REDIS_URL": redis_url,
        "LOGIN_MAX_FAILURES": "3",
        "DATABASE_URL": "off",
    }

    def login(app: AppProcess, password: str) -> httpx2.Response:
        return httpx2.post(
            f"{app.url}/login", data={"username": "alice", "password": password}, timeout=30
        )

    with AppProcess(env) as one, AppProcess(env) as two:
        assert login(one, "correct horse battery").status_code == 200
        for _ in range(3):
            assert login(one, "wrong horse").status_code == 401
        refused = login(two, "correct horse battery")
        assert refused.status_code == 429, "the other replica knows, and checks no password"
        assert int(refused.headers["retry-after"]) > 0
        assert "Too many failed logins" in refused.text


def test_the_middleware_counts_refusals_and_refuses_before_the_route():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from streamchat.hosting.login_throttle import LoginThrottleMiddleware

    checked: list[str] = []

    async def login(request: Request) -> JSONResponse:
        form = await request.form()
        checked.append(str(form.get("password")))
        ok = form.get("password") == "right one"
        return JSONResponse({}, status_code=200 if ok else 401)

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    app.add_middleware(
        LoginThrottleMiddleware, throttle=LoginThrottle(LoginLimits(3, 60.0), MemoryFailures())
    )
    client = TestClient(app)
    assert client.post("/login", data={"username": "a", "password": "x"}).status_code == 401
    # Not a form: the route answers, and the address's count goes up all the same.
    assert client.post("/login", content=b"\xff not a form").status_code == 401
    assert client.post("/login", data={"username": "a", "password": "y"}).status_code == 401
    refused = client.post("/login", data={"username": "a", "password": "right one"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "right one" not in checked, "a throttled attempt never reaches the password check"
