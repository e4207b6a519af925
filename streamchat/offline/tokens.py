"""Word-piece-like tokens for the offline demo model: what it streams one at a time, and what
its usage figures count.

Words carry their leading space (" streaming"), punctuation is its own token, words longer
than five characters are split into pieces, and joining the tokens gives back the text exactly.
"""

from __future__ import annotations

import re

_PIECE = 5
# One space may lead a word or a punctuation mark; any other whitespace stands alone.
_TOKEN = re.compile(r" ?\w+| ?[^\s\w]|\n|\s")


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        body = token.lstrip(" ")
        if len(body) <= _PIECE or not body[0].isalnum():
            tokens.append(token)
            continue
        lead = token[: len(token) - len(body)]
        pieces = [body[i : i + _PIECE] for i in range(0, len(body), _PIECE)]
        tokens.append(lead + pieces[0])
        tokens.extend(pieces[1:])
    return tokens


def count_tokens(text: str) -> int:
    return len(tokenize(text))
