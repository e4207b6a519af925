"""ThinkTagSplitter: a reasoning model's inline `<think>...</think>` taken out of the answer.

Some servers (older Ollama and Qwen templates, llama.cpp without a reasoning parser) send the
thinking inside `delta.content`. Only a tag that opens the reply counts, so an answer that talks
about `<think>` tags is left alone; any chunk split (`<th` + `ink>`) gives the same result.
"""

from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


def _partial_tag_at_end(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkTagSplitter:
    """Splits content into (answer, thinking), incrementally: `feed(text)` per chunk, then
    `finish()`. No I/O; what it holds is at most the few characters that might start a tag
    (and leading whitespace, until the reply's first character says whether a tag opens it).

    After `finish()`, `unclosed` says the reply opened a `<think>` and never closed it: all of
    it after the tag was thinking.
    """

    __slots__ = ("_held", "_state", "_trim", "unclosed")

    def __init__(self) -> None:
        self._state = "start"  # "start" (undecided), "thinking", "answer"
        self._held = ""
        self._trim = False  # drop the whitespace between </think> and the answer
        self.unclosed = False

    @property
    def passing(self) -> bool:
        """True once the rest is all answer: `feed` returns its text as it is."""
        return self._state == "answer" and not self._trim

    def feed(self, text: str) -> tuple[str, str]:
        """The answer and the thinking in `text` (and in what was held before it)."""
        if self._state == "answer":
            return self._answer(text), ""
        text = self._held + text
        self._held = ""
        if self._state == "start":
            stripped = text.lstrip()
            if not stripped or (len(stripped) < len(OPEN_TAG) and OPEN_TAG.startswith(stripped)):
                self._held = text
                return "", ""
            if not stripped.startswith(OPEN_TAG):
                self._state = "answer"
                return text, ""
            self._state = "thinking"
            text = stripped[len(OPEN_TAG) :]
        end = text.find(CLOSE_TAG)
        if end >= 0:
            self._state = "answer"
            self._trim = True
            return self._answer(text[end + len(CLOSE_TAG) :]), text[:end]
        keep = _partial_tag_at_end(text, CLOSE_TAG)
        if keep:
            self._held = text[-keep:]
            text = text[:-keep]
        return "", text

    def finish(self) -> tuple[str, str]:
        """What is still held, as the end of the reply: a tag never completed is text."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            self.unclosed = True
            return "", held
        if self._state == "start":
            self._state = "answer"
        return held, ""

    def _answer(self, text: str) -> str:
        if self._trim and text:
            text = text.lstrip()
            self._trim = not text
        return text
