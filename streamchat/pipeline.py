"""What answers a request, built in one place for every face (chat UI, SSE, CLI, classroom):
the input checks, the guard, moderation, coalescing and the relay, from plain values.

Each check on what a person submits (input length, temperature, model name, system prompt,
guardrail mode) is written once here and shared, so the faces cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from streamchat.core.coalesce import CoalescingSink
from streamchat.core.errors import ConfigError, InputRejected
from streamchat.core.metrics import PROCESS_METRICS, ProcessMetrics
from streamchat.core.provider import Provider, WholeAnswer
from streamchat.core.relay import (
    DeltaSource,
    Resilience,
    StreamResult,
    StreamRun,
    refused_input_result,
)
from streamchat.core.sharing import SharedAnswers, SharedRun
from streamchat.core.sinks import Sink
from streamchat.core.types import Delta
from streamchat.guardrails import (
    GuardrailConfig,
    build_guard,
    build_policies,
    guardrail_note,
    screen_input,
)
from streamchat.guardrails.moderation import Moderator

__all__ = [
    "GUARDRAIL_MODES",
    "MAX_SYSTEM_PROMPT_CHARS",
    "GuardrailConfig",
    "GuardrailPanel",
    "Moderator",
    "Pipeline",
    "check_guardrail_files",
    "check_guardrail_mode",
    "check_model_name",
    "check_system_prompt",
    "check_temperature",
    "length_problem",
]

MAX_SYSTEM_PROMPT_CHARS = 20_000
GUARDRAIL_MODES = ("hold", "buffered")
NO_GUARDRAILS = GuardrailConfig(policies=())


# --- the checks on what people submit: one function each -----------------------------------


def well_formed(text: str) -> str:
    """`text` with every lone surrogate (JSON can carry one as `\\ud800`; UTF-8 cannot) made
    U+FFFD, so it can be encoded, sent upstream and kept in the history."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def length_problem(what: str, text: str, limit: int) -> str | None:
    """Why `text` is refused for its length (`what` names it, e.g. "Your message"), or None."""
    if len(text) <= limit:
        return None
    return f"{what} is too long ({len(text)} characters; the limit is {limit})."


def check_temperature(value: object, *, name: str = "Temperature") -> float:
    """A sampling temperature from 0 to 2. Raises ConfigError naming it as `name`."""
    try:
        temperature = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        temperature = math.nan
    if not math.isfinite(temperature) or not 0 <= temperature <= 2:
        raise ConfigError(f"{name} must be a number between 0 and 2.")
    return temperature


def check_model_name(value: object) -> str:
    """A model name, stripped; ConfigError when empty."""
    model = str(value or "").strip()
    if not model:
        raise ConfigError("The model name cannot be empty.")
    return model


def check_system_prompt(value: object) -> str:
    """A system prompt within MAX_SYSTEM_PROMPT_CHARS; ConfigError when longer."""
    prompt = str(value or "")
    problem = length_problem("The system prompt", prompt, MAX_SYSTEM_PROMPT_CHARS)
    if problem is not None:
        raise ConfigError(problem)
    return prompt


def check_guardrail_mode(value: object) -> str:
    mode = str(value)
    if mode not in GUARDRAIL_MODES:
        raise ConfigError("The guardrail mode must be hold or buffered.")
    return mode


def check_guardrail_files(config: GuardrailConfig) -> GuardrailConfig:
    """`config`, once its policies are built (the blocklist and pattern files read and
    compiled); ConfigError naming the file otherwise. The guardrails raise ValueError: this is
    where the app's error takes over."""
    try:
        build_policies(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config


# --- the pipeline -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardrailPanel:
    """What a settings panel says about the operator's guardrails (no policy internals)."""

    policies: tuple[str, ...]
    enabled: bool
    locked: bool
    note: str

    @classmethod
    def of(cls, config: GuardrailConfig) -> GuardrailPanel:
        return cls(
            policies=config.policies,
            enabled=config.enabled,
            locked=config.locked,
            note=guardrail_note(config),
        )


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Builds the runs that answer requests: every face gets its runs from one of these.

    `guardrails` are the operator's; a chat passes its own choices to `screen` and `run`.
    """

    source: DeltaSource
    guardrails: GuardrailConfig = NO_GUARDRAILS
    moderator: Moderator | None = None
    flush_interval_s: float = 0.04
    resilience: Resilience = field(default_factory=Resilience)
    max_input_chars: int = 32_000
    metrics: ProcessMetrics = PROCESS_METRICS
    show_reasoning: bool = True  # a reasoning model's thinking shown (always out of the answer)
    # Identical requests share one upstream stream, and complete answers may be replayed
    # (SHARED_ANSWERS, ANSWER_CACHE_TTL_S); None: every request goes upstream.
    sharing: SharedAnswers | None = None

    def unstreamed(self) -> DeltaSource | None:
        """The same provider asked without streaming (for comparisons); None when the source
        is not a provider that can answer both ways."""
        return WholeAnswer(self.source) if isinstance(self.source, Provider) else None

    async def screen(
        self,
        text: str,
        sink: Sink,
        guardrails: GuardrailConfig | None = None,
        *,
        check_length: bool = True,
    ) -> StreamResult | None:
        """The input checks, before anything goes upstream: the length (unless `check_length`
        is False: an earlier turn of a conversation a client sends), then the guardrail
        policies and moderation. A refused message is finished in `sink` and its result
        returned; None means the message may be sent."""
        problem = (
            length_problem("Your message", text, self.max_input_chars) if check_length else None
        )
        if problem is not None:
            return await refused_input_result(
                sink, error=InputRejected(f"{problem} Shorten it and send it again.")
            )
        config = self.guardrails if guardrails is None else guardrails
        blocked = await screen_input(config, text, self.moderator)
        if blocked is not None:
            return await refused_input_result(sink, violation=blocked)
        return None

    def run(
        self,
        sink: Sink,
        *,
        guardrails: GuardrailConfig | None = None,
        source: DeltaSource | None = None,
        on_delta: Callable[[Delta], None] | None = None,
        stream_id: str | None = None,
        show_reasoning: bool | None = None,
    ) -> StreamRun:
        """A run, not yet started: `source` (or the pipeline's) -> guard -> coalescer -> `sink`,
        with moderation when the guardrails ask for it. A reasoning model's thinking takes the
        same way beside the answer, through a guard of its own (`show_reasoning`: a chat's
        choice, else the pipeline's)."""
        config = self.guardrails if guardrails is None else guardrails
        coalescing = CoalescingSink(sink, interval_s=self.flush_interval_s)
        options: dict[str, Any] = {
            "stream_id": stream_id,
            "resilience": self.resilience,
            "metrics": self.metrics,
            "on_delta": on_delta,
            "show_reasoning": self.show_reasoning if show_reasoning is None else show_reasoning,
        }
        run: StreamRun
        if self.sharing is not None and source is None and on_delta is None:
            # Shared only from the pipeline's own provider, and not for views of the raw
            # chunks (their arrival is what those views show).
            view = self.sharing.view(self.source, self._sharing_context(config))
            run = SharedRun(view, coalescing, **options)
        else:
            run = StreamRun(source or self.source, coalescing, **options)
        if config.enabled:
            run.guard = build_guard(config, stream_id=run.stream_id)
            run.reasoning_guards = partial(build_guard, config, stream_id=run.stream_id)
            if config.moderated:
                run.moderator = self.moderator
        return run

    def _sharing_context(self, config: GuardrailConfig) -> str:
        """What shapes an answer besides its request: the provider and the guardrails (hashed
        into the fingerprint, never shown)."""
        provider = getattr(self.source, "label", type(self.source).__qualname__)
        return f"{provider}|{config!r}"
