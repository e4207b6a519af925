"""The conversation we send upstream: our own history, kept per chat, bounded by nothing but
what the user said and saw (Chainlit's chat_context is process-global and never cleaned up)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamchat.core.types import ChatMessage, EndReason

# Stored with each answer (Chainlit step metadata): the text the user saw, without footers or
# notes, and how it ended, so a resumed chat rebuilds its history exactly (persistence.py).
METADATA_KEY = "streamchat"


def answer_metadata(
    text: str, reason: EndReason, stream_id: str, reasoning: str = ""
) -> dict[str, Any]:
    """The answer as stored; a reasoning model's thinking is kept beside it (shown again in a
    resumed chat, never sent upstream)."""
    stored: dict[str, Any] = {"text": text, "reason": reason.value, "stream_id": stream_id}
    if reasoning:
        stored["reasoning"] = reasoning
    return {METADATA_KEY: stored}


@dataclass(frozen=True, slots=True)
class Turn:
    """One message in the history, with how an assistant answer ended."""

    role: str
    content: str
    ended: EndReason | None = None  # assistant turns only

    @property
    def interrupted(self) -> bool:
        return self.ended in (EndReason.STOPPED_BY_USER, EndReason.ERROR)


class Conversation:
    """User and assistant turns, in order. The system prompt is applied when building a request,
    so changing it in the settings affects the next answer without rewriting history."""

    def __init__(self) -> None:
        self._turns: list[Turn] = []

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    def add_user(self, text: str) -> None:
        self._turns.append(Turn("user", text))

    def add_assistant(self, text: str, ended: EndReason) -> None:
        """Record what the user saw of an answer, also when it was stopped or cut off."""
        self._turns.append(Turn("assistant", text, ended))

    def clear(self) -> None:
        self._turns.clear()

    def interrupted_answer(self) -> Turn | None:
        """The last answer if it was cut off with some text shown (it can be continued)."""
        last = self._turns[-1] if self._turns else None
        if last is None or last.role != "assistant" or not last.content:
            return None
        return last if last.ended is EndReason.ERROR else None

    def extend_last_answer(self, text: str, ended: EndReason) -> None:
        """Append a continuation to the last answer; it ended the way the continuation did."""
        last = self._turns[-1]
        self._turns[-1] = Turn("assistant", last.content + text, ended)

    def last_question(self) -> str | None:
        """What the user asked last, if anything."""
        for turn in reversed(self._turns):
            if turn.role == "user":
                return turn.content
        return None

    def take_unanswered_question(self) -> str | None:
        """Remove and return the last question if its answer failed before any text."""
        if len(self._turns) >= 2:
            question, answer = self._turns[-2], self._turns[-1]
            failed = answer.role == "assistant" and not answer.content
            if question.role == "user" and failed and answer.ended is EndReason.ERROR:
                del self._turns[-2:]
                return question.content
        return None

    def messages(self, system_prompt: str) -> tuple[ChatMessage, ...]:
        """The messages for the next request.

        A question that got no answer at all (the request failed before any text) is left out:
        the user will usually ask it again, and sending it twice confuses the model.
        """
        out: list[ChatMessage] = []
        if system_prompt.strip():
            out.append(ChatMessage("system", system_prompt))
        for position, turn in enumerate(self._turns):
            if turn.role == "user" and not self._answered(position):
                continue
            if turn.role == "assistant" and not turn.content:
                continue
            out.append(ChatMessage(turn.role, turn.content))
        return tuple(out)

    def _answered(self, position: int) -> bool:
        """A user turn counts unless the next turn is an empty (failed) answer to it."""
        following = position + 1
        if following >= len(self._turns):
            return True  # the question being asked now
        nxt = self._turns[following]
        return nxt.role != "assistant" or bool(nxt.content)


# --- fitting the history into the model's context --------------------------------------------

# Per-message overhead of the chat format (role, separators), as OpenAI's tokenizers count it.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four bytes of UTF-8 per token. Close for English and
    Roman-script languages, cautious (too high) for code; no vocabulary download needed."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def message_tokens(message: ChatMessage) -> int:
    return estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS


@dataclass(frozen=True, slots=True)
class Fitted:
    messages: tuple[ChatMessage, ...]
    dropped: int  # how many of the oldest messages were left out


def fit_to_budget(messages: Sequence[ChatMessage], max_tokens: int | None) -> Fitted:
    """Leave out the oldest turns until `messages` fit in `max_tokens` (estimated).

    The system prompt and the current exchange (from the last user message on) are always kept;
    older messages go oldest first, a question together with its answer, so what is sent never
    starts with an answer to a question that is no longer there.
    """
    messages = tuple(messages)
    if not max_tokens:
        return Fitted(messages, 0)
    head = tuple(m for m in messages[:1] if m.role == "system")
    body = messages[len(head) :]
    last_user = max((i for i, m in enumerate(body) if m.role == "user"), default=len(body))
    older, current = list(body[:last_user]), body[last_user:]
    total = sum(message_tokens(m) for m in messages)
    dropped = 0
    while older and total > max_tokens:
        # One exchange: a user message and everything after it up to the next user message.
        end = 1
        while end < len(older) and older[end].role != "user":
            end += 1
        total -= sum(message_tokens(m) for m in older[:end])
        dropped += end
        del older[:end]
    return Fitted((*head, *older, *current), dropped)
