"""Small value types that flow through the stream: Delta in, StreamResult out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them (or as we counted them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0  # thinking included, as providers count it
    reasoning_tokens: int = 0  # of which thinking (`completion_tokens_details`), when reported

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of the upstream stream.

    `text` may be empty (role-only chunks, the final chunk); `usage` arrives on the usage-only
    chunk when the request asked for it; `raw` is the chunk's JSON text as received. `more`
    says that the next Delta came in the same network read and follows at once, so a consumer
    can show their text together (the last Delta of a read says False). `reasoning` is a
    reasoning model's thinking (`delta.reasoning_content` or `delta.reasoning`): it travels
    beside the answer's `text`, never inside it.
    """

    text: str
    index: int
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: str = ""
    more: bool = False
    reasoning: str = ""


class EndReason(StrEnum):
    """Why a stream ended."""

    COMPLETE = "complete"
    LENGTH = "length"
    STOPPED_BY_USER = "stopped_by_user"
    GUARDRAIL = "guardrail"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation in the provider's shape."""

    role: str  # "system" | "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What we ask the provider for."""

    messages: tuple[ChatMessage, ...]
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    dropped_messages: int = 0  # older history left out to fit the context (not sent upstream)

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [m.as_dict() for m in self.messages],
        }
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.extra_headers:
            kwargs["extra_headers"] = dict(self.extra_headers)
        return kwargs
