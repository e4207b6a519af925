"""One chat: its options, its history, and answering a message through a StreamRun.

Front ends keep one ChatSession per conversation and hand it a Sink per answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from streamchat.core.errors import ConfigError
from streamchat.core.history import Conversation, fit_to_budget
from streamchat.core.relay import DeltaSource, Resilience, StreamResult, StreamRun
from streamchat.core.sinks import Sink
from streamchat.core.types import ChatMessage, ChatRequest, Delta, EndReason
from streamchat.languages import DEFAULT_LANGUAGE, instruction, parse_language
from streamchat.pipeline import (
    GuardrailConfig,
    GuardrailPanel,
    Moderator,
    Pipeline,
    check_guardrail_mode,
    check_model_name,
    check_system_prompt,
    check_temperature,
    well_formed,
)


def full_system_prompt(system_prompt: str, language: str) -> str:
    """The system prompt with the language instruction, if the language is not English."""
    extra = instruction(language)
    return "\n\n".join(p for p in (system_prompt.strip(), extra) if p)


def fitted_request(
    messages: Sequence[ChatMessage],
    max_history_tokens: int | None,
    *,
    model: str,
    temperature: float | None,
    max_tokens: int | None,
) -> ChatRequest:
    """A request for `messages`, without its oldest exchanges when they are over the budget
    (the request says how many were left out). The chat UI and the SSE endpoint both use it."""
    fitted = fit_to_budget(messages, max_history_tokens)
    return ChatRequest(
        messages=fitted.messages,
        dropped_messages=fitted.dropped,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
    )


def retried_question(payload: object) -> str | None:
    """The question a Retry button carries (see app.py), if it carries one."""
    question = payload.get("question") if isinstance(payload, dict) else None
    return question if isinstance(question, str) and question.strip() else None


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What the user can change during a chat (Chainlit chat settings)."""

    model: str
    temperature: float
    system_prompt: str
    max_tokens: int | None = None
    show_metrics: bool = True  # a stats line (TTFT, tokens, tokens/s) under each answer
    show_reasoning: bool = True  # a reasoning model's thinking shown apart from the answer
    guardrails_on: bool = True
    guardrail_mode: str = "hold"
    language: str = DEFAULT_LANGUAGE  # the answers' language (languages.LANGUAGES)

    @property
    def effective_system_prompt(self) -> str:
        return full_system_prompt(self.system_prompt, self.language)

    def updated(self, values: Mapping[str, Any]) -> ChatOptions:
        """Apply submitted settings. Raises ConfigError with a message for the user."""
        changes: dict[str, Any] = {}
        if "model" in values:
            changes["model"] = check_model_name(values["model"])
        if "temperature" in values:
            changes["temperature"] = check_temperature(values["temperature"])
        if "system_prompt" in values:
            changes["system_prompt"] = check_system_prompt(values["system_prompt"])
        if "show_metrics" in values:
            changes["show_metrics"] = bool(values["show_metrics"])
        if "show_reasoning" in values:
            changes["show_reasoning"] = bool(values["show_reasoning"])
        if "guardrails_on" in values:
            changes["guardrails_on"] = bool(values["guardrails_on"])
        if "language" in values:
            try:
                changes["language"] = parse_language(str(values["language"]))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if "guardrail_mode" in values:
            changes["guardrail_mode"] = check_guardrail_mode(values["guardrail_mode"])
        return replace(self, **changes)


class ChatSession:
    """A conversation with one provider. Answers one message at a time, with runs from its
    Pipeline (the same one the other faces use)."""

    def __init__(
        self,
        source: DeltaSource,
        options: ChatOptions,
        *,
        flush_interval_s: float = 0.04,
        resilience: Resilience | None = None,
        guardrails: GuardrailConfig | None = None,
        max_input_chars: int = 32_000,
        max_history_tokens: int | None = None,
        moderator: Moderator | None = None,
    ) -> None:
        pipeline = Pipeline(
            source,
            flush_interval_s=flush_interval_s,
            resilience=resilience or Resilience(),
            max_input_chars=max_input_chars,
            moderator=moderator,
        )
        if guardrails is not None:
            pipeline = replace(pipeline, guardrails=guardrails)
        self.pipeline = pipeline
        self.options = options
        self.max_history_tokens = max_history_tokens
        self.history = Conversation()
        self._lock = asyncio.Lock()

    @classmethod
    def on(
        cls, pipeline: Pipeline, options: ChatOptions, *, max_history_tokens: int | None = None
    ) -> ChatSession:
        """A chat whose answers come from `pipeline`."""
        chat = cls(pipeline.source, options, max_history_tokens=max_history_tokens)
        chat.pipeline = pipeline
        return chat

    @property
    def source(self) -> DeltaSource:
        return self.pipeline.source

    @source.setter
    def source(self, source: DeltaSource) -> None:
        self.pipeline = replace(self.pipeline, source=source)

    @property
    def guardrails(self) -> GuardrailConfig:
        """The operator's guardrails."""
        return self.pipeline.guardrails

    @property
    def guardrail_panel(self) -> GuardrailPanel:
        """What the settings panel says about the operator's guardrails."""
        return GuardrailPanel.of(self.pipeline.guardrails)

    @property
    def guardrail_config(self) -> GuardrailConfig:
        """The operator's guardrails with this chat's choices (unless the operator locked them)."""
        return self.guardrails.with_choices(
            enabled=self.options.guardrails_on, mode=self.options.guardrail_mode
        )

    def new_run(
        self,
        sink: Sink,
        on_delta: Callable[[Delta], None] | None = None,
        source: DeltaSource | None = None,
        *,
        guardrails: GuardrailConfig | None = None,
    ) -> StreamRun:
        """A run with this chat's provider, coalescing, resilience and guardrails (or
        `guardrails` instead), not yet started and not tied to the history."""
        return self.pipeline.run(
            sink,
            guardrails=guardrails or self.guardrail_config,
            source=source,
            on_delta=on_delta,
            show_reasoning=self.options.show_reasoning,
        )

    def request(self, extra_headers: Mapping[str, str] | None = None) -> ChatRequest:
        """The next request: the history, without its oldest turns when it is over budget."""
        request = self._request(self.history.messages(self.options.effective_system_prompt))
        return replace(request, extra_headers=dict(extra_headers or {}))

    def request_for(self, text: str, **changes: Any) -> ChatRequest:
        """The request asking `text` next, without recording anything in the history (demos
        that answer beside the conversation). `changes` replace fields, e.g. model."""
        messages = self.history.messages(self.options.effective_system_prompt)
        return replace(self._request((*messages, ChatMessage("user", text))), **changes)

    def _request(self, messages: Sequence[ChatMessage]) -> ChatRequest:
        options = self.options
        return fitted_request(
            messages,
            self.max_history_tokens,
            model=options.model,
            temperature=options.temperature,
            max_tokens=options.max_tokens,
        )

    async def answer(
        self,
        text: str,
        sink: Sink,
        *,
        extra_headers: Mapping[str, str] | None = None,
        on_delta: Callable[[Delta], None] | None = None,
        source: DeltaSource | None = None,
        on_run: Callable[[StreamRun], None] | None = None,
    ) -> StreamResult:
        """Stream the answer to the user's `text` into `sink`; record both in the history.

        `on_delta` sees every upstream chunk, `source` replaces the chat's own for this answer
        (the classroom fault demo) and `on_run` gets the run before it starts (its guard record
        tells the hold-back story). On Stop (cancellation) the partial answer is recorded
        before CancelledError goes on.
        """
        text = well_formed(text)
        async with self._lock:
            refused = await self.pipeline.screen(text, sink, self.guardrail_config)
            if refused is not None:
                # Nothing goes upstream, and the message stays out of the history.
                return refused
            self.history.add_user(text)
            run = self.new_run(sink, on_delta, source)
            if on_run is not None:
                on_run(run)
            try:
                result = await run.run(self.request(extra_headers))
            except asyncio.CancelledError:
                self.history.add_assistant(run.last_text, EndReason.STOPPED_BY_USER)
                raise
            self.history.add_assistant(result.text, result.reason)
            return result

    async def continue_answer(
        self, sink: Sink, *, source: DeltaSource | None = None
    ) -> StreamResult | None:
        """Continue the last answer if it was interrupted; None when there is nothing to continue.

        The continuation streams into `sink` (without the words the model repeats at the seam)
        and is appended to the answer in the history. `source` replaces the chat's own (an
        agent's run).
        """
        async with self._lock:
            interrupted = self.history.interrupted_answer()
            if interrupted is None:
                return None
            request = self.request()
            # The request's history ends with the interrupted answer itself; the run adds it
            # back with the instruction to continue.
            base = replace(request, messages=request.messages[:-1])
            run = self.new_run(sink, source=source)
            try:
                result = await run.run(base, continuing=interrupted.content)
            except asyncio.CancelledError:
                self.history.extend_last_answer(run.last_text, EndReason.STOPPED_BY_USER)
                raise
            self.history.extend_last_answer(result.text, result.reason)
            return result

    def take_unanswered_question(self) -> str | None:
        """The question whose answer failed before any text, removed so it can be asked again."""
        return self.history.take_unanswered_question()
