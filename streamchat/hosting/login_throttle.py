"""Password guessing slowed down: after `max_failures` wrong passwords for one user name, or from
one client address, within `window_s`, further attempts for it are refused until the window
ends, before any password is checked.

Failures are counted in this process, or in Redis when `REDIS_URL` is set, so every replica
counts the same attempts. If Redis cannot be reached, logins are not throttled (fail open, a
warning at most once a minute): a broken store must not lock everybody out. A correct password
clears its user's count; an address's count runs out with its window.

`LoginThrottleMiddleware` applies it in front of Chainlit's `POST /login`: Chainlit swallows
any exception its password callback raises (it logs a traceback and answers 401), so the
refusal, a 429 with Retry-After, has to come before the route.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamchat.core.errors import StreamChatError
from streamchat.hosting.limits import wait_text
from streamchat.settings import ConfigReader

log = logging.getLogger("streamchat.hosting.login_throttle")

KEY_PREFIX = "streamchat:login:"


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Wrong passwords allowed per user name and per address within `window_s` (0: no throttle)."""

    max_failures: int = 10
    window_s: float = 300.0
    redis_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LoginLimits:
        read = ConfigReader(environ)
        return cls(
            max_failures=read.whole("LOGIN_MAX_FAILURES") or 0,
            window_s=read.number("LOGIN_WINDOW_S"),
            redis_url=read.url("REDIS_URL"),
        )

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0


class LoginThrottled(StreamChatError):
    """Too many wrong passwords; `retry_after_s` says when to try again."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(1.0, retry_after_s)
        super().__init__(f"Too many failed logins. Try again in {wait_text(self.retry_after_s)}.")


class FailureStore(Protocol):
    async def failures(self, key: str) -> tuple[int, float]:
        """The failures counted for `key` in its window, and seconds until the window ends."""
        ...

    async def add_failure(self, key: str, window_s: float) -> None: ...

    async def clear(self, key: str) -> None: ...

    async def aclose(self) -> None: ...


class MemoryFailures:
    """Fixed windows in this process: a window starts at its key's first failure."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[int, float]] = {}  # key -> (count, window end)

    async def failures(self, key: str) -> tuple[int, float]:
        count, ends = self._windows.get(key, (0, 0.0))
        left = ends - self._clock()
        return (count, left) if left > 0 else (0, 0.0)

    async def add_failure(self, key: str, window_s: float) -> None:
        now = self._clock()
        if len(self._windows) > 100_000:  # a flood of names: drop the windows that ended
            self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
        count, ends = self._windows.get(key, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + window_s
        self._windows[key] = (count + 1, ends)

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    async def aclose(self) -> None:
        return None


class RedisFailures:
    """Fixed windows in Redis: INCR, with the key's expiry set at its first failure."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # only deployments with REDIS_URL need it

        self._redis: Any = redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def failures(self, key: str) -> tuple[int, float]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(KEY_PREFIX + key)
            pipe.pttl(KEY_PREFIX + key)
            value, ttl_ms = await pipe.execute()
        return int(value or 0), max(0.0, int(ttl_ms) / 1000)

    async def add_failure(self, key: str, window_s: float) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(KEY_PREFIX + key)
            pipe.expire(KEY_PREFIX + key, math.ceil(window_s), nx=True)
            await pipe.execute()

    async def clear(self, key: str) -> None:
        await self._redis.delete(KEY_PREFIX + key)

    async def aclose(self) -> None:
        await self._redis.aclose()


class LoginThrottle:
    """`await throttle.check(user, address)` before checking a password (raises
    LoginThrottled), then `failed(...)` or `succeeded(...)` with the outcome."""

    def __init__(self, limits: LoginLimits, store: FailureStore | None = None) -> None:
        self.limits = limits
        self.store: FailureStore = store or (
            RedisFailures(limits.redis_url) if limits.redis_url else MemoryFailures()
        )
        self._last_warning = -math.inf

    @staticmethod
    def _keys(user: str, address: str | None) -> list[str]:
        # User names are compared as typed at login; case-folded so "Alice" counts for "alice".
        return [f"user:{user.casefold()[:200]}", f"ip:{address or 'unknown'}"]

    async def check(self, user: str, address: str | None) -> None:
        if not self.limits.enabled:
            return
        for key in self._keys(user, address):
            count, left = await self._guarded(self.store.failures(key), (0, 0.0))
            if count >= self.limits.max_failures:
                log.warning("login throttled (%s)", key.split(":", 1)[0])
                raise LoginThrottled(left or self.limits.window_s)

    async def failed(self, user: str, address: str | None) -> None:
        if self.limits.enabled:
            for key in self._keys(user, address):
                await self._guarded(self.store.add_failure(key, self.limits.window_s), None)

    async def succeeded(self, user: str, address: str | None) -> None:
        if self.limits.enabled:
            await self._guarded(self.store.clear(self._keys(user, address)[0]), None)

    async def _guarded(self, operation: Any, fallback: Any) -> Any:
        try:
            return await operation
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("logins not throttled: the store failed (%s)", type(exc).__name__)
            return fallback

    async def aclose(self) -> None:
        await self.store.aclose()


# A login form is a name and a password; anything much larger is not one.
_MAX_LOGIN_BODY = 64 * 1024


class LoginThrottleMiddleware:
    """Counts the outcome of every `POST /login` (401: a wrong password, 200: a right one) and
    refuses throttled attempts with 429 before the password is checked."""

    def __init__(self, app: ASGIApp, throttle: LoginThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not str(scope.get("path", "")).endswith("/login")
            or not self.throttle.limits.enabled
        ):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > _MAX_LOGIN_BODY:
                await _answer(send, 413, "The login form is too large.")
                return
            if not message.get("more_body"):
                break
        replayed: list[Message] = [{"type": "http.request", "body": bytes(body)}]

        async def replay() -> Message:
            return replayed.pop() if replayed else await receive()

        try:
            form = await Request(scope, _once(bytes(body))).form()
            user = str(form.get("username") or "")
        except Exception:  # not a form: the route refuses it; counted by address only
            user = ""
        client = scope.get("client")
        address = str(client[0]) if client else None
        try:
            await self.throttle.check(user, address)
        except LoginThrottled as exc:
            await _answer(send, 429, str(exc), retry_after=exc.retry_after_s)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, replay, watch)
        if status and status[0] == 401:
            await self.throttle.failed(user, address)
        elif status and status[0] < 300:
            await self.throttle.succeeded(user, address)


def _once(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body}

    return receive


async def _answer(send: Send, status: int, detail: str, *, retry_after: float = 0) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", str(math.ceil(retry_after)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})
