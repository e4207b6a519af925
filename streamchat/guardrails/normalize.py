"""One normalisation for every policy, applied incrementally, with a map back to the original.

Each character is NFKC-normalised on its own (fullwidth letters become ASCII, ligatures split),
decimal digits of any script (Devanagari, Arabic-Indic, the Extended Arabic-Indic of Urdu) become
ASCII digits, invisible characters (zero-width spaces and joiners, soft hyphens, BOM, bidi
controls) are dropped, and any run of whitespace becomes one space. Working per character makes
the result independent of where the stream was cut into chunks; `origin[i]` is the index in the
original text of normalised character `i`, so a violation found in normalised text maps back
exactly.
"""

from __future__ import annotations

import re
import unicodedata

INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069"
    "\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0"
)


# ASCII text without these passes through unchanged: no whitespace but single spaces.
_ASCII_CHANGES = re.compile(r"[\t\n\r\x0b\x0c\x1c-\x1f]|  ")
# The newest normalised text kept as one string for `window` (checks read the last few hundred
# characters, twice each): at least this much, at most twice as much.
_RECENT_KEEP = 2048


class Normalizer:
    """Feed original text; read `text` (normalised so far) and `origin` (the index map)."""

    def __init__(self) -> None:
        self._chars: list[str] = []
        self.origin: list[int] = []
        self.original_length = 0
        self._in_space = False
        self._recent = ""  # normalised text from _recent_start on, as far as window() has read
        self._recent_start = 0

    def feed(self, text: str) -> None:
        base = self.original_length
        chars, origin = self._chars, self.origin
        if (
            text.isascii()
            and _ASCII_CHANGES.search(text) is None
            and not (self._in_space and text[:1] == " ")
        ):
            # The common case, character for character: ASCII without runs of whitespace.
            chars.extend(text)
            origin.extend(range(base, base + len(text)))
            self._in_space = text[-1:] == " " if text else self._in_space
            self.original_length += len(text)
            return
        for offset, char in enumerate(text):
            if char in INVISIBLE:
                continue
            if char.isspace():
                if not self._in_space:
                    chars.append(" ")
                    origin.append(base + offset)
                    self._in_space = True
                continue
            self._in_space = False
            if ord(char) <= 127:
                folded = char
            elif (digit := unicodedata.decimal(char, None)) is not None:
                folded = str(digit)  # ٣ and ३ are 3 to every policy
            else:
                folded = unicodedata.normalize("NFKC", char)
            for piece in folded:
                if piece.isspace():
                    piece = " "
                chars.append(piece)
                origin.append(base + offset)
        self.original_length += len(text)

    def __len__(self) -> int:
        return len(self._chars)

    def window(self, start: int, end: int | None = None) -> str:
        """Normalised text [start, end). The newest text comes from a string kept for it, so a
        check near the end joins only what arrived since the last one."""
        length = len(self._chars)
        stop = length if end is None else min(end, length)
        if start < self._recent_start:
            return "".join(self._chars[start:stop])
        recent = self._recent
        read = self._recent_start + len(recent)
        if read < length:
            recent += "".join(self._chars[read:length])
            if len(recent) > 2 * _RECENT_KEEP:
                drop = min(len(recent) - _RECENT_KEEP, start - self._recent_start)
                recent = recent[drop:]
                self._recent_start += drop
            self._recent = recent
        base = self._recent_start
        return recent[start - base : max(start, stop) - base]

    def to_original(self, position: int) -> int:
        """Original index where normalised position `position` begins (end of text if past)."""
        return self.origin[position] if position < len(self.origin) else self.original_length


def normalize(text: str) -> str:
    """The whole-text form, for input checks and final checks."""
    normalizer = Normalizer()
    normalizer.feed(text)
    return normalizer.window(0)
