"""One normalisation for every policy, applied incrementally, with a map back to the original.

Each character is NFKC-normalised on its own (fullwidth letters become ASCII, ligatures split),
decimal digits of any script (Devanagari, Arabic-Indic, the Extended Arabic-Indic of Urdu) become
ASCII digits, invisible characters (zero-width spaces and joiners, soft hyphens, BOM, bidi
controls) are dropped, and any run of whitespace becomes one space. Working per character makes
the result independent of where the stream was cut into chunks; `to_original(i)` is the index in
the original text of normalised character `i`, so a violation found in normalised text maps back
exactly. The map is kept as runs over which the two texts are shifted by a constant (a new run
starts only where normalising changed something), so plain text costs nothing to map and a long
stream's map stays small.
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_right

INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069"
    "\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0"
)


# The newest normalised text is kept as one string (checks read the last few hundred characters,
# twice each, and slice it): at least this much, at most twice as much; older text is kept in
# pieces and joined only when a read reaches back into it (the final check).
_RECENT_KEEP = 2048


class Normalizer:
    """Feed original text; read `window` (normalised text) and `to_original` (the index map)."""

    def __init__(self) -> None:
        self.length = 0  # normalised characters
        self.original_length = 0
        # Run i starts at normalised position _run_starts[i]; in it, normalised position p
        # comes from original index p + _run_shifts[i].
        self._run_starts: list[int] = [0]
        self._run_shifts: list[int] = [0]
        self._in_space = False
        self._older: list[str] = []  # normalised text before _recent_start, in pieces
        self._recent = ""  # normalised text from _recent_start on
        self._recent_start = 0

    def feed(self, text: str) -> None:
        base = self.original_length
        if (
            text.isascii()
            and text.isprintable()
            and "  " not in text
            and not (self._in_space and text[:1] == " ")
        ):
            # The common case, character for character: printable ASCII, single spaces.
            folded_text = text
            if base - self.length != self._run_shifts[-1]:
                self._mapped(self.length, base)
            if text:
                self._in_space = text[-1] == " "
        else:
            pieces: list[str] = []
            position = self.length
            for offset, char in enumerate(text):
                if char in INVISIBLE:
                    continue
                if char.isspace():
                    if not self._in_space:
                        pieces.append(" ")
                        self._mapped(position, base + offset)
                        position += 1
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
                    pieces.append(" " if piece.isspace() else piece)
                    self._mapped(position, base + offset)
                    position += 1
            folded_text = "".join(pieces)
        self.original_length += len(text)
        self.length += len(folded_text)
        recent = self._recent + folded_text
        if len(recent) > 2 * _RECENT_KEEP:
            drop = len(recent) - _RECENT_KEEP
            self._older.append(recent[:drop])
            recent = recent[drop:]
            self._recent_start += drop
        self._recent = recent

    def _mapped(self, position: int, original: int) -> None:
        """Normalised `position` comes from `original` (and, until told otherwise, each next
        position from the next original index)."""
        shift = original - position
        if shift != self._run_shifts[-1]:
            if self._run_starts[-1] == position:  # a run with no characters yet
                self._run_shifts[-1] = shift
            else:
                self._run_starts.append(position)
                self._run_shifts.append(shift)

    def __len__(self) -> int:
        return self.length

    def window(self, start: int, end: int | None = None) -> str:
        """Normalised text [start, end)."""
        base = self._recent_start
        if start >= base:
            return self._recent[start - base : None if end is None else max(start, end) - base]
        if len(self._older) > 1:
            self._older[:] = ["".join(self._older)]
        whole = self._older[0] + self._recent
        return whole[start:end] if end is None or end >= start else ""

    def to_original(self, position: int) -> int:
        """Original index where normalised position `position` begins (end of text if past)."""
        if position >= self.length:
            return self.original_length
        starts = self._run_starts
        if position >= starts[-1]:  # the newest run (most reads are near the end)
            return position + self._run_shifts[-1]
        return position + self._run_shifts[bisect_right(starts, position) - 1]


def normalize(text: str) -> str:
    """The whole-text form, for input checks and final checks."""
    normalizer = Normalizer()
    normalizer.feed(text)
    return normalizer.window(0)
