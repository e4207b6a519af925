"""What hosted use puts in front of Chainlit's server while the app loads: the login throttle,
cross-site access (ALLOW_ORIGINS), security headers with the Content-Security-Policy, the
chat history's database (feedback refused with 403), the drain on SIGTERM (`Drain`), and the
relay of button presses to the replica holding the page's socket (`ActionRelay`). A setting
that cannot be followed keeps the strictest choice and is reported, never a crash."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamchat.core.errors import ConfigError
from streamchat.hosting.auth import AuthConfig, request_identity
from streamchat.hosting.login_throttle import LoginLimits, LoginThrottle, LoginThrottleMiddleware
from streamchat.hosting.persistence import Database, feedback_refusals, request_cookies
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
# A button press whose page's socket is on no replica (or that Redis could not pass on).
SESSION_ELSEWHERE = "This page lost its connection to the server. Reload the page and try again."
ACTION_CHANNEL = "streamchat:actions"
_RELAY_WAIT_S = 5.0  # for the replica holding the session to say how the press went
_MAX_ACTION_BODY = 1 << 20
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
            elif previous != signal.SIG_IGN:  # nobody else handles it: the default action
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


# Runs a button press on this replica: (session id, action, requester) -> an HTTP status; 404
# when the session is not here.
ActionRunner = Callable[[str, dict[str, Any], str | None], Awaitable[int]]


class ActionRelay:
    """Button presses (Chainlit's POST /project/action, which names the page's Socket.IO
    session) that reached a replica other than the one holding that session, passed on
    through Redis: every replica listens on one channel, the one holding the session runs the
    press as Chainlit would and answers on the channel the asker waits on."""

    def __init__(self, redis_url: str) -> None:
        import redis.asyncio as redis  # only deployments with REDIS_URL need it

        self._redis: Any = redis.from_url(redis_url, socket_connect_timeout=2)
        self._listener: asyncio.Task[None] | None = None
        self._presses: set[asyncio.Task[None]] = set()

    def start(self, run_here: ActionRunner) -> None:
        """Listen for presses others received (from the app's startup, on its loop)."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(run_here))

    async def _listen(self, run_here: ActionRunner) -> None:
        warned = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(ACTION_CHANNEL)
                warned = False
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    press = asyncio.create_task(self._run(run_here, message["data"]))
                    self._presses.add(press)
                    press.add_done_callback(self._presses.discard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: presses from other replicas wait for it
                if not warned:
                    log.warning("button relay: Redis unavailable (%s)", type(exc).__name__)
                    warned = True
                await asyncio.sleep(2)
            finally:
                await pubsub.aclose()

    async def _run(self, run_here: ActionRunner, data: bytes | str) -> None:
        try:
            request = json.loads(data)
            status = await run_here(
                str(request["session"]), dict(request["action"]), request.get("user")
            )
        except (ValueError, KeyError, TypeError):
            log.warning("button relay: a message that is not a press was ignored")
            return
        if status != 404:  # not here: the replica holding the session answers
            await self._redis.publish(str(request["reply"]), json.dumps({"status": status}))

    async def forward(self, session_id: str, action: object, user: str | None) -> int | None:
        """Have the replica holding `session_id` run the press; its HTTP status, or None when
        no replica answered (the session is gone, or Redis is down)."""
        reply = f"{ACTION_CHANNEL}:reply:{uuid.uuid4().hex}"
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(reply)
            request = {"reply": reply, "session": session_id, "action": action, "user": user}
            await self._redis.publish(ACTION_CHANNEL, json.dumps(request))
            async with asyncio.timeout(_RELAY_WAIT_S):
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        return int(json.loads(message["data"])["status"])
        except Exception as exc:
            log.warning("button relay: no answer (%s)", type(exc).__name__)
        finally:
            await pubsub.aclose()
        return None

    async def aclose(self) -> None:
        for task in (self._listener, *self._presses):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._listener, *self._presses) if t is not None), return_exceptions=True
        )
        await self._redis.aclose()


async def run_action_here(session_id: str, action: dict[str, Any], requester: str | None) -> int:
    """Run a button press for the Socket.IO session `session_id` as Chainlit's action route
    does, if that session is on this replica (404 otherwise, and for an unknown action)."""
    from chainlit.action import Action
    from chainlit.config import config
    from chainlit.context import init_ws_context
    from chainlit.session import WebsocketSession

    session = WebsocketSession.get_by_id(session_id)
    if session is None:
        return 404
    if session.user is not None and session.user.identifier != requester:
        return 403
    context = init_ws_context(session)
    try:
        pressed = Action(**action)
    except TypeError:
        return 400
    callback = config.code.action_callbacks.get(pressed.name)
    if callback is None:
        return 404
    if not context.session.has_first_interaction:
        context.session.has_first_interaction = True
        await context.emitter.init_thread(pressed.name)
    try:
        await callback(pressed)
    except Exception:
        log.exception("a relayed button press failed")
        return 500
    return 200


def _session_here(session_id: str) -> bool:
    from chainlit.session import WebsocketSession

    return WebsocketSession.get_by_id(session_id) is not None


class ActionRelayMiddleware:
    """A button press for a Socket.IO session this replica does not hold is passed to the
    replica that holds it (`ActionRelay`, with REDIS_URL), or refused with a message saying
    to reload the page, instead of Chainlit's 500."""

    def __init__(self, app: ASGIApp, hosting: Hosting) -> None:
        self.app = app
        self.hosting = hosting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.endswith("/project/action")
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": not complete}
            return await receive()

        try:
            payload = json.loads(body) if complete else None
        except ValueError:
            payload = None
        session_id = payload.get("sessionId") if isinstance(payload, dict) else None
        if not isinstance(session_id, str) or _session_here(session_id):
            await self.app(scope, replay, send)
            return
        status = None
        if self.hosting.action_relay is not None:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            user = request_identity(
                headers.get("authorization"), request_cookies(headers.get("cookie", ""))
            )
            status = await self.hosting.action_relay.forward(
                session_id, payload.get("action") if isinstance(payload, dict) else None, user
            )
        if status == 200:
            await _json(send, 200, {"success": True, "response": None})
        elif status == 403:
            await _json(send, 403, {"detail": "This is not your session."})
        else:
            await _json(send, 409, {"detail": SESSION_ELSEWHERE})


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request's body, up to _MAX_ACTION_BODY; whether it is whole."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body") or message["type"] != "http.request":
            return b"".join(chunks), True
        if size > _MAX_ACTION_BODY:
            return b"".join(chunks), False


async def _forbidden(send: Send, detail: str) -> None:
    await _json(send, 403, {"detail": detail})


async def _json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
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
    action_relay: ActionRelay | None = None  # with REDIS_URL: button presses between replicas
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
    try:
        redis_url = reader.url("REDIS_URL")
    except ConfigError:
        redis_url = None  # reported by the settings, which refuse to start without it
    if redis_url is not None:
        hosting.action_relay = ActionRelay(redis_url)
    app.add_middleware(ActionRelayMiddleware, hosting=hosting)
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
