"""What hosted use puts in front of Chainlit's server while the app loads: the login throttle,
cross-site access (ALLOW_ORIGINS), security headers with the Content-Security-Policy, the
chat history's database (feedback refused with 403), and the drain on SIGTERM (`Drain`). A
setting that cannot be followed keeps the strictest choice and is reported, never a crash."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamchat.core.errors import ConfigError
from streamchat.hosting.auth import AuthConfig
from streamchat.hosting.login_throttle import LoginLimits, LoginThrottle, LoginThrottleMiddleware
from streamchat.hosting.persistence import Database, feedback_refusals
from streamchat.hosting.security import (
    ContentSecurityPolicy,
    OriginPolicy,
    SecurityHeadersMiddleware,
    apply_origin_policy,
)
from streamchat.settings import ConfigReader

log = logging.getLogger("streamchat.hosting.setup")

DRAINING_NOTICE = (
    "This server is restarting, so it takes no new messages. Send yours again in a moment: "
    "the page reconnects to another server."
)
# After a drain, how long cancelled answers get to save themselves as interrupted.
_SAVE_GRACE_S = 5.0


class Interruptible(Protocol):
    """An answer's sink that can be told the server, not the user, is cutting it off."""

    def interrupt(self, cause: str) -> None: ...


class Drain:
    """The answers this process is writing, and what SIGTERM does to them.

    On SIGTERM (a deploy, `docker stop`), new answers are refused (`draining`), the answers
    being written get `timeout_s` to end, those still running are cut off as interrupted
    (saved with Continue, see ChainlitSink.interrupt), and only then does the server shut down
    as it would have (uvicorn's own handler, which closes the sockets). A second SIGTERM stops
    at once. Works the same whichever uvicorn server runs (speed-ups on or off): it chains the
    signal handler the server installed.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self._answers: dict[asyncio.Task[Any], list[Interruptible]] = {}

    def track(self, sink: Interruptible) -> None:
        """`sink` is written by the current task (an answer, a Continue, a Retry)."""
        task = asyncio.current_task()
        if task is None:
            return
        if task not in self._answers:
            self._answers[task] = []
            task.add_done_callback(self._forget)
        self._answers[task].append(sink)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._answers.pop(task, None)

    @property
    def answers(self) -> int:
        return sum(1 for task in self._answers if not task.done())

    async def drain(self) -> None:
        """Refuse new answers, let the running ones end within `timeout_s`, cut off the rest."""
        self.draining = True
        running = [task for task in self._answers if not task.done()]
        log.info("draining: %d answers being written", len(running))
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.timeout_s)
        if not late:
            return
        for task in late:
            for sink in self._answers.get(task, ()):
                sink.interrupt("this server restarted")
            task.cancel()
        _, unsaved = await asyncio.wait(late, timeout=_SAVE_GRACE_S)
        log.warning("drain: %d answers saved as interrupted, %d not saved", len(late), len(unsaved))

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Drain on SIGTERM, then hand the signal to the handler installed before (uvicorn's).
        False when signals cannot be handled here (not the main thread)."""
        previous = signal.getsignal(signal.SIGTERM)

        def hand_on(sig: int) -> None:
            if callable(previous):
                previous(sig, None)
            else:  # nobody else handles it: the default action, as without a drain
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)

        async def drain_then_hand_on(sig: int) -> None:
            try:
                await self.drain()
            finally:
                hand_on(sig)

        def on_sigterm(sig: int, _frame: object) -> None:
            if self.draining:
                hand_on(sig)  # a second SIGTERM: stop now
                return
            self.draining = True
            loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_hand_on(sig)))

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread
            return False
        return True


class FeedbackRefusalMiddleware:
    """Answers 403 to a feedback request the data layer refused (another user's answer):
    Chainlit's route turns the refusal into a 500, and its DELETE route lets it escape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).endswith("/feedback"):
            await self.app(scope, receive, send)
            return
        refusals: list[str] = []
        token = feedback_refusals.set(refusals)
        started = False

        async def send_refusal(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refusals and message["status"] == 500:
                    await _forbidden(send, refusals[0])
                    return
            elif refusals and message["type"] == "http.response.body":
                return  # the 500's body: replaced
            await send(message)

        try:
            await self.app(scope, receive, send_refusal)
        except PermissionError as exc:
            if started:
                raise
            await _forbidden(send, str(exc))
        finally:
            feedback_refusals.reset(token)


async def _forbidden(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Hosting:
    """What was installed, and what could not be followed (shown in each chat)."""

    auth: AuthConfig
    database: Database | None = None  # with login on: where history is kept
    database_error: str | None = None
    origin_error: str | None = None  # a bad ALLOW_ORIGINS: only the app's own pages may connect
    drain: Drain = field(default_factory=Drain)
    partial_save_s: float = 1.0  # PARTIAL_SAVE_S
    problems: list[str] = field(default_factory=list)


def install_hosting(
    environ: Mapping[str, str], *, app: Any, sio: Any, cors_origins: list[str]
) -> Hosting:
    """Add the middleware to `app` (Chainlit's server) and the origin check to `sio` (its
    Socket.IO server), before Chainlit serves a request."""
    hosting = Hosting(auth=AuthConfig.from_env(environ))
    reader = ConfigReader(environ)
    try:
        hosting.drain = Drain(reader.number("DRAIN_TIMEOUT_S"))
    except ConfigError as exc:
        hosting.problems.append(f"{exc} The default drain applies.")
    try:
        hosting.partial_save_s = reader.number("PARTIAL_SAVE_S")
    except ConfigError as exc:
        hosting.problems.append(f"{exc} Answers are saved every second as they stream.")
    if hosting.auth.enabled:
        try:
            limits = LoginLimits.from_env(environ)
        except ConfigError as exc:
            limits = LoginLimits()
            hosting.problems.append(f"{exc} The default login throttle applies.")
        # Too many wrong passwords for a name or from an address: 429 before any is checked.
        app.add_middleware(LoginThrottleMiddleware, throttle=LoginThrottle(limits))
    try:
        origins = OriginPolicy.from_env(environ, login=hosting.auth.enabled)
    except ConfigError as exc:
        origins, hosting.origin_error = OriginPolicy(), str(exc)  # this app's pages only
    apply_origin_policy(origins, cors_origins=cors_origins, sio=sio)
    try:
        content_policy = ContentSecurityPolicy.from_env(environ)
    except ConfigError as exc:
        content_policy = ContentSecurityPolicy()  # the strictest: images from this app only
        hosting.problems.append(f"{exc} Answers show images from this app only.")
    app.add_middleware(SecurityHeadersMiddleware, policy=content_policy)
    # Chat history needs login: with it, a database (a SQLite file unless DATABASE_URL says).
    if hosting.auth.enabled:
        try:
            hosting.database = Database.from_env(environ)
        except ConfigError as exc:
            hosting.database_error = str(exc)
        app.add_middleware(FeedbackRefusalMiddleware)
    return hosting
