"""Chainlit adapter: maps Chainlit events to the streamchat core and back. No logic lives here."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.context import context
from chainlit.data.base import BaseDataLayer
from chainlit.server import app as server_app
from chainlit.server import sio
from chainlit.types import ThreadDict
from chainlit.utils import utc_now
from starlette.datastructures import Headers

try:  # the dict of every session's messages Chainlit keeps (see on_chat_end)
    from chainlit.chat_context import chat_contexts as _chainlit_chat_contexts
except ImportError:
    _chainlit_chat_contexts = None  # type: ignore[assignment]

from streamchat.agent import steps as agent_ui
from streamchat.chat import ChatSession, retried_question
from streamchat.classroom import ui as classroom_ui
from streamchat.core.errors import ConfigError
from streamchat.core.paint import PAINTED_EVENT, PaintAcks
from streamchat.core.segments import SEGMENT_CHARS, StreamingAnswers
from streamchat.core.sinks import ChainlitSink
from streamchat.faces.chat_settings import settings_widgets
from streamchat.faces.web import mount
from streamchat.hosting.limits import LimitExceeded, client_address, limit_key
from streamchat.hosting.persistence import (
    UNSAVED_NOTICE,
    StreamchatDataLayer,
    conversation_from_steps,
    last_answer_id,
)
from streamchat.hosting.setup import DRAINING_NOTICE, install_hosting, run_action_here
from streamchat.languages import DEFAULT_LANGUAGE, ui_language
from streamchat.logs import configure_logging
from streamchat.runtime import Runtime, settings_or_error
from streamchat.settings import SpeedupChoices, install_forwarded_allow_ips, load_env_file
from streamchat.speedups import (
    Speedups,
    browser_updates,
    freeze_startup_heap,
    install,
    log_status,
)
from streamchat.speedups.eventloop import loop_name

log = logging.getLogger("streamchat.app")

# What a message is told when its chat failed to start (the reason is in the log).
NOT_STARTED = "This chat did not start, so the message was not sent: reload the page."

# What is set while the app loads (the environment over `.env`), read once; each setting below
# is parsed from it by streamchat.settings' reader, as Settings parses its own at startup.
_environ = load_env_file()

# The speed-ups (streamchat/speedups), before `chainlit run` makes its loop and server; none
# with STREAM_SPEEDUPS=off. Which are on is logged once at startup.
_speedup_choices = SpeedupChoices.from_env(_environ)
install(
    Speedups(
        enabled=_speedup_choices.enabled,
        event_loop=_speedup_choices.event_loop,
        ws_per_message_deflate=_speedup_choices.ws_per_message_deflate,
    ),
    sio=sio,
)
# Settings read at import that could not be followed: logged at startup, shown in each chat.
_setup_problems = list(_speedup_choices.problems)
# Whose X-Forwarded-For uvicorn believes (rate limits count per client address): set before
# `chainlit run` makes uvicorn's configuration, which reads it.
install_forwarded_allow_ips(_environ)

# Login throttle, cross-site access, security headers and the history's database, in place
# before Chainlit serves a request; login callbacks must exist when Chainlit starts.
_hosting = install_hosting(
    _environ, app=server_app, sio=sio, cors_origins=chainlit_config.project.allow_origins
)
_setup_problems += _hosting.problems
_auth = _hosting.auth
_origin_error = _hosting.origin_error
_database, _database_error = _hosting.database, _hosting.database_error
_drain = _hosting.drain  # SIGTERM: answers end or are saved as interrupted, then the server stops
if _auth.enabled:

    @cl.password_auth_callback
    async def password_login(username: str, password: str) -> cl.User | None:
        # scrypt is deliberately slow: off the event loop, so streams keep flowing.
        if await asyncio.to_thread(_auth.check_password, username, password):
            return cl.User(identifier=username, metadata={"provider": "password"})
        return None

    if _auth.header:

        @cl.header_auth_callback
        async def header_login(headers: Headers) -> cl.User | None:
            identity = _auth.header_identity(headers)
            return (
                cl.User(identifier=identity, metadata={"provider": "header"}) if identity else None
            )


_data_layer: StreamchatDataLayer | None = None


@cl.data_layer  # type: ignore[arg-type]  # None is allowed: no history
def data_layer() -> BaseDataLayer | None:
    # Registered always, so Chainlit never builds a data layer of its own from DATABASE_URL.
    global _data_layer
    if _database is not None and _data_layer is None:
        _data_layer = StreamchatDataLayer(_database, partial_save_s=_hosting.partial_save_s)
    return _data_layer


_runtime: Runtime | None = None
_config_error: ConfigError | None = None


@cl.on_app_startup
async def startup() -> None:
    global _runtime, _config_error
    _runtime, _config_error = settings_or_error()
    configure_logging(_runtime.settings.log_level if _runtime else "INFO")
    for setup_problem in _setup_problems:
        log.error("%s", setup_problem)
    log.info("event loop: %s", loop_name(asyncio.get_running_loop()))
    log_status(log)
    _drain.install(asyncio.get_running_loop())
    if _hosting.action_relay is not None:  # button presses for this replica's pages
        _hosting.action_relay.start(run_action_here)
    mount(server_app, runtime=_runtime, config_error=_config_error, require_login=_auth.enabled)
    if _origin_error is not None:
        log.error("%s Only this app's own pages may connect.", _origin_error)
    if _runtime is not None:
        _paint_acks.max_hold_s = _runtime.settings.stream_paint_hold_ms / 1000
        await _runtime.start()
    await _prepare_database()
    # Last: what start-up built lives as long as the process (speed-ups).
    if frozen := freeze_startup_heap():
        log.info("garbage collector: %d objects from start-up frozen", frozen)


async def _prepare_database() -> None:
    global _database_error, _database, _data_layer
    if _database_error is not None:
        log.error("chat history is off: %s", _database_error)
        return
    layer = data_layer()
    if not isinstance(layer, StreamchatDataLayer):
        return
    try:
        # Unreachable: writes wait in memory, the schema is prepared when it answers.
        reachable = await layer.prepare()
    except Exception as exc:  # bad credentials, read-only file...
        _database_error = "the database could not be prepared, so chats are not being saved."
        log.error(
            "cannot prepare the database at %s: %s", layer.database.public_url, type(exc).__name__
        )
        # Chainlit asks for the data layer after start-up: it gets none, so login and chat
        # work without history instead of failing on every write.
        _database, _data_layer = None, None
    else:
        if reachable:
            log.info("chat history is stored in %s", layer.database.public_url)


@cl.on_app_shutdown
async def shutdown() -> None:
    if _hosting.action_relay is not None:
        await _hosting.action_relay.aclose()
    if _runtime is not None:
        await _runtime.aclose()


async def _show_error(text: str, actions: list[cl.Action] | None = None) -> None:
    message = await cl.ErrorMessage(content=text).send()
    for action in actions or ():
        await action.send(for_id=message.id)


def _action(name: str, label: str, payload: dict[str, Any] | None = None) -> cl.Action:
    return cl.Action(name=name, label=label, payload=payload or {})


def _answer_actions(chat: ChatSession) -> Callable[[str, str], cl.Action]:
    """The buttons under an answer. Retry carries its question: a replica that has not seen
    the failed answer (the page's socket moved after a failover) can still ask it again."""

    def make(name: str, label: str) -> cl.Action:
        question = chat.history.last_question() if name == "retry" else None
        return _action(name, label, {"question": question} if question else None)

    return make


# Pages with public/paint_ack.js say which stream updates they have painted (core/paint.py).
_paint_acks = PaintAcks()


@sio.on(PAINTED_EVENT)
async def stream_painted(_sid: str, data: object = None) -> None:
    _paint_acks.receive(data)


def _sink(chat: ChatSession, message: cl.Message | None = None) -> ChainlitSink:
    message = message or cl.Message(content="")
    part_chars = _runtime.settings.stream_part_chars if _runtime is not None else 0
    # The answers streaming in this chat: a long answer is cut into parts only while alone.
    answers: StreamingAnswers = cl.user_session.get("streaming_answers") or StreamingAnswers()
    cl.user_session.set("streaming_answers", answers)

    def split(part: Any) -> cl.Message | None:
        return _split_message(part) if answers.alone(sink) else None

    sink = ChainlitSink(
        message,
        notify_error=_show_error,
        make_action=_answer_actions(chat),
        show_metrics=chat.options.show_metrics,
        updates=_socket_updates(),
        paint=_paint_acks.track(message.id),
        thinking=_thinking_step if chat.options.show_reasoning else None,
        checkpoint=_checkpoint(message),
        checkpoint_every_s=_hosting.partial_save_s,
        split=split if part_chars > 0 else None,
        segment_chars=part_chars or SEGMENT_CHARS,
    )
    answers.add(sink)
    _drain.track(sink)
    return sink


def _split_message(message: cl.Message) -> cl.Message:
    """A long answer goes on in a new message (core/segments.py): the part shown so far, as a
    message of its own under the id the page knows, and `message` under a new id."""
    finished = cl.Message(
        content=message.content,
        id=message.id,
        author=message.author,
        parent_id=message.parent_id,
        created_at=message.created_at,
        metadata=dict(message.metadata or {}),
    )
    message.id = str(uuid.uuid4())
    message.content = ""
    message.streaming = False  # its next text is the new message's stream_start
    message.created_at = utc_now()  # stored after the part before it
    message.persisted = False
    return finished


def _checkpoint(message: cl.Message) -> Callable[[dict[str, Any]], Awaitable[None]] | None:
    """Saves `message` as it stands (an answer being written), when history is on."""
    layer = data_layer()
    if not isinstance(layer, StreamchatDataLayer):
        return None

    async def save(metadata: dict[str, Any]) -> None:
        # Created when its first text is saved (send() would set it only at the end): it is
        # stored after the question it answers.
        message.created_at = message.created_at or utc_now()
        step = message.to_dict()
        step["metadata"] = metadata
        await layer.save_partial(step)

    return save


def _thinking_step() -> cl.Step:
    """Where a reasoning model's thinking streams: a step above the answer, open while it
    streams and collapsed once it ends (the sink names it with the thinking's duration)."""
    parent = context.current_step
    return cl.Step(
        name="reasoning",  # Chainlit shows "Using reasoning" while it streams
        type="llm",
        parent_id=parent.id if parent is not None else None,
        default_open=True,
        auto_collapse=True,
        show_input=False,
    )


def _socket_updates() -> Any | None:
    """The browser's update channel (Chainlit's own events for the chat go through it too), or
    None for Chainlit's own emit (speed-ups off)."""
    return browser_updates(sio, context.session)


@cl.set_chat_profiles
async def chat_profiles(
    _user: cl.User | None = None, language: str | None = None
) -> list[cl.ChatProfile]:
    settings = _runtime.settings if _runtime is not None else None
    source = classroom_ui.AnswerSource.of(settings) if settings is not None else None
    configured = settings.language if settings is not None else DEFAULT_LANGUAGE
    return classroom_ui.chat_profiles(source, ui_language(configured, language))


@cl.on_chat_start
async def on_chat_start() -> None:
    await _open_chat(None)


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    if _data_layer is not None:  # an answer whose server was lost: shown interrupted
        await _data_layer.settle_unfinished_answers(thread)
    await _open_chat(thread)


async def _open_chat(thread: ThreadDict | None) -> None:
    """A new chat, or a stored one resumed with its history and settings."""
    # Before the first await: a message sent while the chat is still starting (the model list
    # can take seconds) waits for it instead of finding no chat.
    ready = _chat_ready()
    ready.clear()
    cl.user_session.set("chat_start_task", asyncio.current_task())
    _socket_updates()  # Chainlit's own events for this chat take the fast way from the start
    try:
        if _runtime is None:
            await _show_error(f"streamchat is not configured correctly: {_config_error}")
            return
        chat, problem = await _runtime.new_chat()
        if thread is not None:
            chat.history = conversation_from_steps(thread.get("steps") or [])
            try:
                chat.options = chat.options.updated(context.session.chat_settings or {})
            except ConfigError:
                log.warning("stored chat settings no longer apply; using the defaults")
        cl.user_session.set("chat", chat)
        models = await _runtime.available_models()
        widgets = settings_widgets(chat.options, models, chat.guardrail_panel)
        if classroom_ui.is_classroom():
            widgets += classroom_ui.settings_widgets(chat, models)
            await classroom_ui.start()
        if agent_ui.is_agent():
            await agent_ui.start(_runtime)
        await cl.ChatSettings(widgets).send()  # type: ignore[arg-type]
        # The Continue button of an answer that was cut off, back under it.
        steps = thread.get("steps") or [] if thread is not None else []
        if chat.history.interrupted_answer() and (answer_id := last_answer_id(steps)):
            await _action("continue", "Continue").send(for_id=answer_id)
        if problem is not None:
            await _show_error(problem.user_message)
        if _database_error is not None and _auth.enabled:
            await _show_error(f"Chat history is unavailable: {_database_error}")
        elif _data_layer is not None and _data_layer.down:
            _data_layer.told(context.session.id)  # no second notice at its first write
            await _show_error(UNSAVED_NOTICE)
        if _origin_error is not None:
            await _show_error(
                f"{_origin_error} Until it is fixed, only this app's own pages may connect."
            )
        for setup_problem in _setup_problems:
            await _show_error(setup_problem)
    finally:
        ready.set()


def _chat_ready() -> asyncio.Event:
    """Set once the session's chat has started. Made by whichever comes first: the chat's
    start, or a message that arrives before the start has run at all (Chainlit starts the chat
    in a task of its own, and a quick user's first message can be handled first)."""
    ready: asyncio.Event | None = cl.user_session.get("chat_ready")
    if ready is None:
        ready = asyncio.Event()
        cl.user_session.set("chat_ready", ready)
    return ready


async def _current_chat(*, for_message: bool = False) -> ChatSession | None:
    """The chat, once it has started (every session starts or resumes one as it connects;
    Stop cancels the wait); None when its start failed. `for_message`: the caller is a
    message's task, which Chainlit opened with task_start (the page shows it running: Stop
    button, "Using ..." on a step)."""
    ready = _chat_ready()
    if not ready.is_set():
        await ready.wait()
        if for_message:
            await _running_again_after_chat_start()
    return cl.user_session.get("chat")


async def _running_again_after_chat_start() -> None:
    """A message sent while the chat was starting. Chainlit runs the start as a task of its
    own that sends task_end when it returns, which is now, while this message's answer is
    about to stream: the page would drop the Stop button and show a thinking step as done.
    Once the start has ended, the page is told again that this message's task runs."""
    starting = cl.user_session.get("chat_start_task")
    if isinstance(starting, asyncio.Task) and starting is not asyncio.current_task():
        await asyncio.wait([starting])
    await context.emitter.task_start()


@cl.on_settings_update
async def on_settings_update(values: dict[str, object]) -> None:
    chat = await _current_chat()
    if chat is None:
        return
    try:
        chat.options = chat.options.updated(values)
    except ConfigError as exc:
        await _show_error(f"Settings not applied: {exc}")
    if classroom_ui.is_classroom():
        for problem in classroom_ui.state().apply(values):
            await _show_error(f"Settings not applied: {problem}")


@cl.on_message
async def on_message(message: cl.Message) -> None:
    chat = await _current_chat(for_message=True)
    if chat is None:
        if _runtime is None:
            await _show_error(f"streamchat is not configured correctly: {_config_error}")
        else:
            await _show_error(NOT_STARTED)
        return
    # A Stop cancels this task; the core finishes the message, keeps the partial answer in the
    # history and closes the upstream response before the cancellation goes on.
    if classroom_ui.is_classroom():
        await _within_limits(lambda: _classroom(chat).handle(message.content, message.command))
        return
    if agent_ui.is_agent() and _runtime is not None:
        runtime = _runtime
        await _within_limits(lambda: agent_ui.answer(runtime, chat, message.content, _sink(chat)))
        return
    await _within_limits(lambda: chat.answer(message.content, _sink(chat)))


async def _within_limits(work: Callable[[], Awaitable[object]]) -> None:
    """Run `work` if the user's rate limits allow it (else say why and how long to wait),
    holding a streaming slot meanwhile and charging the tokens its answers used."""
    if _drain.draining:
        await _show_error(DRAINING_NOTICE)
        return
    limiter = _runtime.limiter if _runtime is not None else None
    if limiter is None:
        await work()
        return
    user = context.session.user
    address = client_address((context.session.environ or {}).get("asgi.scope"))
    try:
        lease = await limiter.admit(limit_key(user.identifier if user else None, address))
    except LimitExceeded as exc:
        await _show_error(exc.user_message)
        return
    async with lease.metered():
        await work()


def _classroom(chat: ChatSession) -> classroom_ui.Classroom:
    return classroom_ui.Classroom(
        chat, lambda message: _sink(chat, message), lambda text: _show_error(text), _runtime
    )


def _start_stoppable_task(work: Coroutine[Any, Any, object]) -> None:
    """Run an action's work the way Chainlit runs a message: as the session's current task (so
    Stop cancels it), between task_start and task_end (so the UI shows it running). The action's
    HTTP request returns at once instead of waiting for the whole answer."""

    async def runner() -> None:
        await context.emitter.task_start()
        try:
            await work
        except asyncio.CancelledError:
            pass  # stopped: the core has finished the message and kept the partial answer
        finally:
            await context.emitter.task_end()

    session = context.session
    # Chainlit has no public way to run a task Stop cancels; its session's declared attribute
    # is what its own handlers set. A session without it gets the task unstoppable.
    task = asyncio.create_task(runner())
    if hasattr(session, "current_task"):
        session.current_task = task


@cl.action_callback("continue")
async def on_continue(action: cl.Action) -> None:
    chat = await _current_chat()
    if chat is None:
        return
    await action.remove()
    if agent_ui.is_agent() and _runtime is not None:
        runtime = _runtime
        _start_stoppable_task(
            _within_limits(lambda: agent_ui.continue_answer(runtime, chat, _sink(chat)))
        )
        return
    _start_stoppable_task(_within_limits(lambda: chat.continue_answer(_sink(chat))))


@cl.action_callback("retry")
async def on_retry(action: cl.Action) -> None:
    chat = await _current_chat()
    if chat is None:
        return
    await action.remove()

    async def retry() -> None:
        # Inside the limits: a refused retry leaves the question where it was.
        question = chat.take_unanswered_question() or retried_question(action.payload)
        if question is None:
            await _show_error("There is no question to retry here: please ask it again.")
        elif agent_ui.is_agent() and _runtime is not None:
            await agent_ui.answer(_runtime, chat, question, _sink(chat))
        else:
            await chat.answer(question, _sink(chat))

    _start_stoppable_task(_within_limits(retry))


@cl.action_callback("token_view")
async def on_token_view(action: cl.Action) -> None:
    chat = await _current_chat()
    if chat is not None:
        await _classroom(chat).show_tokens(str(action.payload.get("answer", "")))


@cl.action_callback("timeline")
async def on_timeline(action: cl.Action) -> None:
    chat = await _current_chat()
    if chat is not None:
        await _classroom(chat).show_timeline(str(action.payload.get("answer", "")))


@cl.action_callback("stop_lane")
async def on_stop_lane(action: cl.Action) -> None:
    chat = await _current_chat()
    if chat is not None:
        await _classroom(chat).stop_lane(str(action.payload.get("lane", "")))


@cl.on_stop
async def on_stop() -> None:
    # Chainlit has cancelled the answer's task; the screen must stop growing now.
    await classroom_ui.after_stop()


@cl.on_chat_end
async def on_chat_end() -> None:
    # Chainlit keeps every session's chat_context in a process-wide dict and never drops it;
    # we keep our own history, so clear Chainlit's copy to stop long-running servers leaking.
    if context.session is not None:
        cl.chat_context.clear()  # public: the chat's messages
        # The emptied entry has no public remover: dropped where the dict is the one known.
        if isinstance(_chainlit_chat_contexts, dict):
            _chainlit_chat_contexts.pop(context.session.id, None)
