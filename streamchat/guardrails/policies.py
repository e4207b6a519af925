"""Policies: what counts as a violation. Each finds matches in a window of normalised text and
declares `max_match`, the longest text one match can span, so the guard knows how much overlap
to rescan and how much to hold back.

Detection uses well-kept libraries where they exist: phonenumbers (Google's libphonenumber) for
phone numbers, python-stdnum for the checksums of card numbers (Luhn), IBANs and national IDs,
pyahocorasick for linear-time multi-word search, and the token shapes of detect-secrets'
plugins for secrets. Every pattern is bounded, so a match never outgrows `max_match`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol

import ahocorasick
import phonenumbers
from stdnum import iban, luhn
from stdnum.in_ import aadhaar, pan
from stdnum.pk import cnic
from stdnum.us import ssn


@dataclass(frozen=True, slots=True)
class Match:
    """A violation inside a window: [start, end) of the window's normalised text."""

    start: int
    end: int
    kind: str


class Policy(Protocol):
    """Finds violations in normalised text. `max_match`: the longest text one match can span.
    A policy may also set `open_ended = True` when its matches are capped at max_match rather
    than naturally bounded; a capped match then stops the stream instead of being redacted.
    And it may define `hold_from(text) -> int`: the position in `text` (the newest max_match
    characters) from which a match still in progress could start; text before it can be
    released at once. Without it, hold mode holds the full max_match characters."""

    name: str
    max_match: int

    def find(self, text: str) -> list[Match]: ...


# kind -> (phrase for people, redaction label)
KINDS: dict[str, tuple[str, str]] = {
    "email": ("an email address", "[email removed]"),
    "phone": ("a phone number", "[phone number removed]"),
    "card": ("a credit card number", "[card number removed]"),
    "iban": ("a bank account number (IBAN)", "[IBAN removed]"),
    "ssn": ("a US social security number", "[ID number removed]"),
    "cnic": ("a Pakistani CNIC number", "[ID number removed]"),
    "aadhaar": ("an Aadhaar number", "[ID number removed]"),
    "pan": ("an Indian PAN", "[ID number removed]"),
    "api_key": ("an API key", "[secret removed]"),
    "private_key": ("a private key", "[secret removed]"),
    "token": ("an access token", "[secret removed]"),
    "password": ("a password", "[secret removed]"),
    "blocked_word": ("a blocked word", "[blocked word removed]"),
    "pattern": ("text matching a blocked pattern", "[removed]"),
    "check_error": ("text a safety check could not verify", "[removed]"),
}


def describe(kind: str) -> str:
    if kind.startswith("moderation:"):
        category = kind.partition(":")[2].replace("/", ", ").replace("-", " ").replace("_", " ")
        return f"content the moderation check flagged ({category})"
    return KINDS.get(kind, (f"a {kind.replace('_', ' ')}", "[removed]"))[0]


def label(kind: str) -> str:
    if kind.startswith("moderation:"):
        return "[removed by moderation]"
    return KINDS.get(kind, ("", "[removed]"))[1]


_TRAILING_WORD = re.compile(r"\S*$")
# Characters that numbers with separators (phones, cards, IBANs, IDs) are made of.
_TRAILING_NUMBERISH = re.compile(r"[0-9A-Z+()./ -]*$")


def trailing_word_start(text: str) -> int:
    """Where the last run of non-space characters begins (len(text) after a space)."""
    found = _TRAILING_WORD.search(text)
    return found.start() if found else len(text)


def _validated(
    pattern: re.Pattern[str], text: str, kind: str, valid: Callable[[str], bool]
) -> list[Match]:
    return [
        Match(found.start(), found.end(), kind)
        for found in pattern.finditer(text)
        if valid(found.group())
    ]


# --- PII --------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,3}\.[A-Za-z]{2,24}(?![\w-])"
)
# A run of digits, optionally grouped by single spaces or dashes; cards (13-19 digits) are
# looked for inside it.
_DIGIT_RUN = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,}(?![\d])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_CNIC = re.compile(r"(?<![\d-])\d{5}-\d{7}-\d(?![\d-])")
_AADHAAR = re.compile(r"(?<!\d)(?<!\d )[2-9]\d{3} ?\d{4} ?\d{4}(?!\d)")
_PAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{3}[ABCFGHJLPT][A-Z]\d{4}[A-Z](?![A-Za-z0-9])")
_DIGITS = re.compile(r"\d")


def _card_ok(value: str) -> bool:
    digits = re.sub(r"[ -]", "", value)
    separators = set(re.findall(r"[ -]", value))
    # Issuer digits 2-6 (Mastercard 2-series, Amex 3, Visa 4, Mastercard 5, Discover 6), one
    # kind of separator, and the Luhn checksum: random digit runs fail one of these.
    return (
        13 <= len(digits) <= 19
        and digits[0] in "23456"
        and len(separators) <= 1
        and luhn.is_valid(digits)
    )


def _longest_valid(
    pattern: re.Pattern[str],
    text: str,
    kind: str,
    valid: Callable[[str], bool],
    *,
    longest: int = 64,
) -> list[Match]:
    """Numbers inside runs of digits and separators. A run may hold more than the number
    ("4111 1111 1111 1111 0"), so every start after a separator and every end after a
    character is tried, longest first: the verdict must not depend on what follows."""
    found: list[Match] = []
    for run in pattern.finditer(text):
        raw, base = run.group(), run.start()
        starts = [0] + [i + 1 for i, c in enumerate(raw) if c in " -"]
        ends = [i + 1 for i, c in enumerate(raw) if c.isalnum()]
        chosen = next(
            (
                (start, end)
                for start in starts
                for end in reversed(ends)
                if start < end <= start + longest and valid(raw[start:end])
            ),
            None,
        )
        if chosen is not None:
            # While the run reaches the end of what has arrived it may still grow into another
            # number: report it to the end, which keeps the verdict open (see Guard).
            end = run.end() if not text[run.end() :].strip(" -") else base + chosen[1]
            found.append(Match(base + chosen[0], end, kind))
    return found


class PiiPolicy:
    """Emails, phone numbers, card numbers, IBANs and national IDs (US SSN, Pakistan CNIC,
    India Aadhaar and PAN)."""

    name = "pii"
    max_match = 80

    def __init__(self, phone_regions: Sequence[str] = ("US", "IN", "PK")) -> None:
        self.phone_regions = tuple(phone_regions)

    def hold_from(self, text: str) -> int:
        """Where a match not yet complete could start: emails have no spaces, so within the
        last word; numbers may contain spaces, so within the trailing run of number-ish
        characters (digits, capitals, + ( ) . / - and spaces)."""
        numberish = _TRAILING_NUMBERISH.search(text)
        return min(trailing_word_start(text), numberish.start() if numberish else len(text))

    def find(self, text: str) -> list[Match]:
        found = [Match(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
        found += _longest_valid(_DIGIT_RUN, text, "card", _card_ok, longest=25)
        found += _longest_valid(_IBAN, text, "iban", lambda v: iban.is_valid(v.replace(" ", "")))
        found += _validated(_SSN, text, "ssn", ssn.is_valid)
        found += _validated(_CNIC, text, "cnic", cnic.is_valid)
        found += _validated(_AADHAAR, text, "aadhaar", aadhaar.is_valid)
        found += _validated(_PAN, text, "pan", pan.is_valid)
        found += self._phones(text, taken=found)
        return found

    def _phones(self, text: str, taken: list[Match]) -> list[Match]:
        phones: list[Match] = []
        # phonenumbers is the costly part: only phone-shaped runs of 7-15 digits are given to
        # it, and the verdict for a run is cached (overlapping windows see it many times).
        for candidate in _PHONE_CANDIDATE.finditer(text):
            raw = candidate.group()
            if not 7 <= len(_DIGITS.findall(raw)) <= 15 or _DATE_OR_TIME.search(raw):
                continue
            # Only separators after it: the run may still grow, so keep the verdict open.
            at_end = not text[candidate.end() :].strip(" ().-")
            for start, end in _phone_spans_trimmed(raw, self.phone_regions):
                stop = candidate.end() if at_end else candidate.start() + end
                match = Match(candidate.start() + start, stop, "phone")
                if not any(m.start < match.end and match.start < m.end for m in taken + phones):
                    phones.append(match)
        return phones


# A run that could hold a phone number: digits with spaces, dots, dashes or brackets.
_PHONE_CANDIDATE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{5,22}\d(?![\w])")
# Dates and times are digit runs too: "2024-01-15 12" is a valid US number to phonenumbers.
_DATE_OR_TIME = re.compile(
    r"(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])|\d{1,2}:\d{2}"
)


def _phone_spans_trimmed(raw: str, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Phone numbers in a run, also when more digits follow the number after a space
    ("+1 415 555 0123 45"): the run is tried whole, then cut back at each separator."""
    spans = _phone_spans(raw, regions)
    cut = len(raw)
    while not spans:
        cut = max(raw.rfind(" ", 0, cut), raw.rfind("-", 0, cut))
        if cut <= 0:
            break
        spans = _phone_spans(raw[:cut], regions)
    return spans


@lru_cache(maxsize=4096)
def _phone_spans(raw: str, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    spans: list[tuple[int, int]] = []
    for region in regions:
        for number in phonenumbers.PhoneNumberMatcher(
            raw, region, leniency=phonenumbers.Leniency.VALID
        ):
            if not any(s < number.end and number.start < e for s, e in spans):
                spans.append((number.start, number.end))
    return tuple(spans)


# --- secrets ----------------------------------------------------------------------------------

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")),
    (
        "api_key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"),
    ),
    ("api_key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("token", re.compile(r"(?<![A-Za-z0-9_])(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}")),
    ("token", re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,}")),
    ("token", re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}")),
    (
        "token",
        re.compile(
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,40}\.eyJ[A-Za-z0-9_-]{8,40}\.[A-Za-z0-9_-]{8,}"
        ),
    ),
)
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:[A-Za-z0-9]+_)*"
    r"(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token)"
    r"[\"']?\s{0,2}[:=]\s{0,2}[\"']?([^\s\"',;]{8,64})"
)
# The end of the text may be the start of a PEM header or of an assignment still being written.
_PENDING_PEM = re.compile(r"-{1,5}(?:B(?:E(?:G(?:I(?:N(?: [A-Z0-9 ]*)?)?)?)?)?)?$")
_PENDING_ASSIGNMENT = re.compile(
    r"(?i)(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token)"
    r"[\"']?\s{0,2}(?:[:=]\s{0,2}[\"']?\S*)?$"
)
_PLACEHOLDERS = re.compile(
    r"(?i)^(?:\*+|x+|\.+|<[^>]*>|\{[^}]*\}|\$\{?[A-Z_]+\}?|your[_-].*|changeme|example.*|"
    r"placeholder|redacted|null|none|true|false|password|secret)$"
)


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


class SecretsPolicy:
    """Provider keys and tokens (OpenAI, AWS, GitHub, Slack, JWTs), PEM private keys, and
    high-entropy values assigned to names like PASSWORD or api_key. Key patterns have no upper
    length; a match is cut at max_match, which makes it "saturated" (see Guard)."""

    name = "secrets"
    max_match = 100
    open_ended = True  # keys and tokens have no fixed length: matches are capped at max_match

    def hold_from(self, text: str) -> int:
        """Keys and tokens have no spaces: only the last word can be one in progress, unless a
        PEM header or a `name = value` assignment is still being written at the end."""
        start = trailing_word_start(text)
        for pending in (_PENDING_PEM.search(text), _PENDING_ASSIGNMENT.search(text)):
            if pending is not None:
                start = min(start, trailing_word_start(text[: pending.start() + 1]))
        return start

    def find(self, text: str) -> list[Match]:
        found = [
            Match(m.start(), min(m.end(), m.start() + self.max_match), kind)
            for kind, pattern in _SECRET_PATTERNS
            for m in pattern.finditer(text)
        ]
        for m in _ASSIGNMENT.finditer(text):
            value = m.group(1)
            if not _PLACEHOLDERS.match(value) and _entropy(value) >= 2.5:
                found.append(Match(m.start(1), m.end(1), "password"))
        return found


# --- blocklist --------------------------------------------------------------------------------

# One character in, one character out, so positions stay put. Leetspeak digits and symbols
# fold to the letters they stand for; 1, | and l all fold to i so "h3ll0" meets "hello".
_LEET = str.maketrans({"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "|": "i", "l": "i",
                       "0": "o", "5": "s", "$": "s", "7": "t", "+": "t"})  # fmt: skip


def fold(text: str) -> str:
    """Case and leetspeak folding, length-preserving."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case into two; keep positions
        lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return lowered.translate(_LEET)


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char in "_@$!|+"


class BlocklistPolicy:
    """Words and phrases, matched on word boundaries after case and leetspeak folding, with an
    Aho-Corasick automaton: one pass over the text whatever the size of the list."""

    name = "blocklist"

    def __init__(self, entries: Iterable[str]) -> None:
        words = sorted({" ".join(fold(e).split()) for e in entries if e.strip()})
        self.automaton = ahocorasick.Automaton()
        for word in words:
            self.automaton.add_word(word, len(word))
        self.max_match = max((len(w) for w in words), default=1)
        self._phrases = any(" " in w for w in words)
        self._empty = not words
        if words:
            self.automaton.make_automaton()

    def hold_from(self, text: str) -> int:
        """A word in progress can only be the last word (unless entries have spaces), and
        starts at most max_match - 1 characters back."""
        latest = max(0, len(text) - (self.max_match - 1))
        return latest if self._phrases else max(latest, trailing_word_start(text))

    def find(self, text: str) -> list[Match]:
        if self._empty:
            return []
        folded = fold(text)
        found = []
        for end_index, length in self.automaton.iter(folded):
            start, end = end_index - length + 1, end_index + 1
            before = text[start - 1] if start > 0 else " "
            after = text[end] if end < len(text) else " "
            if not _is_word_char(before) and not _is_word_char(after):
                found.append(Match(start, end, "blocked_word"))
        return found


@lru_cache(maxsize=8)
def default_blocklist() -> tuple[str, ...]:
    text = (resources.files("streamchat.guardrails") / "data" / "blocklist.txt").read_text()
    return tuple(_entries(text))


def _entries(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def load_blocklist(path: str | None) -> tuple[str, ...]:
    entries = list(default_blocklist())
    if path:
        try:
            entries += _entries(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(
                f"GUARDRAIL_BLOCKLIST_FILE: cannot read {path} ({exc.strerror})."
            ) from None
    return tuple(entries)


# --- user patterns ----------------------------------------------------------------------------

_NAMED = re.compile(r"^([a-z][a-z0-9_]{0,40})\s*=\s*(.+)$")
_MAX_MATCH_LINE = re.compile(r"^#\s*max_match\s*:\s*(\d+)\s*$", re.IGNORECASE)


class RegexPolicy:
    """User patterns from a file: one regular expression per line, optionally `kind = pattern`;
    `#` starts a comment; a line `# max_match: N` sets the longest match (default 100). A match
    longer than that counts as a violation of its first N characters."""

    name = "regex"
    open_ended = True

    def __init__(self, patterns: Sequence[tuple[str, re.Pattern[str]]], max_match: int) -> None:
        self.patterns = tuple(patterns)
        self.max_match = max_match

    @classmethod
    def from_file(cls, path: str) -> RegexPolicy:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(
                f"GUARDRAIL_REGEX_FILE: cannot read {path} ({exc.strerror})."
            ) from None
        patterns, max_match = [], 100
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line:
                continue
            if declared := _MAX_MATCH_LINE.match(line):
                max_match = max(1, int(declared.group(1)))
                continue
            if line.startswith("#"):
                continue
            named = _NAMED.match(line)
            kind, source = (named.group(1), named.group(2)) if named else ("pattern", line)
            try:
                patterns.append((kind, re.compile(source)))
            except re.error as exc:
                raise ValueError(
                    f"GUARDRAIL_REGEX_FILE {path}, line {number}: invalid pattern ({exc})."
                ) from None
        return cls(patterns, max_match)

    def find(self, text: str) -> list[Match]:
        return [
            Match(m.start(), min(m.end(), m.start() + self.max_match), kind)
            for kind, pattern in self.patterns
            for m in pattern.finditer(text)
            if m.end() > m.start()
        ]
