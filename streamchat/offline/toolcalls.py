"""When the offline demo model calls tools, with which arguments, and what it says once their
results come back.

A request that offers tools (by name: calculate, current_time, search_lessons) and ends with a
user's question that calls for them gets tool calls instead of text: arithmetic in the question
-> calculate, "what time/date is it" -> current_time, "search the lessons for X" ->
search_lessons; several at once when the question asks for several. Once the messages end with
the `tool` results of its calls, it answers in text from those results (in the conversation's
language), and says plainly when a tool failed. Pure functions over the request's JSON, so the
server streams them and tests compare; the tools themselves run in the client.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamchat.languages import language_from_messages
from streamchat.offline.faults import strip_directives
from streamchat.offline.lessons import demo_notice

KNOWN_TOOLS = ("calculate", "current_time", "search_lessons")


@dataclass(frozen=True)
class ToolCall:
    """One call the model makes: its id ("call_..."), the tool's name, its arguments as JSON."""

    id: str
    name: str
    arguments: str

    def as_message_part(self) -> dict[str, Any]:
        """The call as it appears in a non-streamed message's `tool_calls`."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class ToolRequestError(ValueError):
    """A tools / tool_choice request OpenAI's API (or this model) would refuse with 400."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# --- reading the request ---------------------------------------------------------------------


def offered_tools(body: Mapping[str, Any]) -> list[str]:
    """The names of the functions the request offers. Raises ToolRequestError for a malformed
    `tools`, `tool_choice` or `parallel_tool_calls`, or a choice this model cannot follow."""
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise ToolRequestError(
                f"The demo model takes 'tools' and 'tool_choice', not the older '{legacy}'.",
                legacy,
                "unsupported_parameter",
            )
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise ToolRequestError("'tools' must be a list.", "tools", "invalid_type")
        for position, tool in enumerate(tools):
            where = f"tools[{position}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise ToolRequestError(
                    f"{where}: the demo model calls functions only (type 'function').",
                    f"{where}.type",
                    "unsupported_value",
                )
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ToolRequestError(
                    f"{where}.function.name must be 1 to 64 letters, digits, _ or -.",
                    f"{where}.function.name",
                    "invalid_value",
                )
            names.append(name)
    choice = body.get("tool_choice")
    if choice is not None and not tools:
        raise ToolRequestError(
            "'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
            "invalid_value",
        )
    if choice is not None and choice not in ("none", "auto", "required"):
        name = _forced_name(choice)
        if name not in names:
            raise ToolRequestError(
                f"'tool_choice' names the function {name!r}, which is not in 'tools'.",
                "tool_choice",
                "invalid_value",
            )
        if name not in KNOWN_TOOLS:
            raise ToolRequestError(
                f"The demo model can only call {', '.join(KNOWN_TOOLS)}, not {name!r}.",
                "tool_choice",
                "unsupported_value",
            )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ToolRequestError(
            "'parallel_tool_calls' must be true or false.", "parallel_tool_calls", "invalid_type"
        )
    return names


def _forced_name(choice: object) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if (
        not isinstance(choice, dict)
        or choice.get("type") != "function"
        or not isinstance(name, str)
    ):
        raise ToolRequestError(
            "'tool_choice' must be none, auto, required or "
            '{"type": "function", "function": {"name": ...}}.',
            "tool_choice",
            "invalid_value",
        )
    return name


def check_tool_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Every `tool` message answers a call of the assistant message before it, as OpenAI's
    API insists. Raises ToolRequestError naming the message."""
    pending: set[str] = set()
    for position, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ToolRequestError(
                    f"messages[{position}].tool_calls must be a list.",
                    f"messages[{position}].tool_calls",
                    "invalid_type",
                )
            for number, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not (
                    isinstance(call, dict)
                    and isinstance(call.get("id"), str)
                    and isinstance(function, dict)
                    and isinstance(function.get("name"), str)
                    and isinstance(function.get("arguments"), str)
                ):
                    where = f"messages[{position}].tool_calls[{number}]"
                    raise ToolRequestError(
                        f"{where} must be an object with an id and a function "
                        "(a name and its arguments as a JSON string).",
                        where,
                        "invalid_type",
                    )
            pending = {call["id"] for call in calls}
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in pending:
                raise ToolRequestError(
                    f"messages[{position}]: a message with role 'tool' must answer a tool call "
                    "of the assistant message before it (by tool_call_id).",
                    f"messages[{position}].tool_call_id",
                    "invalid_value",
                )
        else:
            pending = set()


# --- deciding to call ------------------------------------------------------------------------

# A question that asks for a tool says so early; reading no further keeps every pattern cheap.
MAX_QUESTION_CHARS = 1000
_NUMBER = r"\d[\d_]*(?:\.\d+)?"
_OPERATOR = r"(?:\*\*|//|[-+*/%^×÷]|\s[xX]\s)"
_ARITHMETIC = re.compile(
    rf"[-(]*\(?\s*{_NUMBER}\s*\)*(?:\s*{_OPERATOR}\s*[-(]*\s*{_NUMBER}\s*\)*)+"
)
_DATE_LIKE = re.compile(r"^\d{1,4}-\d{1,2}-\d{1,4}$")
_TIME_QUESTION = re.compile(
    r"\b(?:what(?:'s| is)? (?:the )?(?:current )?(?:time|date|day)|what time|which day|"
    r"current (?:time|date)|today'?s date|time is it|date is it|date today|time now|"
    r"kitne baje|kya time|kya waqt|waqt kya|time kya|aaj (?:ki )?(?:date|tareekh)|"
    r"kaunsa din|konsa din)\b",
    re.IGNORECASE,
)
_ZONE = re.compile(r"\b(UTC|GMT|[A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?)\b")
_SEARCH = re.compile(
    r"\b(?:search|find|look (?:up|for)|dhoond\w*|talaash)\b[^.?!]*?\blessons?\b"
    r"|\blessons?\b[^.?!]*?\b(?:search|find|dhoond\w*)\b",
    re.IGNORECASE,
)
_SEARCH_TOPIC = re.compile(
    r"\b(?:about|for|on|regarding|mein|ke baare mein)\s+(?P<topic>[^.?!]+)", re.IGNORECASE
)
_TRAILING = re.compile(r"\b(?:and|aur)\s*$|\b(?:ke baare mein|ke bare mein|dhoond\w*)\s*$", re.I)


@dataclass(frozen=True)
class _Wanted:
    position: int  # where in the question it was asked for: calls come in that order
    name: str
    arguments: dict[str, str]


def _expression(question: str) -> _Wanted | None:
    for match in _ARITHMETIC.finditer(question):
        text = match.group().strip()
        if _DATE_LIKE.match(text) or not re.search(_OPERATOR, text.lstrip("-( ")):
            continue
        balance = text.count("(") - text.count(")")
        text = text.lstrip("(") if balance > 0 else text.rstrip(")") if balance < 0 else text
        text = re.sub(r"\s[xX]\s", " * ", text)
        return _Wanted(match.start(), "calculate", {"expression": " ".join(text.split())})
    return None


def _time(question: str) -> _Wanted | None:
    match = _TIME_QUESTION.search(question)
    if match is None:
        return None
    zone = _ZONE.search(question)
    return _Wanted(match.start(), "current_time", {"timezone": zone.group(1) if zone else "UTC"})


def _search(question: str) -> _Wanted | None:
    match = _SEARCH.search(question)
    if match is None:
        return None
    topic = _SEARCH_TOPIC.search(question, match.start())
    query = topic.group("topic") if topic else question
    query = _TRAILING.sub("", re.split(r"\b(?:and what|and when)\b", query)[0]).strip(" ,;:")
    return _Wanted(match.start(), "search_lessons", {"query": query or question})


def _last_user_question(messages: Sequence[Mapping[str, Any]]) -> tuple[int, str] | None:
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(
                    str(part.get("text") or "") for part in content if isinstance(part, dict)
                )
            return position, strip_directives(str(content or ""))[:MAX_QUESTION_CHARS]
    return None


def plan_tool_calls(
    messages: Sequence[Mapping[str, Any]], body: Mapping[str, Any]
) -> list[ToolCall]:
    """The calls to make now (empty: answer in text). Calls only tools the request offers,
    skips those already made for the latest question, one at a time when
    `parallel_tool_calls` is false, and follows `tool_choice`."""
    offered = set(offered_tools(body))
    choice = body.get("tool_choice")
    if not offered or choice == "none":
        return []
    found = _last_user_question(messages)
    if found is None:
        return []
    position, question = found
    made = {
        name
        for message in messages[position + 1 :]
        if message.get("role") == "assistant"
        for name, _ in _calls_in(message).values()
    }
    wanted = [w for w in (_expression(question), _time(question), _search(question)) if w]
    wanted.sort(key=lambda w: w.position)
    if isinstance(choice, dict):
        name = _forced_name(choice)
        wanted = [w for w in wanted if w.name == name] or [_fallback(name, question)]
    wanted = [w for w in wanted if w.name in offered and w.name not in made]
    if choice == "required" and not wanted and not made:
        usable = [name for name in KNOWN_TOOLS if name in offered]
        if not usable:
            raise ToolRequestError(
                "'tool_choice' is required, but the demo model can only call "
                f"{', '.join(KNOWN_TOOLS)}.",
                "tool_choice",
                "unsupported_value",
            )
        name = "search_lessons" if "search_lessons" in offered else usable[0]
        wanted = [_fallback(name, question)]
    calls = [
        ToolCall(f"call_{uuid.uuid4().hex[:24]}", w.name, json.dumps(w.arguments)) for w in wanted
    ]
    return calls[:1] if body.get("parallel_tool_calls") is False else calls


def _fallback(name: str, question: str) -> _Wanted:
    """The arguments for a forced call the question does not obviously ask for."""
    if name == "calculate":
        return _expression(question) or _Wanted(0, name, {"expression": question})
    if name == "current_time":
        return _time(question) or _Wanted(0, name, {"timezone": "UTC"})
    return _search(question) or _Wanted(0, name, {"query": question})


# --- answering from results ------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    name: str
    arguments: dict[str, Any]
    output: str

    @property
    def failed(self) -> bool:
        lowered = self.output.lower()
        return lowered.startswith("error") or "error occurred" in lowered


_PHRASES = {
    "en": {
        "calculate": "{expression} = {output}.",
        "current_time": "The current date and time in {zone} is {output}.",
        "search_lessons": "Here is what the lessons say about *{query}*:\n\n{output}",
        "failed": "The `{name}` tool failed: {reason} So I cannot answer that part.",
        "closing": "(I called the tools, they ran in the app, and I read their results.)",
    },
    "hinglish": {
        "calculate": "{expression} = {output}.",
        "current_time": "{zone} mein abhi ki date aur waqt {output} hai.",
        "search_lessons": "Lessons mein *{query}* ke baare mein yeh mila:\n\n{output}",
        "failed": "`{name}` tool fail ho gaya: {reason} Is liye main yeh hissa nahi bata sakta.",
        "closing": "(Maine tools call kiye, woh app mein chale, aur maine unke results padhe.)",
    },
}
_SYMBOLS = {"*": "×", "/": "÷"}  # ** and // stay as they are
# An operator after a number or a closing parenthesis is binary: written with a space each side.
_BINARY = re.compile(r"([\d)])(\*\*|//|[-+*/%^])")
_FAILURE_PREFIX = re.compile(
    r"^(?:an error occurred while running the tool\.(?: please try again\.)?\s*)?error:?\s*",
    re.IGNORECASE,
)


def _calls_in(message: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The tool calls an assistant message made: id -> (name, arguments), read leniently."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        try:
            arguments = json.loads(str(function.get("arguments") or "{}"))
        except json.JSONDecodeError:
            arguments = {}
        found[str(call.get("id"))] = (
            str(function.get("name")),
            arguments if isinstance(arguments, dict) else {},
        )
    return found


def _results(messages: Sequence[Mapping[str, Any]]) -> list[_Result]:
    """The results at the end of the messages, each with the call it answers."""
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for message in messages:
        calls.update(_calls_in(message))
    found: list[_Result] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        name, arguments = calls.get(str(message.get("tool_call_id")), ("tool", {}))
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        found.append(_Result(name, arguments, str(content or "").strip()))
    return found[::-1]


def _say(result: _Result, language: str) -> str:
    phrases = _PHRASES[language]
    if result.failed:
        reason = _FAILURE_PREFIX.sub("", result.output).strip() or "no reason given."
        if not reason.endswith((".", "!", "?")):
            reason += "."
        return phrases["failed"].format(name=result.name, reason=reason)
    if result.name == "calculate":
        expression = str(result.arguments.get("expression", "?"))
        shown = _BINARY.sub(
            lambda m: f"{m[1]} {_SYMBOLS.get(m[2], m[2])} ", expression.replace(" ", "")
        )
        return phrases["calculate"].format(expression=shown, output=result.output.rstrip("."))
    if result.name == "current_time":
        zone = str(result.arguments.get("timezone") or "UTC")
        return phrases["current_time"].format(zone=zone, output=result.output.rstrip("."))
    if result.name == "search_lessons":
        query = str(result.arguments.get("query", ""))
        return phrases["search_lessons"].format(query=query, output=result.output)
    return f"`{result.name}`: {result.output}"


def answer_from_results(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The text answer once the messages end with tool results, or None when they do not."""
    results = _results(messages)
    if not results:
        return None
    language = language_from_messages(messages)
    parts = [_say(result, language) for result in results]
    parts.append(_PHRASES[language]["closing"])
    answer = "\n\n".join(parts)
    answered_before = any(
        m.get("role") == "assistant" and isinstance(m.get("content"), str) and m.get("content")
        for m in messages
    )
    if answered_before:
        return answer
    return f"{demo_notice(language)}\n\n{answer}"
