"""Where a long answer's Markdown can be cut into parts rendered apart without changing how it
reads: the Chainlit sink continues a long answer in a new message at such a place, so the page
renders again only the growing part, not the whole answer, at each update.

A cut is safe at the start of a top-level block that follows a blank line, outside a fenced
code block, when the block is neither indented (a list item's continuation, indented code) nor
a list item (the list would be split, its numbering restarted): the text before it is then
complete Markdown on its own, and so is the text after it.
"""

from __future__ import annotations

import re
import weakref
from typing import Protocol

# A long answer continues in a new message once its current message holds this many characters
# (about 1,500 tokens) and a safe cut comes: shorter answers are one message, as always.
SEGMENT_CHARS = 8000

# Metadata of the messages of a long answer (see ChainlitSink): {"first": id of its first
# message, "index": 0, 1, ..., "continued": whether a later message continues it}. The page's
# script (public/paint_ack.js) shows such messages as one answer; a stored thread's history
# takes the answer's text from its last message (hosting/persistence.py).
SEGMENT_KEY = "streamchat_segment"

_FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"([-*+]|\d{1,9}[.)])([ \t]|$)")


def segment_metadata(first: str, index: int, *, continued: bool) -> dict[str, object]:
    return {"first": first, "index": index, "continued": continued}


class Answer(Protocol):
    """What `StreamingAnswers` needs of an answer's sink: whether it has finished."""

    @property
    def done(self) -> bool: ...


class StreamingAnswers:
    """The answers streaming in one chat. A long answer may go on in a new message only while
    it is the only one: the new message is placed last, below any answer streaming beside it
    (the Classroom's lanes), which would split the answer around another.

    Answers are held weakly: a finished answer's sink is not kept alive by the chat."""

    def __init__(self) -> None:
        self._answers: weakref.WeakSet[Answer] = weakref.WeakSet()

    def add(self, answer: Answer) -> None:
        self._answers.add(answer)

    def alone(self, answer: Answer) -> bool:
        """Whether no answer other than `answer` is still streaming."""
        return not any(other is not answer and not other.done for other in self._answers)


class BlockBoundaries:
    """Finds safe cuts incrementally: `feed(text)` returns the offsets, counted from the start
    of everything fed, where a safe cut was confirmed (a line is judged once it is complete).
    Each character is looked at once, so a whole answer costs O(length)."""

    def __init__(self) -> None:
        self._line = ""  # the line being received, not yet complete
        self._line_start = 0  # its offset
        self._fence: str | None = None  # the open code fence's marker
        self._after_blank = False

    def feed(self, text: str) -> list[int]:
        cuts: list[int] = []
        start = 0
        while (end := text.find("\n", start)) >= 0:
            line = self._line + text[start:end]
            self._line = ""
            if self._complete(line):
                cuts.append(self._line_start)
            self._line_start += len(line) + 1
            start = end + 1
        self._line += text[start:]
        return cuts

    def _complete(self, line: str) -> bool:
        """Take a complete line; whether a safe cut is at its start."""
        fence = _FENCE.match(line)
        if self._fence is not None:
            if (
                fence is not None
                and fence.group(1)[0] == self._fence[0]
                and len(fence.group(1)) >= len(self._fence)
                and not line[fence.end() :].strip()
            ):
                self._fence = None  # the closing fence
            self._after_blank = False
            return False
        if not line.strip():
            self._after_blank = True
            return False
        safe = (
            self._after_blank
            and self._line_start > 0
            and line[0] not in " \t"
            and not _LIST_ITEM.match(line)
        )
        if fence is not None:
            self._fence = fence.group(1)
        self._after_blank = False
        return safe
