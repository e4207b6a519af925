"""Removing the seam overlap when a broken answer is resumed.

Asked to continue an answer, models usually start by repeating its last few words; some
start the whole answer again. The user must see one answer, not repeated text, so the start of
the continuation that repeats the end of what was shown is dropped, and so is a replay of all of
it from its beginning.
"""

from __future__ import annotations

# Overlaps shorter than this are left alone: a continuation that happens to start with the
# same two letters the answer ended with is more likely new text than a repeat.
MIN_OVERLAP_CHARS = 4
# A continuation is taken for the answer again from its beginning only when it replays at least
# this much of it word for word: a short answer's first words may well come again as new text.
MIN_RESTART_CHARS = 40
# How much of the continuation may be held back while deciding; models repeat a few words.
DEFAULT_WINDOW_CHARS = 200


def overlap_length(shown: str, continuation: str, *, min_chars: int = MIN_OVERLAP_CHARS) -> int:
    """Length of the longest start of `continuation` that is also the end of `shown`."""
    for size in range(min(len(shown), len(continuation)), min_chars - 1, -1):
        if shown.endswith(continuation[:size]):
            return size
    return 0


class OverlapRemover:
    """Incremental: feed the continuation as it streams; get back the text to show.

    Text is held only while it could still be part of a repeat (it is found in the tail of what
    was shown), at most `window` characters; once that can no longer be true, the overlap is
    cut once and everything after passes straight through.
    """

    def __init__(self, shown: str, *, window: int = DEFAULT_WINDOW_CHARS) -> None:
        self._shown = shown if len(shown) >= MIN_RESTART_CHARS else ""
        self._tail = shown[-window:]
        self._window = window
        self._held = ""
        self._decided = False

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._held += text
        if self._shown and self._shown.startswith(self._held[: len(self._shown)]):
            # The answer again from its beginning, so far: held until it is all there.
            if len(self._held) < len(self._shown):
                return ""
            self._decided = True
            out, self._held = self._held[len(self._shown) :], ""
            return out
        if self._held in self._tail and len(self._held) < self._window:
            return ""  # still possibly a repeat: wait for more
        return self._decide()

    def finish(self) -> str:
        """The stream ended: whatever is held is decided now (a replay of the answer's start
        that stopped short adds nothing)."""
        if self._decided:
            return ""
        if self._shown and self._shown.startswith(self._held):
            self._decided, self._held = True, ""
            return ""
        return self._decide()

    def _decide(self) -> str:
        self._decided = True
        cut = overlap_length(self._tail, self._held)
        out, self._held = self._held[cut:], ""
        return out
