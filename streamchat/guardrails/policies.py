"""Policies: what counts as a violation. Each finds matches in a window of normalised text and
declares `max_match`, the longest text one match can span, so the guard knows how much to rescan
and how much to hold back.

Detection uses well-kept libraries where they exist: phonenumbers (Google's libphonenumber) for
phone numbers, python-stdnum for the checksums of card numbers (Luhn), IBANs and national IDs,
pyahocorasick for linear-time multi-word search, and the token shapes of detect-secrets'
plugins and the providers' documentation for secrets. A cheap first question (four digits, an
@, a known prefix, a secret's name before : or =) spares most text the full set of patterns.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import ClassVar, Protocol

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
    # The verdict may still change with text yet to come, though the match does not reach the
    # end of the text (an account number that an IFSC may follow): the guard waits, as for a
    # match that may still grow, and at the end of the stream takes the match as it is.
    pending: bool = False


@dataclass(frozen=True, slots=True)
class Quiet:
    """A policy's quick question, for ASCII text: when `pattern` finds nothing in the text from
    `reach` characters before `since` or `tail` characters before the end, whichever is earlier,
    `find(text, since)` finds nothing and `hold_from(text, since)` is where a match of `hold` at
    the start of the reversed text ends, counted back from the end (or `since`, if that is
    later). The guard then asks the policy nothing else: one search and one match instead of
    its two calls, which is most checks (see Guard._scan)."""

    pattern: re.Pattern[str]
    reach: int
    tail: int
    hold: re.Pattern[str]


def _literal_first(*alternatives: str) -> str:
    """One search of these alternatives, each beginning with one fixed character: the regex
    engine then skips to those characters instead of trying every alternative everywhere."""
    return "|".join(alternatives)


def _any_case(word: str) -> list[str]:
    """`word` in any case, as two alternatives that each begin with a fixed character."""
    rest = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word[1:])
    return [re.escape(word[0].lower()) + rest, re.escape(word[0].upper()) + rest]


class Policy(Protocol):
    """Finds violations in normalised text. `max_match`: the longest text one match can span.
    A policy may also set `open_ended = True` when its matches are capped at max_match rather
    than naturally bounded, with `continuations` (kind -> pattern whose match ends the value)
    so that redact passes over the rest of a capped value, and `always_continues` (kinds whose
    match is only the start of the value, as a PEM header); without a continuation a capped
    match stops the stream instead of being redacted. And it may define
    `hold_from(text) -> int`: the position in `text` (the newest max_match characters) from
    which a match still in progress could start; text before it can be released at once.
    Without it, hold mode holds the full max_match characters. A policy whose `find` and
    `hold_from` take `since` (and says so with `accepts_since = True`) is told where in the
    text new matches can start: the guard has decided and released everything before, so the
    policy's cheap first question needs to look only from there on (see `find`), and its hold
    may be any position up to `since` where the whole text would give one before it. Such a
    policy may also declare `quiet` (see Quiet), what most checks then cost."""

    name: str
    max_match: int

    def find(self, text: str) -> list[Match]: ...


# kind -> (phrase for people, redaction label)
KINDS: dict[str, tuple[str, str]] = {
    "email": ("an email address", "[email removed]"),
    "phone": ("a phone number", "[phone number removed]"),
    "card": ("a credit card number", "[card number removed]"),
    "iban": ("a bank account number (IBAN)", "[IBAN removed]"),
    "bank_account": ("a bank account number", "[account number removed]"),
    "upi": ("a UPI ID", "[UPI ID removed]"),
    "ssn": ("a US social security number", "[ID number removed]"),
    "cnic": ("a Pakistani CNIC number", "[ID number removed]"),
    "aadhaar": ("an Aadhaar number", "[ID number removed]"),
    "pan": ("an Indian PAN", "[ID number removed]"),
    "uk_nino": ("a UK National Insurance number", "[ID number removed]"),
    "openai_key": ("an OpenAI API key", "[secret removed]"),
    "anthropic_key": ("an Anthropic API key", "[secret removed]"),
    "google_api_key": ("a Google API key", "[secret removed]"),
    "aws_access_key": ("an AWS access key id", "[secret removed]"),
    "aws_secret_key": ("an AWS secret access key", "[secret removed]"),
    "azure_storage_key": ("an Azure storage account key", "[secret removed]"),
    "github_token": ("a GitHub token", "[secret removed]"),
    "gitlab_token": ("a GitLab token", "[secret removed]"),
    "slack_token": ("a Slack token", "[secret removed]"),
    "slack_webhook": ("a Slack webhook URL", "[secret removed]"),
    "stripe_key": ("a Stripe secret key", "[secret removed]"),
    "sendgrid_key": ("a SendGrid API key", "[secret removed]"),
    "twilio_key": ("a Twilio key", "[secret removed]"),
    "jwt": ("a JSON Web Token", "[secret removed]"),
    "bearer_token": ("a bearer token", "[secret removed]"),
    "private_key": ("a private key", "[secret removed]"),
    "password": ("a password", "[secret removed]"),
    "secret": ("a secret value", "[secret removed]"),
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


# Characters that numbers with separators (phones, cards, IBANs, IDs) are made of: stripped
# from the end of the text to find where its trailing number may begin (a search anchored at $
# would retry every start).
_NUMBERISH = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+()./ -"


def trailing_word_start(text: str) -> int:
    """Where the last run of non-space characters begins (len(text) after a space). Normalised
    text has one kind of space."""
    return text.rfind(" ") + 1


def _validated(
    pattern: re.Pattern[str], text: str, kind: str, valid: Callable[[str], bool]
) -> list[Match]:
    return [
        Match(found.start(), found.end(), kind)
        for found in pattern.finditer(text)
        if valid(found.group())
    ]


def _data_lines(name: str) -> list[str]:
    text = (resources.files("streamchat.guardrails") / "data" / name).read_text(encoding="utf-8")
    return _entries(text)


def _entries(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# --- PII --------------------------------------------------------------------------------------

# The domain is read to its end: a match may not stop where more of the domain follows, so an
# email is found (and redacted) whole, never leaving ".example.com" behind.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}"
    r"(?![\w-]|\.[A-Za-z0-9])"
)
# user:password@ inside a URL is a credential (the secrets policy), not an email address.
_URL_USERINFO_BEFORE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@]*$")
# A run of digits, optionally grouped by single spaces or dashes; cards (13-19 digits) are
# looked for inside it.
_DIGIT_RUN = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,}(?![\d])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
# One kind of separator throughout (dash or space), or none where the shape is unambiguous.
_SSN = re.compile(r"(?<![\w-])(?<!\d )\d{3}([- ])\d{2}\1\d{4}(?![\w-])(?! \d)")
_CNIC = re.compile(r"(?<![\w-])(?<!\d )\d{5}([- ])\d{7}\1\d(?![\w-])(?! \d)")
_CNIC_PLAIN = re.compile(r"(?<![\w-])\d{13}(?![\w-])")
# A plain 13-digit number is a CNIC only when named so shortly before (else it is an order or
# a timestamp); "shanakhti" is Urdu for identity, in Roman and Urdu script.
_CNIC_NAMED = re.compile(r"(?i)(?:cnic|\bnic\b|shanakht|identity card|\bid card|شناختی)")
# Aadhaar: 12 digits, first 2-9, Verhoeff checksum; not a group inside a UUID or a hash.
_AADHAAR = re.compile(r"(?<![\w-])(?<!\d )[2-9]\d{3}([ -]?)\d{4}\1\d{4}(?![\w-])")
_PAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{3}[ABCFGHJLPT][A-Z]\d{4}[A-Z](?![A-Za-z0-9])")
# UK National Insurance number (HMRC's rules: letters D F I Q U V never, O not second, and
# the prefixes BG GB KN NK NT TN ZZ are not issued).
_UK_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"( ?)\d{2}\1\d{2}\1\d{2}\1[A-D](?![A-Za-z0-9])"
)
# Indian bank accounts are 9-18 digits with no checksum: one counts only near an IFSC (the
# branch code: 4 letters, a zero, 6 letters or digits) within _IFSC_NEAR characters.
_IFSC = re.compile(r"(?<![A-Za-z0-9])[A-Z]{4}0[A-Z0-9]{6}(?![A-Za-z0-9])")
_ACCOUNT = re.compile(r"(?<![\w.,-])\d{9,18}(?![\w-]|[.,]\d)")
# What every account number has: the first question before the full pattern (normalised text
# has ASCII digits only, and a class of them is quicker to search for than \d).
_NINE_DIGITS = re.compile(r"[0-9]{9}")
_IFSC_NEAR = 40
# How far back an account number may start and still be waiting for an IFSC after it.
_ACCOUNT_REACH = _IFSC_NEAR + 12
_DIGITS = re.compile(r"\d")
# Every kind has an @ or four digits close together ("1234", "12 34" in a UK NI number),
# inside the match itself. (Normalised text has ASCII digits only: a class of them is searched
# for faster than \d.)
_WORTH_A_LOOK = re.compile(r"[0-9][0-9][ -]?[0-9][0-9]|@")
# The same question of ASCII text, as substring searches of a copy with every digit made "0"
# and every other character but the separators and "@" made "x": the regex tries its pattern at
# every position, a few times slower on text with many digits (load.py's answer) or none.
_DIGITS_AS_ZERO = bytes(
    byte if chr(byte) in " -@" else ord("0") if chr(byte).isdigit() else ord("x")
    for byte in range(256)
)


def _digit_shape(text: str, start: int) -> str:
    """ASCII `text` from `start` with every digit "0" and every other character but " ", "-"
    and "@" "x". (A str: `in` on bytes costs several times as much for needles this short.)"""
    return text[start:].encode("ascii").translate(_DIGITS_AS_ZERO).decode("ascii")


def _worth_a_look(text: str, start: int) -> bool:
    """Whether `text` from `start` has an @ or four digits close together."""
    if not text.isascii():
        return _WORTH_A_LOOK.search(text, start) is not None
    shape = _digit_shape(text, start)
    return "@" in shape or "0000" in shape or "00 00" in shape or "00-00" in shape


def _has_nine_digits(text: str, start: int) -> bool:
    if not text.isascii():
        return _NINE_DIGITS.search(text, start) is not None
    return "000000000" in _digit_shape(text, start)


# How far before a match its cheap question's answer can start (none for these kinds; a
# little slack for the separators).
_PII_REACH = 4


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


@lru_cache(maxsize=1)
def _upi_pattern() -> re.Pattern[str]:
    handles = sorted({h.lower() for h in _data_lines("upi_handles.txt")}, key=len, reverse=True)
    return re.compile(
        r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._-]{1,63}@(?i:"
        + "|".join(map(re.escape, handles))
        # a handle has no dot after it: name@ybl.com would be an email
        + r")(?![\w-]|\.[A-Za-z0-9])"
    )


def _near_ifsc(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - _IFSC_NEAR - 11) : start]
    after = text[end : end + _IFSC_NEAR + 11]
    return bool(_IFSC.search(before) or _IFSC.search(after))


_NUMBERISH_CLASS = "".join(map(re.escape, _NUMBERISH))
_NUMBERISH_WORD_CLASS = _NUMBERISH_CLASS.replace(re.escape(" "), "")
# The quick question (see Quiet): the cheap first question (an @ or four digits close
# together) from its reach before `since`, and within an account number's reach of the end
# (nine digits have four together). Then the hold is that of hold_from for text without an
# account number: read backwards, a last word of number-ish characters goes back over the
# whole run of them (spaces included), any other last word is held alone.
_PII_QUIET = Quiet(
    re.compile("[0-9@](?:(?<=@)|[0-9][ -]?[0-9][0-9])"),
    _PII_REACH,
    _ACCOUNT_REACH,
    re.compile(f"(?=[{_NUMBERISH_WORD_CLASS}]*(?: |\\Z))[{_NUMBERISH_CLASS}]*|[^ ]*"),
)


class PiiPolicy:
    """Emails, phone numbers, card numbers, IBANs, bank accounts next to an IFSC, UPI IDs and
    national IDs (US SSN, UK National Insurance, Pakistan CNIC, India Aadhaar and PAN)."""

    name = "pii"
    max_match = 80
    accepts_since = True
    quiet = _PII_QUIET
    # Match ends for a match that outgrew max_match (redact mode reads on to them).
    continuations: ClassVar[Mapping[str, re.Pattern[str]]] = {
        "email": re.compile(r"(?=[^A-Za-z0-9._%+@-])")
    }

    def __init__(self, phone_regions: Sequence[str] = ("US", "IN", "PK")) -> None:
        self.phone_regions = tuple(phone_regions)
        self._upi = _upi_pattern()

    def hold_from(self, text: str, since: int = 0) -> int:
        """Where a match not yet complete could start: emails and UPI IDs have no spaces, so
        within the last word; numbers may contain spaces, so within the trailing run of
        number-ish characters (digits, capitals, + ( ) . / - and spaces); an account number
        until it is _IFSC_NEAR characters behind (an IFSC may follow it)."""
        length = len(text)
        # Read only from `since` (released text is decided): a run reaching back to it starts
        # there as far as the guard is concerned.
        newest = text[since:] if since else text
        start = length - len(newest) + len(newest.rstrip(_NUMBERISH))
        word = text.rfind(" ", since) + 1  # trailing_word_start, inline: this runs at every check
        if word < start:
            start = word if word > since else since
        recent = length - _ACCOUNT_REACH if length > _ACCOUNT_REACH else 0
        if recent < since:
            recent = since
        if not _has_nine_digits(text, recent):
            return start
        account = _ACCOUNT.search(text, recent)
        return start if account is None else min(start, account.start())

    def find(self, text: str, since: int = 0) -> list[Match]:
        """Matches in `text`. With `since`, [] when no match can start at or after it (what
        the cheap question would find lies inside each match, so it is asked from there on);
        otherwise every match in `text`, as without it."""
        if not _worth_a_look(text, since - _PII_REACH if since > _PII_REACH else 0):
            return []  # most prose stops here
        found: list[Match] = []
        if "@" in text:
            found += [m for m in _validated(self._upi, text, "upi", bool)]
            found += [
                Match(m.start(), m.end(), "email")
                for m in _EMAIL.finditer(text)
                if not m.group().startswith("git@")  # an SSH remote: git@github.com:o/r
                and not _URL_USERINFO_BEFORE.search(text, max(0, m.start() - 80), m.start())
                and not any(u.start <= m.start() < u.end for u in found)
            ]
        # An account number next to an IFSC is an account, whatever else its digits fit.
        found += [
            Match(m.start(), m.end(), "bank_account")
            for m in _ACCOUNT.finditer(text)
            if _near_ifsc(text, m.start(), m.end())
            and not any(f.start < m.end() and m.start() < f.end for f in found)
        ]
        found += _longest_valid(_DIGIT_RUN, text, "card", _card_ok, longest=25)
        found += _longest_valid(_IBAN, text, "iban", lambda v: iban.is_valid(v.replace(" ", "")))
        found += _validated(_SSN, text, "ssn", lambda v: ssn.is_valid(v.replace(" ", "-")))
        found += _validated(_CNIC, text, "cnic", lambda v: cnic.is_valid(v.replace(" ", "")))
        found += [
            Match(m.start(), m.end(), "cnic")
            for m in _CNIC_PLAIN.finditer(text)
            if cnic.is_valid(m.group())
            and _CNIC_NAMED.search(text, max(0, m.start() - 32), m.start())
        ]
        found += _validated(
            _AADHAAR, text, "aadhaar", lambda v: aadhaar.is_valid(v.replace("-", ""))
        )
        found += _validated(_PAN, text, "pan", pan.is_valid)
        found += _validated(_UK_NINO, text, "uk_nino", bool)
        found += self._phones(text, taken=found)
        accounts = [m for m in found if m.kind == "bank_account"]
        return [
            self._pending_account(m, text)
            for m in found
            if m.kind == "bank_account"
            or not any(a.start < m.end and m.start < a.end for a in accounts)
        ]

    @staticmethod
    def _pending_account(match: Match, text: str) -> Match:
        """A plain run of 9-18 digits may turn out to be an account number when an IFSC follows:
        until enough text has followed it, its verdict stays open (`pending`), so the kind never
        depends on where the stream was cut."""
        if (
            match.kind in ("bank_account", "email", "upi")
            or len(text) - match.end > _IFSC_NEAR + 11
            or not _ACCOUNT.fullmatch(text, match.start, match.end)
        ):
            return match
        return Match(match.start, match.end, match.kind, pending=True)

    def _phones(self, text: str, taken: list[Match]) -> list[Match]:
        phones: list[Match] = []
        # phonenumbers is the costly part: only phone-shaped runs are given to it (cut at a
        # sentence end, "... 1234567. 0000", and back to at most 15 digits), and the verdict for
        # a run is cached (overlapping windows see it many times).
        for candidate in _PHONE_CANDIDATE.finditer(text):
            for part in _SENTENCE_PART.finditer(candidate.group()):
                raw, base = part.group(), candidate.start() + part.start()
                digits = len(_DIGITS.findall(raw))
                if digits < 7 or _DATE_OR_TIME.search(raw) or _IP_ADDRESS.search(raw):
                    continue
                # Only separators after it: the run may still grow, so keep the verdict open.
                at_end = not text[base + len(raw) :].strip(" ().-")
                for start, end in _phone_spans_trimmed(raw, self.phone_regions, digits):
                    stop = base + len(raw) if at_end else base + end
                    match = Match(base + start, stop, "phone")
                    if not any(m.start < match.end and match.start < m.end for m in taken + phones):
                        phones.append(match)
        return phones


# A run that could hold a phone number: digits with spaces, dots, dashes or brackets; not a
# group inside a UUID, a hash or a version number.
_PHONE_CANDIDATE = re.compile(r"(?<![\w+.-])\+?\(?\d[\d ().-]{5,22}\d(?![\w])")
_SENTENCE_PART = re.compile(r"(?:[^.]|\.(?! ))+")
_IP_ADDRESS = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Dates and times are digit runs too: "2024-01-15 12" is a valid US number to phonenumbers.
_DATE_OR_TIME = re.compile(
    r"(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)\d\d|\d{1,2}:\d{2}"
)


def _phone_spans_trimmed(
    raw: str, regions: tuple[str, ...], digits: int
) -> tuple[tuple[int, int], ...]:
    """Phone numbers in a run, also when more digits follow the number after a space
    ("+1 415 555 0123 45"): the run is tried whole (once it has at most 15 digits), then cut back
    at each separator."""
    cut = len(raw)
    while digits > 15:  # more numbers after a space; a long run joined by dashes is an id
        cut = raw.rfind(" ", 0, cut)
        if cut <= 0:
            return ()
        digits = len(_DIGITS.findall(raw, 0, cut))
    spans = _phone_spans(raw[:cut], regions)
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
            if any(s < number.end and number.start < e for s, e in spans):
                continue
            # Written without "+" or a trunk "0", a fixed-line number is more likely something
            # else (an Indian landline without its 0 is any 10 digits starting 1-5, an epoch).
            bare = number.raw_string[0] not in "+0(" and not number.raw_string.startswith("00")
            if bare and phonenumbers.number_type(number.number) not in _MOBILE_OR_EITHER:
                continue
            spans.append((number.start, number.end))
    return tuple(spans)


_MOBILE_OR_EITHER = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


# --- secrets ----------------------------------------------------------------------------------

# Placeholders stand for a secret without being one: <token>, ${VAR}, $VAR, {{ var }}, runs of
# x, * or dots, "your_..._here", and the words people put where a password goes.
_PLACEHOLDER_PARTS = re.compile(
    r"(?i)<[^>]*>|\$\{|\{\{|\{[A-Za-z_]+\}|^\$[A-Za-z_]+$|x{4,}|\*{3,}|\.{3}|…|your[_-]?|"
    r"change[_-]?me|replace[_-]?me|insecure|not[_-]?a[_-]?(?:real[_-]?)?secret|"
    r"[_-]here\b|^(?:changeme|example|placeholder|redacted|null|none|true|false|password|"
    r"passwd|pass|pwd|secret|token|api[_-]?key|dummy|test|sample|foobar|hunter2)$"
)


def _placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER_PARTS.search(value)) or len(set(value.lower())) < 5


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def _random_looking(value: str) -> bool:
    """A token body, not a word: letters and digits mixed, and varied characters."""
    return (
        any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and not _placeholder(value)
        and _entropy(value) >= 3.0
    )


@dataclass(frozen=True, slots=True)
class _Shape:
    """One secret format: a bounded or open-ended pattern (group 1, if any, is the secret), an
    optional check of the value, and the characters an open-ended value is made of."""

    kind: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] | None = None
    alphabet: str | None = None  # open-ended: the value continues while these characters do


_B64URL = "A-Za-z0-9_-"
# Token shapes as in detect-secrets' plugins and the providers' documentation.
_SHAPES: tuple[_Shape, ...] = (
    _Shape(
        "private_key",
        re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"),
    ),
    _Shape(
        "anthropic_key",
        re.compile(r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{20,}"),
        _random_looking,
        _B64URL,
    ),
    _Shape(
        "openai_key",
        re.compile(r"(?<![\w-])sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
        _random_looking,
        _B64URL,
    ),
    _Shape("google_api_key", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35,}"), None, _B64URL),
    _Shape(
        "aws_access_key",
        re.compile(
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"
        ),
    ),
    # The secret access key is 40 characters of base64 with no prefix: found by its name, as
    # in `aws iam create-access-key` output ("SecretAccessKey": "...") and in credentials files.
    _Shape(
        "aws_secret_key",
        re.compile(
            r"(?i)(?:aws[ _-]?)?secret[ _-]?(?:access[ _-]?)?key(?:[ _-]?id)?[\"']?\s{0,3}[:=]"
            r"\s{0,3}[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        _random_looking,
    ),
    _Shape(
        "azure_storage_key",
        re.compile(r"(?i)AccountKey=([A-Za-z0-9+/]{40,}={0,2})"),
        None,
        "A-Za-z0-9+/=",
    ),
    _Shape(
        "github_token",
        re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
        _random_looking,
        "A-Za-z0-9_",
    ),
    _Shape(
        "gitlab_token",
        re.compile(r"(?<![\w-])gl(?:pat|ptt|dt|rt|soat|cbt|ft|imt|agent)-[A-Za-z0-9_-]{20,}"),
        _random_looking,
        _B64URL,
    ),
    _Shape(
        "slack_webhook",
        re.compile(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{20,}"
        ),
        _random_looking,
        "A-Za-z0-9/_-",
    ),
    _Shape(
        "slack_token",
        re.compile(r"(?<![A-Za-z0-9-])(?:xox[abposre]|xapp)-[A-Za-z0-9-]{10,}"),
        _random_looking,
        "A-Za-z0-9-",
    ),
    _Shape(
        "stripe_key",
        re.compile(r"(?<![A-Za-z0-9_])[sr]k_live_[A-Za-z0-9]{16,}"),
        _random_looking,
        "A-Za-z0-9",
    ),
    _Shape(
        "sendgrid_key",
        re.compile(r"(?<![\w-])SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{20,}"),
        _random_looking,
        _B64URL,
    ),
    _Shape(
        "twilio_key",
        re.compile(r"(?<![A-Za-z0-9])(?:SK|AC)[0-9a-f]{32}(?![A-Za-z0-9])"),
        _random_looking,
    ),
    # A JWT starts with a base64url JSON header ("eyJ" is '{"'); real ones run to a thousand
    # characters, so the match is open-ended from the header on.
    _Shape(
        "jwt",
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{15,}(?:\.[A-Za-z0-9_-]*){0,2}"),
        _random_looking,
        "A-Za-z0-9_.-",
    ),
    _Shape(
        "bearer_token",
        re.compile(r"(?i)(?<![A-Za-z0-9])bearer ([A-Za-z0-9._~+/-]{20,}=*)"),
        _random_looking,
        "A-Za-z0-9._~+/=-",
    ),
    # user:password@ in a URL (postgresql://, mysql://, redis://, amqp://, https://...).
    _Shape(
        "password",
        re.compile(
            r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{1,20}://([^\s:/@?#]*):([^\s/@?#]{1,128})@"
            r"(?=[A-Za-z0-9\[])"
        ),
    ),
)
# What each format's pattern cannot match without (in the text as it is, or lower-cased for
# the patterns that ignore case): a shape is tried only where one of these occurs.
_NEEDLES: dict[str, tuple[tuple[str, ...], bool]] = {
    "private_key": (("-----BEGIN ",), False),
    "anthropic_key": (("sk-ant-",), False),
    "openai_key": (("sk-",), False),
    "google_api_key": (("AIza",), False),
    "aws_access_key": (("AKIA", "ASIA", "ABIA", "ACCA", "A3T"), False),
    "aws_secret_key": (("key",), True),
    "azure_storage_key": (("accountkey=",), True),
    "github_token": (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), False),
    "gitlab_token": (("gl",), False),
    "slack_webhook": (("https://hooks.slack.com/",), False),
    "slack_token": (("xox", "xapp-"), False),
    "stripe_key": (("k_live_",), False),
    "sendgrid_key": (("SG.",), False),
    "twilio_key": (("SK", "AC"), False),
    "jwt": (("eyJ",), False),
    "bearer_token": (("bearer ",), True),
    "password": (("://",), False),
}
_SECRET_NAMES = (
    r"password|passwd|passphrase|pwd|secret|api[_-]?key|apikey|access[_-]?key|auth[_-]?token"
    r"|access[_-]?token|refresh[_-]?token|token|client[_-]?secret|private[_-]?key|credentials?"
)
# `name = value`, `name: value`, "name": "value", NAME=value: the value is checked below.
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])[A-Za-z0-9_.-]{0,40}?(" + _SECRET_NAMES + r")[\"']?\s{0,2}"
    r"(?::=|=>|[:=])\s{0,2}([\"'`]?)([^\s\"'`,;]{8,})"
)
_ASSIGNMENT_VALUE_END = re.compile(r"(?=[\s\"'`,;])")
_TRAILING_PUNCTUATION = re.compile(r"[.,:;!?)\]}>]+$")
# Code on the right of an assignment names a secret, it does not hold one:
# os.environ["X"], os.getenv("X"), getpass.getpass(), settings.API_KEY, request.headers[...].
_CODE = re.compile(r"[(\[{$%]|^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
# The end of the text may be the start of a PEM header, of an assignment or of a URL with a
# password still being written.
_PENDING_PEM = re.compile(r"-{1,5}(?:B(?:E(?:G(?:I(?:N(?: [A-Z0-9 ]*)?)?)?)?)?)?$")
_PENDING_ASSIGNMENT = re.compile(
    r"(?i)(?:" + _SECRET_NAMES + r"|secret[ _-]?access[ _-]?key|bearer)"
    r"[\"']?\s{0,2}(?:(?::=|=>|[:=])\s{0,2}[\"'`]?\S*)?$"
)
# The same, read backwards from the end of the text (one anchored match instead of a search
# trying every start): the end of some name, then what may follow it up to the end. Every name
# above ends in one of these words, so no match here means no pending assignment; a match means
# the search above is worth making.
_PENDING_ASSIGNMENT_REVERSED = re.compile(
    r"(?i)(?:\S*[\"'`]?\s{0,2}(?:=:|>=|[:=]))?\s{0,2}[\"']?"
    r"(?:drowssap|dwssap|esarhpssap|dwp|terces|yek|nekot|s?laitnederc|reraeb)"
)
_PENDING_REACH = 64  # the longest tail a pending header or assignment can have
_PENDING_WORDS = 5  # and the most words ("-----BEGIN ENCRYPTED PRIVATE KEY", "token = value")
# The cheap first question, in two parts. A format's prefix, a ":" or "=", or "bearer ": one
# search whose every alternative begins with a fixed character, so the regex engine skips to
# those characters (a fifth of the cost of one search with the case-insensitive names in it).
# Then, only where a ":" or "=" or "bearer " came first, a secret's name before it or a
# bearer token.
_PREFIXES = (
    r"-----BEGIN|sk-|AIza|AKIA|ASIA|ABIA|ACCA|A3T|gh[pousr]_|github_pat_|gl[a-z]{1,5}-|"
    r"hooks\.slack|xox|xapp|k_live_|SG\.|SK[0-9a-f]|AC[0-9a-f]|eyJ|://|@"
)
_TRIGGER_PREFIX = re.compile(_PREFIXES)
# (Each alternative starts with one literal character, or the engine cannot skip: "[:=]" or
# "(?i:bearer )" here would make the search six times as slow.)
_TRIGGER_FIRST = re.compile(_PREFIXES + r"|:|=|b[Ee][Aa][Rr][Ee][Rr] |B[Ee][Aa][Rr][Ee][Rr] ")
_TRIGGER_NAME = re.compile(
    r"(?i:bearer |(?:pass(?:wd|word|phrase)?|pwd|secret|key|token|credentials?)[\"']?\s{0,2}[:=])"
)


def _triggered(text: str, start: int) -> bool:
    """Whether a format's prefix, a secret's name before : or =, or "bearer " occurs from
    `start` on."""
    first = _TRIGGER_FIRST.search(text, start)
    if first is None:
        return False  # most text
    if _TRIGGER_PREFIX.search(text, first.start()) is not None:
        return True
    return _TRIGGER_NAME.search(text, start) is not None


# How far before a match its trigger can start: a value found by the name before it
# ("credentials" ": " '"' is 17 characters; an AWS "SecretAccessKey" name with its separators
# less). A password in a URL has its "@" after it, so the scheme may be any distance back.
_TRIGGER_REACH = 24
# The names a pending assignment or bearer token can have all hold one of these (in text
# already normalised: Unicode letters that case-fold to these are ASCII by then).
_NAME_PARTS = ("pass", "pwd", "secret", "key", "token", "creden", "bearer")


def _names_a_secret(lowered: str) -> bool:
    """Whether lower-cased text holds one of _NAME_PARTS (substring searches: a few times
    faster than one regex of the alternatives, which tries them at every position)."""
    return (
        "key" in lowered
        or "token" in lowered
        or "pass" in lowered
        or "secret" in lowered
        or "pwd" in lowered
        or "creden" in lowered
        or "bearer" in lowered
    )


_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")


def _password_like(value: str, quoted: bool) -> bool:
    """A value assigned to a secret name that is itself a secret: not a placeholder, not code,
    and not a word ("Token: authentication ke liye ...", "secret: consistency"): mixed
    character classes with a digit or a symbol, or a long mixed-case run, and varied."""
    if len(value) < 8 or _placeholder(value) or (not quoted and _CODE.search(value)):
        return False
    lower = any(c.islower() for c in value)
    upper = any(c.isupper() for c in value)
    digit = any(c.isdigit() for c in value)
    symbol = any(not c.isalnum() for c in value)
    classes = lower + upper + digit + symbol
    if not (lower or upper):
        return False
    mixed = (classes >= 2 and (digit or symbol)) or (len(value) >= 16 and lower and upper)
    return mixed and _entropy(value) >= 2.5


def _connection_password(match: re.Match[str]) -> bool:
    user, password = match.group(1), match.group(2)
    return not _placeholder(password) and password != user


# The quick question (see Quiet): what `find` asks first (a format's prefix, ":", "=" or
# "bearer "), from its reach before `since`, and what the hold looks for near the end (a "-" of
# a PEM header, a secret's name); without them the hold is the last word.
_SECRETS_QUIET = Quiet(
    re.compile(
        _literal_first(
            _TRIGGER_FIRST.pattern, "-", *(alt for part in _NAME_PARTS for alt in _any_case(part))
        )
    ),
    _TRIGGER_REACH,
    _PENDING_REACH,
    re.compile("[^ ]*"),
)


class SecretsPolicy:
    """Provider keys and tokens (OpenAI, Anthropic, Google, AWS, Azure, GitHub, GitLab, Slack,
    Stripe, SendGrid, Twilio), JWTs and bearer tokens, PEM private keys, passwords in URLs, and
    secret-looking values assigned to names like PASSWORD or api_key. Open-ended values are cut
    at max_match; in redact mode the guard reads on to where each one ends (`continuations`)."""

    name = "secrets"
    max_match = 100
    accepts_since = True
    open_ended = True  # keys and tokens have no fixed length: matches are capped at max_match
    quiet = _SECRETS_QUIET
    # kind -> where a match that may go on beyond max_match ends
    continuations: ClassVar[Mapping[str, re.Pattern[str]]] = {
        **{s.kind: re.compile(f"(?=[^{s.alphabet}])") for s in _SHAPES if s.alphabet},
        "password": _ASSIGNMENT_VALUE_END,
        "secret": _ASSIGNMENT_VALUE_END,
        "private_key": _PEM_END,
    }
    # A match of these kinds is only the beginning of what must go: a PEM header is followed
    # by the key, up to its END line.
    always_continues = frozenset({"private_key"})

    def hold_from(self, text: str, since: int = 0) -> int:
        """Keys and tokens have no spaces: only the last word can be one in progress, unless a
        PEM header, a `name = value` assignment or a bearer token is still being written.
        (`since` is not needed: what is read here is bounded by _PENDING_REACH already.)"""
        start = text.rfind(" ") + 1  # trailing_word_start, inline: this runs at every check
        # Each pattern only where its fixed part occurs (most text has neither): a header has
        # a "-", an assignment or bearer token a name.
        tail = text[-_PENDING_REACH:]
        has_dash = "-" in tail
        has_name = _names_a_secret(tail.lower())
        if not (has_dash or has_name):
            return start
        # Both fit in the last few words: search only there.
        reach = start
        for _ in range(_PENDING_WORDS):
            reach = text.rfind(" ", 0, max(0, reach - 1)) + 1
        reach = max(reach, len(text) - _PENDING_REACH)
        tail = text[reach:]
        lowered = tail.lower()
        for pattern, worth_a_look in (
            (_PENDING_PEM, has_dash and "-" in tail),
            (
                _PENDING_ASSIGNMENT,
                has_name
                and _names_a_secret(lowered)
                and _PENDING_ASSIGNMENT_REVERSED.match(tail[::-1]) is not None,
            ),
        ):
            pending = pattern.search(text, reach) if worth_a_look else None
            if pending is not None:
                start = min(start, text.rfind(" ", 0, pending.start()) + 1)
        return start

    def find(self, text: str, since: int = 0) -> list[Match]:
        """Matches in `text`. With `since`, [] when no match can start at or after it (its
        format's prefix, its name or its "@" lies within _TRIGGER_REACH before the match or
        inside it); otherwise every match in `text`, as without it."""
        if not _triggered(text, max(0, since - _TRIGGER_REACH)):
            return []  # no format's prefix and no secret's name: most prose stops here
        found: list[Match] = []
        lowered = text.lower()
        for shape in _SHAPES:
            needles, folded = _NEEDLES[shape.kind]
            haystack = lowered if folded else text
            if not any(needle in haystack for needle in needles):
                continue
            for m in shape.pattern.finditer(text):
                if shape.kind == "password":
                    if _connection_password(m):
                        found.append(Match(m.start(2), m.end(2), "password"))
                    continue
                group = 1 if shape.pattern.groups else 0
                start, end = m.start(group), m.end(group)
                if shape.valid is not None and not shape.valid(m.group(group)):
                    continue
                found.append(Match(start, min(end, start + self.max_match), shape.kind))
        assignments = _ASSIGNMENT.finditer(text) if _names_a_secret(lowered) else ()
        for m in assignments:
            raw = m.group(3)
            value = _TRAILING_PUNCTUATION.sub("", raw)
            start = m.start(3)
            if any(f.start <= start < f.end or start <= f.start < m.end(3) for f in found):
                continue  # a known format said it first (and better)
            if _password_like(value, quoted=bool(m.group(2))):
                name = m.group(1).lower()
                kind = "password" if "pass" in name or name == "pwd" else "secret"
                end = start + (len(value) if len(value) < len(raw) else len(raw))
                found.append(Match(start, min(end, start + self.max_match), kind))
        return found


# --- blocklist --------------------------------------------------------------------------------

# One character in, one character out, so positions stay put. Leetspeak digits and symbols
# fold to the letters they stand for; 1, | and l all fold to i so "h3ll0" meets "hello".
_LEET = str.maketrans({"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "|": "i", "l": "i",
                       "0": "o", "5": "s", "$": "s", "7": "t", "+": "t"})  # fmt: skip


# The same for ASCII text, case included, as one byte table (a str.translate with a dict looks
# each character up in it; this runs at every check).
_ASCII_FOLD = bytes(
    ord(chr(byte).lower().translate(_LEET)) if byte < 128 else byte for byte in range(256)
)


def fold(text: str) -> str:
    """Case and leetspeak folding, length-preserving."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_FOLD).decode("ascii")
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
    accepts_since = True

    def __init__(self, entries: Iterable[str]) -> None:
        words = sorted({" ".join(fold(e).split()) for e in entries if e.strip()})
        self.automaton = ahocorasick.Automaton()
        for word in words:
            self.automaton.add_word(word, len(word))
        self.max_match = max((len(w) for w in words), default=1)
        # Every beginning of an entry: text still being written can only become an entry
        # where its end is one of these.
        self._prefixes = frozenset(w[:i] for w in words for i in range(1, len(w) + 1))
        self._initials = frozenset(w[0] for w in words)
        # The ASCII characters that fold to one of them (cases and leetspeak digits).
        self._ascii_initials = frozenset(
            c for c in map(chr, range(128)) if fold(c) in self._initials
        )
        self._empty = not words
        if words:
            self.automaton.make_automaton()
        # The quick question (see Quiet): a character that folds to an entry's first, at the
        # start of a word, where `find` or `hold_from` would look. Without one nothing is held.
        initials = "".join(map(re.escape, sorted(self._ascii_initials)))
        self.quiet = Quiet(
            # (the class first, so the engine skips to its characters)
            re.compile(f"[{initials}](?<![A-Za-z0-9_@$!|+].)" if initials else "(?!)"),
            1,
            self.max_match - 1,
            re.compile(""),
        )

    def hold_from(self, text: str, since: int = 0) -> int:
        """An entry in progress starts on a word boundary at most max_match - 1 characters
        back (and not before `since`: what came before is released), and what follows its
        start, folded, is the beginning of an entry: the earliest such start (len(text) when
        there is none, as after most words)."""
        first = len(text) - (self.max_match - 1)
        if first < since:
            first = since
        elif first < 0:
            first = 0
        region = text[first:]
        prefixes, initials, ascii_initials = self._prefixes, self._initials, self._ascii_initials
        if region.replace(" ", "").isalnum():
            # Words and spaces only (most text): an entry can start only at `first` (when a
            # boundary is before it) or after a space, and only where the character there
            # folds to an entry's first (most words: then nothing is folded).
            if first == 0 or not _is_word_char(text[first - 1]):
                at = 0
            else:
                space = region.find(" ")
                at = space + 1 if space >= 0 else len(region)
            folded = ""
            while at < len(region):
                char = region[at]
                if char in ascii_initials or (not char.isascii() and fold(char) in initials):
                    folded = folded or fold(region)
                    if folded[at:] in prefixes:
                        return first + at
                space = region.find(" ", at)
                if space < 0:
                    break
                at = space + 1
            return len(text)
        folded = fold(region)
        for offset, char in enumerate(folded):
            # The first character is looked up before anything longer is made and looked up.
            if char not in initials or folded[offset:] not in prefixes:
                continue
            start = first + offset
            if start == 0 or not _is_word_char(text[start - 1]):
                return start
        return len(text)

    def find(self, text: str, since: int = 0) -> list[Match]:
        """Entries in `text` on word boundaries; with `since`, only those starting at or after
        it (the character before it is read for the boundary)."""
        if self._empty:
            return []
        base = max(0, since - 1)
        folded = fold(text[base:])
        found = []
        for end_index, length in self.automaton.iter(folded):
            start, end = base + end_index - length + 1, base + end_index + 1
            if start < since:
                continue
            before = text[start - 1] if start > 0 else " "
            after = text[end] if end < len(text) else " "
            if not _is_word_char(before) and not _is_word_char(after):
                found.append(Match(start, end, "blocked_word"))
        return found


@lru_cache(maxsize=8)
def default_blocklist() -> tuple[str, ...]:
    return tuple(_data_lines("blocklist.txt"))


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
