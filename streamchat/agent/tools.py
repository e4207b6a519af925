"""The agent's built-in tools: a calculator, the current date/time, a search over the offline
lessons. Each is a plain typed function wrapped in a `Tool` (name, one-line description, JSON
schema of its arguments), so any runner can offer them to a model; none needs the network.

A tool refuses bad input by raising `ToolError` with a short message a person can read: the
model is told it and the step shows it. The calculator parses with `ast` and evaluates only
numbers and arithmetic over exact fractions (nothing is ever `eval`ed), within bounds on the
expression's length, nesting and the size of every number, so no input can make it hang.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streamchat.offline.lessons import matching_lessons


class ToolError(Exception):
    """A tool could not do what it was asked; the message says why, for people."""


@dataclass(frozen=True)
class Tool:
    """A tool a model may call: `run(**arguments)` checks the arguments against `parameters`
    (a JSON schema object with string properties) and returns the function's text."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., str]

    def run(self, **arguments: object) -> str:
        properties: Mapping[str, Any] = self.parameters.get("properties", {})
        unknown = sorted(set(arguments) - set(properties))
        if unknown:
            raise ToolError(f"{self.name} has no argument {', '.join(unknown)}.")
        missing = [name for name in self.parameters.get("required", ()) if name not in arguments]
        if missing:
            raise ToolError(f"{self.name} needs the argument {', '.join(missing)}.")
        values: dict[str, str] = {}
        for name, value in arguments.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)  # a model may send 17 where "17" was asked for
            if not isinstance(value, str):
                raise ToolError(f"{self.name}: {name} must be a string.")
            values[name] = value
        return self.function(**values)


# ---------------------------------------------------------------------------------------------
# calculate

MAX_EXPRESSION_CHARS = 500
MAX_NUMBER_DIGITS = 1000  # of any numerator or denominator, on the way and in the result
_MAX_BITS = int(MAX_NUMBER_DIGITS * 3.33)  # a bound on bits above which no number is allowed
_SIGNIFICANT = 12  # digits of the decimal shown beside a fraction written as a/b
_MAX_PLACES = 100  # a finite decimal longer than this is written as a fraction

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: operator.mod,
}
_EXPONENT = re.compile(r"[eE]([-+]?[0-9_]+)$")
_ALLOWED = "numbers, + - * / // % ** and parentheses"
# What people type for the same operators.
_SPELLINGS = {"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**"}


def _too_big(value: Fraction) -> bool:
    for part in (value.numerator, value.denominator):
        bits = part.bit_length()
        if bits > _MAX_BITS or (bits > _MAX_BITS - 10 and len(str(abs(part))) > MAX_NUMBER_DIGITS):
            return True
    return False


def _number(node: ast.Constant, source: str) -> Fraction:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"Only {_ALLOWED} are allowed.")
    # A decimal literal is read from its text, so 0.1 is exactly one tenth.
    text = ast.get_source_segment(source, node) or repr(value)
    exponent = _EXPONENT.search(text)
    if exponent and abs(int(exponent.group(1))) > MAX_NUMBER_DIGITS:
        raise ToolError(f"That number is too large (more than {MAX_NUMBER_DIGITS} digits).")
    try:
        number = Fraction(text)
    except ValueError:
        number = Fraction(value)
    if _too_big(number):
        raise ToolError(f"That number is too large (more than {MAX_NUMBER_DIGITS} digits).")
    return number


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolError("Exponents must be whole numbers (the calculator is exact).")
    size = max(base.numerator.bit_length(), base.denominator.bit_length())
    if base not in (0, 1, -1) and abs(exponent.numerator) * max(size - 1, 1) > _MAX_BITS:
        raise ToolError(f"The result would be too large (more than {MAX_NUMBER_DIGITS} digits).")
    if base == 0 and exponent < 0:
        raise ZeroDivisionError
    return base ** int(exponent)


def _evaluate(node: ast.AST, source: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, source)
    if isinstance(node, ast.Constant):
        return _number(node, source)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand, source)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _evaluate(node.left, source)
        right = _evaluate(node.right, source)
        if isinstance(node.op, ast.Pow):
            result = _power(left, right)
        elif type(node.op) in _BINARY:
            result = _BINARY[type(node.op)](left, right)
        else:
            raise ToolError(f"Only {_ALLOWED} are allowed.")
        if _too_big(result):
            raise ToolError(f"The result is too large (more than {MAX_NUMBER_DIGITS} digits).")
        return result
    raise ToolError(f"Only {_ALLOWED} are allowed.")


def format_number(value: Fraction) -> str:
    """An exact result as people write it: 391, -2.5, or 1/3 (≈ 0.333333333333)."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator == 1 and max(twos, fives) <= _MAX_PLACES:  # a finite decimal, written exactly
        return _decimal(value, max(twos, fives))
    with localcontext() as context:
        context.prec = _SIGNIFICANT
        approximately = Decimal(value.numerator) / Decimal(value.denominator)
    return f"{value.numerator}/{value.denominator} (≈ {approximately})"


def _decimal(value: Fraction, places: int) -> str:
    scaled = round(abs(value) * 10**places)
    whole, fraction = divmod(scaled, 10**places)
    digits = str(fraction).rjust(places, "0").rstrip("0")
    sign = "-" if value < 0 and scaled else ""
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def calculate(expression: str) -> str:
    """The exact value of an arithmetic expression (integers, decimals, fractions written as
    a/b, + - * / // % ** and parentheses)."""
    text = expression.strip()
    for spelling, symbol in _SPELLINGS.items():
        text = text.replace(spelling, symbol)
    if not text:
        raise ToolError("The expression is empty.")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"The expression is too long (over {MAX_EXPRESSION_CHARS} characters).")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ToolError(f"Could not read {expression.strip()!r} as arithmetic.") from None
    try:
        return format_number(_evaluate(tree, text))
    except ZeroDivisionError:
        raise ToolError("Division by zero.") from None
    except RecursionError:
        raise ToolError("The expression is nested too deeply.") from None


# ---------------------------------------------------------------------------------------------
# current_time


def current_time(timezone: str = "UTC", *, now: datetime | None = None) -> str:
    """The current date and time in an IANA time zone (such as Europe/Paris), ISO 8601 with
    the weekday; `now` (aware) is for tests."""
    name = timezone.strip() or "UTC"
    try:
        if len(name) > 64:
            raise ValueError(name)
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"Unknown time zone {name[:64]!r}: use an IANA name such as UTC, Europe/London "
            "or Asia/Kolkata."
        ) from None
    moment = (now or datetime.now(zone)).astimezone(zone)
    return f"{moment.isoformat(timespec='seconds')} ({moment:%A}, {name})"


# ---------------------------------------------------------------------------------------------
# search_lessons

_EXCERPT_CHARS = 200
MAX_QUERY_CHARS = 500


def _excerpt(body: str) -> str:
    paragraph = next((p for p in body.split("\n\n") if p.strip()), "").strip()
    text = " ".join(paragraph.replace("**", "").split())
    if len(text) <= _EXCERPT_CHARS:
        return text
    return text[:_EXCERPT_CHARS].rsplit(" ", 1)[0] + "…"


def search_lessons(query: str, *, language: str = "en") -> str:
    """The offline lessons that best match `query`: each one's title and a short excerpt."""
    text = query.strip()[:MAX_QUERY_CHARS]
    if not text:
        raise ToolError("The search query is empty.")
    found = matching_lessons(text, language)
    if not found:
        return f"No lesson matches {text!r}."
    return "\n".join(f"- {lesson.title}: {_excerpt(lesson.body)}" for lesson in found)


# ---------------------------------------------------------------------------------------------
# the registry


def _string(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


CALCULATE = Tool(
    name="calculate",
    description="Exact arithmetic: + - * / // % ** and parentheses over integers and decimals.",
    parameters={
        "type": "object",
        "properties": {"expression": _string("The arithmetic to evaluate, e.g. 17 * 23.")},
        "required": ["expression"],
        "additionalProperties": False,
    },
    function=calculate,
)
CURRENT_TIME = Tool(
    name="current_time",
    description="The current date and time in an IANA time zone (UTC unless one is given).",
    parameters={
        "type": "object",
        "properties": {"timezone": _string("An IANA time zone such as UTC or Asia/Kolkata.")},
        "required": [],
        "additionalProperties": False,
    },
    function=current_time,
)
SEARCH_LESSONS = Tool(
    name="search_lessons",
    description="Search streamchat's lessons about streaming; returns titles and excerpts.",
    parameters={
        "type": "object",
        "properties": {"query": _string("What to look for, e.g. time to first token.")},
        "required": ["query"],
        "additionalProperties": False,
    },
    function=search_lessons,
)

TOOLS: Sequence[Tool] = (CALCULATE, CURRENT_TIME, SEARCH_LESSONS)
TOOLS_BY_NAME: Mapping[str, Tool] = {tool.name: tool for tool in TOOLS}
