"""Fault injection for the offline demo model (errors and broken streams on request, for tests and
for teaching error handling) and the wire form of its thinking.

A fault comes from `[fault: KIND key=value ...]` in a user message, the `X-Streamchat-Fault`
header or the server's default (OFFLINE_FAULT); kinds are 429, 500/502/503, 401, drop, stall,
malformed and no_tools (a model that refuses requests offering tools). The thinking's form
comes the same ways (`[reasoning: FORMAT]`, `X-Streamchat-Reasoning`).
The grammar and examples are in docs/offline-model.md."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

KINDS = ("429", "500", "502", "503", "401", "drop", "stall", "malformed", "no_tools")
_DIRECTIVE = re.compile(r"\[fault:\s*([^\]]*)\]", re.IGNORECASE)
_ALLOWED_KEYS = {
    "429": {"retry_after", "times"},
    "500": {"times"},
    "502": {"times"},
    "503": {"times"},
    "401": {"times"},
    "drop": {"after", "times"},
    "stall": {"after", "seconds", "times"},
    "malformed": {"after", "times"},
    "no_tools": {"times"},
}


class FaultSyntaxError(ValueError):
    """A directive we cannot follow; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    after: int = 10
    seconds: float | None = None
    retry_after: float = 1.0
    times: int | None = None
    spec: str = ""

    @property
    def is_http_error(self) -> bool:
        return self.kind in ("429", "500", "502", "503", "401")


def parse_fault(spec: str) -> Fault:
    parts = spec.split()
    if not parts:
        raise FaultSyntaxError("empty fault directive; expected e.g. [fault: drop after=10]")
    kind = parts[0].lower()
    if kind not in KINDS:
        raise FaultSyntaxError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    values: dict[str, float] = {}
    for part in parts[1:]:
        key, sep, raw = part.partition("=")
        if not sep or key not in _ALLOWED_KEYS[kind]:
            allowed = ", ".join(sorted(_ALLOWED_KEYS[kind])) or "none"
            raise FaultSyntaxError(f"fault {kind!r} takes {allowed}; got {part!r}")
        try:
            number = float(raw)
        except ValueError:
            raise FaultSyntaxError(f"{key} must be a number; got {raw!r}") from None
        if number < 0 or (key in ("after", "times") and number != int(number)):
            raise FaultSyntaxError(f"{key} must be a whole number of at least 0; got {raw!r}")
        values[key] = number
    return Fault(
        kind=kind,
        after=int(values.get("after", 10)),
        seconds=values.get("seconds"),
        retry_after=values.get("retry_after", 1.0),
        times=int(values["times"]) if "times" in values else None,
        spec=" ".join(parts),
    )


def find_directive(messages: list[dict[str, object]]) -> tuple[str, str] | None:
    """(directive text, the user message it is in) of the first directive in a user message."""
    for message in messages:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            match = _DIRECTIVE.search(content)
            if match:
                return match.group(1).strip(), content
    return None


REASONING_FORMATS = ("reasoning_content", "reasoning", "think", "off")
_REASONING_DIRECTIVE = re.compile(r"\[reasoning:\s*([^\]]*)\]", re.IGNORECASE)


def parse_reasoning_format(spec: str) -> str:
    """One of REASONING_FORMATS; FaultSyntaxError naming them otherwise."""
    name = spec.strip().lower()
    if name not in REASONING_FORMATS:
        known = ", ".join(REASONING_FORMATS)
        raise FaultSyntaxError(f"unknown reasoning format {spec.strip()!r}; known: {known}")
    return name


def find_reasoning_directive(messages: list[dict[str, object]]) -> str | None:
    """The format a `[reasoning: ...]` directive in the last user message asks for."""
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            match = _REASONING_DIRECTIVE.search(content)
            return match.group(1) if match else None
    return None


def strip_directives(text: str) -> str:
    text = _REASONING_DIRECTIVE.sub("", _DIRECTIVE.sub("", text))
    return re.sub(r"\s{2,}", " ", text).strip()


class FaultCounter:
    """Counts requests per (directive, first user message) so `times=K` can stop failing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}

    def applies(self, fault: Fault, key: tuple[str, str]) -> bool:
        with self._lock:
            count = self._seen.get(key, 0) + 1
            self._seen[key] = count
        return fault.times is None or count <= fault.times
