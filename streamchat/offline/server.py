"""The offline demo model's HTTP server: OpenAI-compatible `/v1/chat/completions` (streamed and
not), `/v1/models` and a demo `/v1/moderations` (see moderation.py), on loopback, in a thread
of its own with its own event loop.

It paces tokens like a real model, notices a client going away at once (and stops), injects
faults on request (see faults.py), and records what happened to every request so tests can
assert it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from streamchat.offline.faults import (
    Fault,
    FaultCounter,
    FaultSyntaxError,
    find_directive,
    find_reasoning_directive,
    parse_fault,
    parse_reasoning_format,
)
from streamchat.offline.lessons import choose_answer, choose_thinking
from streamchat.offline.moderation import moderation_inputs, moderation_response
from streamchat.offline.tokens import count_tokens, tokenize
from streamchat.offline.toolcalls import (
    ToolCall,
    ToolRequestError,
    answer_from_results,
    check_tool_messages,
    offered_tools,
    plan_tool_calls,
)
from streamchat.speedups.serving import new_server

log = logging.getLogger("streamchat.offline")

MODEL_ID = "streamchat-demo"
REASONING_HEADER = "x-streamchat-reasoning"
FAULT_HEADER = "x-streamchat-fault"
# When the model was made (/v1/models); each completion carries the time it was made.
_CREATED = 1_732_406_400
_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class RequestRecord:
    """What happened to one POST /v1/chat/completions."""

    request_id: str
    model: str
    stream: bool
    fault: str | None
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    headers: dict[str, str]
    started_at: float = field(default_factory=time.time)
    created: int = field(default_factory=lambda: int(time.time()))  # the answer's `created`
    ended_at: float | None = None
    tokens_sent: int = 0
    chunks_sent: int = 0  # data: events with a JSON chunk (not [DONE]), as the client saw them
    client_disconnected: bool = False
    completed: bool = False
    ended: threading.Event = field(default_factory=threading.Event)

    def end(self, *, completed: bool = False, disconnected: bool = False) -> None:
        if self.ended.is_set():
            return
        self.completed = completed
        self.client_disconnected = disconnected
        self.ended_at = time.time()
        self.ended.set()


class RequestLog:
    """Thread-safe record of requests, for tests and for teaching views."""

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._changed = threading.Condition()

    def add(self, record: RequestRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    def all(self) -> list[RequestRecord]:
        with self._changed:
            return list(self._records)

    def last(self) -> RequestRecord:
        with self._changed:
            if not self._records:
                raise LookupError("no request has been made yet")
            return self._records[-1]

    def wait_for(self, count: int, timeout: float) -> list[RequestRecord]:
        """Block until at least `count` requests were made; raise TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._records) >= count, timeout):
                raise TimeoutError(f"{len(self._records)} of {count} requests within {timeout} s")
            return list(self._records)

    def clear(self) -> None:
        with self._changed:
            self._records.clear()


class DropConnection(Exception):
    """Raised inside a streaming response to cut the connection without finishing it."""


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    """OpenAI's error shape: `param` names the parameter at fault, `code` says what is wrong."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
    )


class BadRequest(ValueError):
    """A request OpenAI's API would refuse with 400, naming the parameter."""

    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return _error(400, str(self), "invalid_request_error", self.code, self.param)


def _check_request(body: dict[str, Any]) -> None:
    """Refuse, as OpenAI does, what is malformed, and what this model cannot do rather than
    ignoring it silently (several answers, tools it does not know how to call, structured
    output). Raises BadRequest."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", "messages", "invalid_type")
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{position}] must be an object.", f"messages[{position}]", "invalid_type"
            )
        if message.get("role") not in _ROLES:
            raise BadRequest(
                f"messages[{position}].role must be one of {', '.join(_ROLES)}.",
                f"messages[{position}].role",
                "invalid_value",
            )
        content = message.get("content")
        if not (content is None or isinstance(content, str | list)):
            raise BadRequest(
                f"messages[{position}].content must be a string or a list of parts.",
                f"messages[{position}].content",
                "invalid_type",
            )
    if body.get("model") in (None, ""):
        raise BadRequest(
            "You must provide a model parameter.", "model", "missing_required_parameter"
        )
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise BadRequest("'temperature' must be a number.", "temperature", "invalid_type")
        if not 0 <= temperature <= 2:
            raise BadRequest(
                f"Invalid 'temperature': {temperature}. It must be from 0 to 2.",
                "temperature",
                "invalid_value",
            )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"'{name}' must be an integer.", name, "invalid_type")
        if value < 1:
            raise BadRequest(
                f"Invalid '{name}': {value}. It must be at least 1.", name, "invalid_value"
            )
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest(
            "The demo model writes one answer per request: 'n' must be 1.", "n", "unsupported_value"
        )
    try:
        offered_tools(body)
        check_tool_messages(messages)
    except ToolRequestError as exc:
        raise BadRequest(str(exc), exc.param, exc.code) from None
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise BadRequest(
            'The demo model writes text only: \'response_format\' must be {"type": "text"}.',
            "response_format",
            "unsupported_parameter",
        )
    _stop_sequences(body)


def _stop_sequences(body: dict[str, Any]) -> list[str]:
    """`stop` as a list: up to four non-empty strings. Raises BadRequest."""
    stop = body.get("stop")
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(sequences, list)
        or not 1 <= len(sequences) <= 4
        or not all(isinstance(item, str) and item for item in sequences)
    ):
        raise BadRequest(
            "'stop' must be a string or a list of up to 4 strings.", "stop", "invalid_value"
        )
    return sequences


def _cut_at_stop(tokens: list[str], sequences: list[str]) -> tuple[list[str], bool]:
    """The tokens before the first stop sequence (which is not sent), and whether one was
    found."""
    text = "".join(tokens)
    cut = min((found for s in sequences if (found := text.find(s)) >= 0), default=-1)
    if cut < 0:
        return tokens, False
    kept: list[str] = []
    length = 0
    for token in tokens:
        if length + len(token) >= cut:
            if cut > length:
                kept.append(token[: cut - length])
            break
        kept.append(token)
        length += len(token)
    return kept, True


@dataclass(frozen=True)
class _Reply:
    """What one request gets: the deltas to stream one by one after the opening one (each a
    token of text or thinking, or a piece of a tool call), the whole message for a
    non-streamed answer, why it ended, and how many tokens it cost."""

    opening: dict[str, Any]
    pieces: list[dict[str, Any]]
    message: dict[str, Any]
    finish: str
    usage: dict[str, Any]


def _text_reply(
    tokens: list[str], thinking: list[str], wire: str, finish: str, prompt_tokens: int
) -> _Reply:
    # Thinking comes first, in the requested wire form; a fault's `after` counts it too.
    pieces = [{"content": token} for token in tokens]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens), "refusal": None}
    if thinking and wire == "think":
        tagged = ["<", "think", ">", *thinking, "</", "think", ">", "\n\n"]
        pieces = [{"content": token} for token in tagged] + pieces
        message["content"] = f"<think>{''.join(thinking)}</think>\n\n{message['content']}"
    elif thinking:
        pieces = [{wire: token} for token in thinking] + pieces
        message[wire] = "".join(thinking)
    return _Reply(
        {"role": "assistant", "content": ""},
        pieces,
        message,
        finish,
        _usage(prompt_tokens, len(thinking), len(tokens)),
    )


def _tool_call_reply(calls: list[ToolCall], limit: object, prompt_tokens: int) -> _Reply:
    """Tool calls as OpenAI streams them: per call, a first piece with its index, id, type,
    name and empty arguments, then the arguments JSON a token or so at a time."""
    pieces: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        header = {"index": index, "id": call.id, "type": "function"}
        header["function"] = {"name": call.name, "arguments": ""}
        pieces.append({"tool_calls": [header]})
        pieces.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in tokenize(call.arguments)
        )
    finish = "tool_calls"
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, finish = pieces[:limit], "length"
    sent = calls
    if finish == "length":
        index = pieces[-1]["tool_calls"][0]["index"]
        sent = [*calls[:index], _joined(calls, pieces)]
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [call.as_message_part() for call in sent],
    }
    return _Reply(
        {"role": "assistant", "content": None},
        pieces,
        message,
        finish,
        _usage(prompt_tokens, 0, len(pieces)),
    )


def _joined(calls: list[ToolCall], pieces: list[dict[str, Any]]) -> ToolCall:
    """The last call as far as `pieces` got (a length cut leaves its arguments unfinished)."""
    index = pieces[-1]["tool_calls"][0]["index"]
    arguments = "".join(
        p["tool_calls"][0]["function"]["arguments"]
        for p in pieces
        if p["tool_calls"][0]["index"] == index
    )
    return ToolCall(calls[index].id, calls[index].name, arguments)


def _chunk(
    completion_id: str, delta: dict[str, Any], finish: str | None = None, *, created: int
) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "system_fingerprint": "fp_streamchat_demo",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class _Handler:
    """The ASGI routes, bound to one server's settings, counters and log."""

    def __init__(self, server: OfflineServer) -> None:
        self.server = server
        self.counter = FaultCounter()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/moderations", self.moderations, methods=["POST"]),
            ],
            # Unknown routes and wrong methods answer in OpenAI's JSON shape, as the API does.
            exception_handlers={HTTPException: self.http_error},
        )

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
            return _error(405, message, "invalid_request_error", "method_not_allowed")
        if status == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            return _error(404, message, "invalid_request_error", "unknown_url")
        return _error(status, str(getattr(exc, "detail", "")), "invalid_request_error")

    def _authorised(self, request: Request) -> bool:
        expected = self.server.api_key
        return expected is None or request.headers.get("authorization") == f"Bearer {expected}"

    async def models(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": MODEL_ID,
                        "object": "model",
                        "created": _CREATED,
                        "owned_by": "streamchat",
                    }
                ],
            }
        )

    async def model(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        if request.path_params["model_id"] != MODEL_ID:
            return _error(
                404, "The model does not exist.", "invalid_request_error", "model_not_found"
            )
        return JSONResponse(
            {"id": MODEL_ID, "object": "model", "created": _CREATED, "owned_by": "streamchat"}
        )

    async def moderations(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        try:
            inputs = moderation_inputs(json.loads(await request.body()))
        except ValueError:
            inputs = None
        if inputs is None:
            return _error(
                400, "'input' must be a string or a list of strings.", "invalid_request_error"
            )
        self.server.moderation_inputs.extend(inputs)
        fault = self.server.moderation_fault
        if fault == "error":
            return _error(500, "The demo moderation endpoint failed on purpose.", "server_error")
        if fault is not None and fault.startswith("slow"):
            await asyncio.sleep(float(fault.partition("=")[2] or 30))
        return JSONResponse(moderation_response(inputs))

    async def completions(self, request: Request) -> Response:
        if not self._authorised(request):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        try:
            _check_request(body)
        except BadRequest as exc:
            return exc.response()
        messages: list[dict[str, Any]] = body["messages"]
        model = body.get("model")
        if model != MODEL_ID:
            return _error(
                404,
                f"The model '{model}' does not exist. This server offers '{MODEL_ID}'.",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        try:
            fault = self._fault(request, messages)
        except FaultSyntaxError as exc:
            return _error(400, f"Bad fault directive: {exc}", "invalid_request_error")

        stream = bool(body.get("stream"))
        record = RequestRecord(
            request_id=f"chatcmpl-{uuid.uuid4().hex[:20]}",
            model=str(model),
            stream=stream,
            fault=fault.spec if fault else None,
            messages=messages,
            body=body,
            headers={
                k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"
            },
        )
        self.server.records.add(record)
        log.info("request %s stream=%s fault=%s", record.request_id, stream, record.fault or "-")

        if fault is not None and fault.is_http_error:
            record.end()
            return self._fault_response(fault)
        if fault is not None and fault.kind == "no_tools":
            if body.get("tools"):
                record.end()
                return _error(
                    400,
                    f"tools is not supported by model {model}",
                    "invalid_request_error",
                    "unsupported_parameter",
                    "tools",
                )
            fault = None
        try:
            wire, asked = self._reasoning_format(request, messages)
        except FaultSyntaxError as exc:
            record.end()
            return _error(400, f"Bad reasoning directive: {exc}", "invalid_request_error")
        thinking = [] if wire == "off" else tokenize(choose_thinking(messages, asked=asked))

        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        prompt_tokens = _prompt_tokens(body)
        try:
            calls = plan_tool_calls(messages, body)
        except ToolRequestError as exc:
            record.end()
            return BadRequest(str(exc), exc.param, exc.code).response()
        if calls:
            reply = _tool_call_reply(calls, limit, prompt_tokens)
        else:
            answer = answer_from_results(messages)
            if answer is None:
                answer = choose_answer(messages, body.get("temperature"))
            tokens, _ = _cut_at_stop(tokenize(answer), _stop_sequences(body))
            finish = "stop"
            if isinstance(limit, int) and 0 < limit < len(tokens):
                tokens, finish = tokens[:limit], "length"
            reply = _text_reply(tokens, thinking, wire, finish, prompt_tokens)
        if not stream:
            return await self._whole(record, reply)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._stream(record, reply, include_usage, fault),
            media_type="text/event-stream; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _fault(self, request: Request, messages: list[dict[str, Any]]) -> Fault | None:
        header = request.headers.get(FAULT_HEADER)
        found = find_directive(messages)
        if found is not None:
            spec, key_text = found
        elif header:
            spec, key_text = header, "header"
        elif self.server.default_fault:
            spec, key_text = self.server.default_fault, "default"
        else:
            return None
        fault = parse_fault(spec)
        return fault if self.counter.applies(fault, (fault.spec, key_text)) else None

    def _reasoning_format(
        self, request: Request, messages: list[dict[str, Any]]
    ) -> tuple[str, bool]:
        """The wire form of the thinking (faults.REASONING_FORMATS), and whether the request
        asked for one (then any answer thinks, not only the reasoning lesson)."""
        spec = find_reasoning_directive(messages) or request.headers.get(REASONING_HEADER)
        if spec is None:
            return self.server.reasoning_format, False
        return parse_reasoning_format(spec), True

    def _fault_response(self, fault: Fault) -> Response:
        if fault.kind == "429":
            response = _error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                "rate_limit_exceeded",
            )
            response.headers["Retry-After"] = f"{fault.retry_after:g}"
            return response
        if fault.kind == "401":
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return _error(
            int(fault.kind),
            "The server had an error while processing your request.",
            "server_error",
        )

    async def _whole(self, record: RequestRecord, reply: _Reply) -> Response:
        # As long as streaming the same answer would take, so comparisons are honest.
        try:
            await asyncio.sleep(
                self.server.first_token_delay_s + len(reply.pieces) / self.server.tps
            )
        except asyncio.CancelledError:
            record.end(disconnected=True)
            raise
        record.tokens_sent = reply.usage["completion_tokens"] - _reasoning_tokens(reply.usage)
        record.end(completed=True)
        return JSONResponse(
            {
                "id": record.request_id,
                "object": "chat.completion",
                "created": record.created,
                "model": MODEL_ID,
                "system_fingerprint": "fp_streamchat_demo",
                "choices": [
                    {
                        "index": 0,
                        "message": reply.message,
                        "logprobs": None,
                        "finish_reason": reply.finish,
                    }
                ],
                "usage": reply.usage,
            }
        )

    async def _stream(
        self,
        record: RequestRecord,
        reply: _Reply,
        include_usage: bool,
        fault: Fault | None,
    ) -> AsyncIterator[bytes]:
        cid = record.request_id
        interval = 1.0 / self.server.tps
        created = record.created
        try:
            yield _chunk(cid, reply.opening, created=created)
            record.chunks_sent += 1
            await asyncio.sleep(self.server.first_token_delay_s)
            for position, delta in enumerate(reply.pieces):
                if fault is not None and position == fault.after:
                    if fault.kind == "drop":
                        raise DropConnection(record.request_id)
                    if fault.kind == "stall":
                        await asyncio.sleep(fault.seconds if fault.seconds is not None else 3600)
                    if fault.kind == "malformed":
                        yield (
                            b'data: {"id": "'
                            + cid.encode()
                            + b'", "choices": [{"delta": {not json\n\n'
                        )
                if position:
                    await asyncio.sleep(interval)
                yield _chunk(cid, delta, created=created)
                record.tokens_sent += 1
                record.chunks_sent += 1
            yield _chunk(cid, {}, reply.finish, created=created)
            record.chunks_sent += 1
            if include_usage:
                usage = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": MODEL_ID,
                    "system_fingerprint": "fp_streamchat_demo",
                    "choices": [],
                    "usage": reply.usage,
                }
                yield b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"
                record.chunks_sent += 1
            yield b"data: [DONE]\n\n"
            record.end(completed=True)
        except asyncio.CancelledError:
            # Starlette cancels the response when the client disconnects.
            record.end(disconnected=True)
            raise
        except DropConnection:
            record.end()
            raise
        finally:
            record.end(disconnected=True)


def _prompt_tokens(body: dict[str, Any]) -> int:
    """What the prompt costs: every message's text, the tool calls it holds, and the tools."""
    total = 0
    for message in body["messages"]:
        total += count_tokens(str(message.get("content") or ""))
        if message.get("tool_calls"):
            total += count_tokens(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        total += count_tokens(json.dumps(body["tools"]))
    return total


def _reasoning_tokens(usage: dict[str, Any]) -> int:
    return int(usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0))


def _usage(prompt_tokens: int, thinking_tokens: int, answer_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object: thinking counts as completion tokens, and is detailed apart."""
    completion = thinking_tokens + answer_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    if thinking_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": thinking_tokens}
    return usage


class _QuietDrops(logging.Filter):
    """uvicorn logs an exception raised inside a response; a planned drop is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, DropConnection):
                return False
            exc = (
                exc.__cause__
                or exc.__context__
                or (
                    exc.exceptions[0]
                    if isinstance(exc, BaseExceptionGroup) and exc.exceptions
                    else None
                )
            )
        return True


class OfflineServer:
    """The offline demo model on 127.0.0.1. `start()` returns its base URL (…/v1)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens_per_second: float = 30.0,
        first_token_delay_ms: float = 300.0,
        default_fault: str | None = None,
        api_key: str | None = None,
        moderation_fault: str | None = None,
        quiet: bool = True,
        reasoning_format: str = "reasoning_content",
    ) -> None:
        if tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        if moderation_fault is not None and not re.fullmatch(
            r"error|slow(=\d+(\.\d+)?)?", moderation_fault
        ):
            raise ValueError('moderation_fault must be "error", "slow" or "slow=SECONDS"')
        # "error": /v1/moderations answers 500; "slow[=S]": it answers after S seconds (30).
        self.moderation_fault = moderation_fault
        if default_fault:
            parse_fault(default_fault)  # fail now, with the reason, not at the first request
        self.host = host
        self._quiet = quiet  # False: uvicorn's own server (STREAM_SPEEDUPS=off)
        self._requested_port = port
        self.tps = tokens_per_second
        self.first_token_delay_s = max(first_token_delay_ms, 0.0) / 1000
        self.default_fault = default_fault or None
        # How the thinking of a lesson that thinks is sent, unless a request asks otherwise.
        self.reasoning_format = parse_reasoning_format(reasoning_format)
        self.api_key = api_key
        self.records = RequestLog()
        self.moderation_inputs: list[str] = []  # every text sent to /v1/moderations
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the offline server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        if self._thread is not None:
            return self.base_url
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        config = uvicorn.Config(
            _Handler(self).app(),
            log_config=None,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        self._server = new_server(config, quiet=self._quiet)
        self._thread = threading.Thread(
            target=self._run, name=f"offline-model-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the offline demo model did not start")
            time.sleep(0.01)
        return self.base_url

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        # Its own event loop: the app's loop (patched by nest_asyncio under `chainlit run`)
        # never runs the demo model's pacing, and vice versa.
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._thread = None

    def __enter__(self) -> OfflineServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
