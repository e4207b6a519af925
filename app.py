"""Chainlit adapter: maps Chainlit events to the streamchat core and back. No logic lives here."""

from __future__ import annotations

import logging

import chainlit as cl
from chainlit.chat_context import chat_contexts
from chainlit.context import context
from chainlit.input_widget import Select, Slider, Switch, TextInput
from chainlit.server import app as server_app

from streamchat.chat import ChatOptions, ChatSession
from streamchat.errors import ConfigError
from streamchat.logs import configure_logging
from streamchat.runtime import Runtime, settings_or_error
from streamchat.sinks import ChainlitSink
from streamchat.web import mount

log = logging.getLogger("streamchat.app")

_runtime: Runtime | None = None
_config_error: ConfigError | None = None


@cl.on_app_startup
async def startup() -> None:
    global _runtime, _config_error
    _runtime, _config_error = settings_or_error()
    configure_logging(_runtime.settings.log_level if _runtime else "INFO")
    mount(server_app, metrics_token=_runtime.settings.metrics_token if _runtime else None)
    if _runtime is not None:
        await _runtime.start()


@cl.on_app_shutdown
async def shutdown() -> None:
    if _runtime is not None:
        await _runtime.aclose()


async def _show_error(text: str) -> None:
    await cl.ErrorMessage(content=text).send()


def _settings_widgets(options: ChatOptions, models: list[str]) -> list[object]:
    model_widget: object
    if models:
        values = [options.model, *models] if options.model not in models else models
        values = [value for value in values if value]
        model_widget = Select(
            id="model", label="Model", values=values, initial_value=options.model or values[0]
        )
    else:
        model_widget = TextInput(
            id="model", label="Model", initial=options.model, placeholder="model name"
        )
    return [
        model_widget,
        Slider(
            id="temperature",
            label="Temperature",
            initial=options.temperature,
            min=0,
            max=2,
            step=0.1,
        ),
        TextInput(
            id="system_prompt",
            label="System prompt",
            initial=options.system_prompt,
            multiline=True,
        ),
        Switch(
            id="show_metrics",
            label="Show stats under each answer (time to first token, tokens, tokens/s)",
            initial=options.show_metrics,
        ),
    ]


@cl.on_chat_start
async def on_chat_start() -> None:
    if _runtime is None:
        await _show_error(f"streamchat is not configured correctly: {_config_error}")
        return
    chat, problem = await _runtime.new_chat()
    cl.user_session.set("chat", chat)
    models = await _runtime.available_models()
    await cl.ChatSettings(_settings_widgets(chat.options, models)).send()  # type: ignore[arg-type]
    if problem is not None:
        await _show_error(problem.user_message)


@cl.on_settings_update
async def on_settings_update(values: dict[str, object]) -> None:
    chat: ChatSession | None = cl.user_session.get("chat")
    if chat is None:
        return
    try:
        chat.options = chat.options.updated(values)
    except ConfigError as exc:
        await _show_error(f"Settings not applied: {exc}")


@cl.on_message
async def on_message(message: cl.Message) -> None:
    chat: ChatSession | None = cl.user_session.get("chat")
    if chat is None:
        await _show_error(f"streamchat is not configured correctly: {_config_error}")
        return
    sink = ChainlitSink(
        cl.Message(content=""), notify_error=_show_error, show_metrics=chat.options.show_metrics
    )
    # A Stop cancels this task; the core finishes the message, keeps the partial answer in the
    # history and closes the upstream response before the cancellation goes on.
    await chat.answer(message.content, sink)


@cl.on_chat_end
async def on_chat_end() -> None:
    # Chainlit keeps every session's chat_context in a process-wide dict and never drops it;
    # we keep our own history, so drop Chainlit's copy to stop long-running servers leaking.
    if context.session is not None:
        chat_contexts.pop(context.session.id, None)
