"""HTTP routes streamchat adds to Chainlit's own FastAPI app (same port as the UI):
`/metrics`, and the resumable SSE endpoint `/api/stream`.

Chainlit serves its UI from a catch-all `GET /{full_path:path}` route, so a GET route added
after it is never reached. `mount` inserts our routes before the catch-all.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from streamchat.agent.run import ToolActivity, agent_resilience, agent_source
from streamchat.chat import fitted_request, full_system_prompt
from streamchat.core.errors import ConfigError
from streamchat.core.metrics import PROCESS_METRICS, ProcessMetrics
from streamchat.core.sinks import SseSink
from streamchat.core.types import ChatMessage
from streamchat.faces.sse import (
    KEEPALIVE,
    KEEPALIVE_BYTES,
    EventLog,
    MemoryStreamStore,
    StreamHub,
    encode_event,
    encode_retry,
    parse_event_id,
)
from streamchat.faces.sse_redis import EventsDropped, RedisMirror, StoreUnavailable, UnknownStream
from streamchat.hosting.auth import request_identity
from streamchat.hosting.limits import LimitExceeded, client_address, limit_key
from streamchat.pipeline import check_temperature, length_problem, well_formed
from streamchat.runtime import Runtime
from streamchat.settings import Settings

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# An anonymous client's proof that a stream is its own: a cookie (what EventSource and the demo
# page send by themselves) or, for clients without cookies, the same value in a header.
STREAM_COOKIE = "streamchat_stream"
STREAM_TOKEN_HEADER = "X-Stream-Token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
_CATCH_ALL = "/{full_path:path}"


def mount(
    app: FastAPI,
    *,
    metrics: ProcessMetrics = PROCESS_METRICS,
    runtime: Runtime | None = None,
    config_error: Exception | None = None,
    require_login: bool = False,
) -> None:
    """Add /metrics (Prometheus text; bearer token required when METRICS_TOKEN is set) and the
    SSE endpoint. With a configuration error, the endpoint answers 503 naming it."""
    if getattr(app.state, "streamchat_mounted", False):
        return
    app.state.streamchat_mounted = True
    metrics_token = runtime.settings.metrics_token if runtime else None
    streams = StreamEndpoint(
        runtime, config_error=str(config_error or ""), require_login=require_login
    )

    async def prometheus_metrics(request: Request) -> Response:
        if metrics_token and not _bearer_matches(request, metrics_token):
            return Response(
                '{"error": "a valid bearer token is required for /metrics"}',
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(metrics.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    routes = [APIRoute("/metrics", prometheus_metrics, methods=["GET"], include_in_schema=False)]
    routes += streams.routes()
    _insert_before_catch_all(app, routes)


def _bearer_matches(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    # As bytes: compare_digest refuses a str that is not ASCII, and a header may be anything.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def _insert_before_catch_all(app: FastAPI, routes: list[APIRoute]) -> None:
    """Put `routes` (made again from their path, endpoint, methods and name by FastAPI's public
    `add_api_route`) ahead of whatever holds Chainlit's catch-all GET route: the route itself
    in older FastAPI, the included router that contains it in newer ones."""
    existing = app.router.routes
    # Added the public way, so FastAPI knows its route table changed (it caches it), then
    # moved ahead of the catch-all, with nothing awaited in between.
    before = len(existing)
    for route in routes:
        app.router.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods or ()),
            name=route.name,
            include_in_schema=route.include_in_schema,
        )
    added = existing[before:]
    del existing[before:]
    position = next(
        (i for i, route in enumerate(existing) if _holds_catch_all(route)), len(existing)
    )
    existing[position:position] = added


def _holds_catch_all(route: object) -> bool:
    if getattr(route, "path", None) == _CATCH_ALL:
        return True
    inner: list[object] | None = getattr(getattr(route, "original_router", None), "routes", None)
    if inner is None and not hasattr(route, "path"):
        inner = getattr(route, "routes", None)
    return any(_holds_catch_all(child) for child in inner or ())


def _hub(settings: Settings) -> StreamHub:
    """Where answers streamed over SSE run, so a reconnecting client can resume them. With
    REDIS_URL, their events are also kept in Redis Streams, so the reconnect may land on
    another replica."""
    redis_url = settings.rate_limits.redis_url
    return StreamHub(
        MemoryStreamStore(ttl_s=settings.sse_ttl_s),
        grace_s=settings.sse_grace_s,
        keepalive_s=settings.sse_keepalive_s,
        mirror=RedisMirror(redis_url, ttl_s=settings.sse_ttl_s) if redis_url else None,
    )


async def agent_event(event_log: EventLog, activity: ToolActivity) -> None:
    """An agent's tool activity as SSE events: `tool_call` when a call starts (arguments "")
    and again for each piece of its arguments, `tool_result` with its output and duration,
    `agent_turn` with each model call's usage, `handoff`."""
    if activity.kind in ("call", "arguments"):
        data: dict[str, object] = {
            "call_id": activity.call_id,
            "name": activity.name,
            "arguments": activity.text,
        }
        if activity.withheld:
            data["withheld"] = activity.withheld
        event_log.append("tool_call", data)
    elif activity.kind == "result":
        data = {
            "call_id": activity.call_id,
            "name": activity.name,
            "result": activity.text,
            "error": activity.error,
            "duration_ms": round((activity.duration_s or 0.0) * 1000, 3),
        }
        if activity.withheld:
            data["withheld"] = activity.withheld
        event_log.append("tool_result", data)
    elif activity.kind == "turn":
        usage = activity.usage
        event_log.append(
            "agent_turn",
            {
                "turn": activity.turn,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
            },
        )
    elif activity.kind == "handoff":
        event_log.append("handoff", {"agent": activity.name})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _digest(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()


def _stream_token(request: Request) -> str | None:
    token = request.headers.get(STREAM_TOKEN_HEADER) or request.cookies.get(STREAM_COOKIE) or ""
    return token if _TOKEN.fullmatch(token) else None


def _owner(request: Request) -> tuple[str, str | None]:
    """Whom a new stream belongs to (a digest): the logged-in user, else the anonymous client,
    with the token to hand it (a new unguessable one if it brought none)."""
    user = request_identity(request.headers.get("authorization"), request.cookies)
    if user:
        return _digest(f"user:{user}"), None
    token = _stream_token(request) or secrets.token_urlsafe(24)
    return _digest(f"client:{token}"), token


def _owned_by(request: Request, owner: str | None) -> bool:
    """Whether `request` speaks for `owner`: a stream id alone never is enough."""
    user = request_identity(request.headers.get("authorization"), request.cookies)
    token = _stream_token(request)
    if user:
        presented = _digest(f"user:{user}")
    elif token:
        presented = _digest(f"client:{token}")
    else:
        return False
    return bool(owner) and hmac.compare_digest(presented, owner or "")


def _nothing_more() -> Response:
    """A resume after a stream's last event: 204 is what makes EventSource stop reconnecting."""
    return Response(status_code=204)


class BadStreamRequest(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StreamEndpoint:
    """`GET /api/stream?prompt=...`, `POST /api/stream` {messages, model, temperature},
    `DELETE /api/stream/{id}`. Answers run in a StreamHub, so a reconnect with Last-Event-ID
    resumes the same answer."""

    def __init__(
        self,
        runtime: Runtime | None,
        *,
        config_error: str | None = None,
        retry_ms: int = 3000,
        require_login: bool = False,
    ) -> None:
        self.runtime = runtime
        self.require_login = require_login
        self.hub = _hub(runtime.settings) if runtime else StreamHub()
        if runtime is not None:
            runtime.attach(self.hub)
        self.config_error = config_error
        self.retry_ms = retry_ms

    def routes(self) -> list[APIRoute]:
        return [
            APIRoute("/api/stream", self.get, methods=["GET"], include_in_schema=False),
            APIRoute("/api/stream", self.post, methods=["POST"], include_in_schema=False),
            APIRoute(
                "/api/stream/{stream_id}", self.delete, methods=["DELETE"], include_in_schema=False
            ),
        ]

    def _unauthorised(self, request: Request) -> Response | None:
        """With login on, the endpoint needs the same session as the chat (cookie or bearer)."""
        if not self.require_login:
            return None
        if request_identity(request.headers.get("authorization"), request.cookies):
            return None
        return JSONResponse(
            {"error": {"message": "Log in first: send the session cookie or a bearer token."}},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def get(self, request: Request) -> Response:
        if denied := self._unauthorised(request):
            return denied
        resumed = await self._resume(request)
        if resumed is not None:
            return resumed
        params = request.query_params
        prompt = params.get("prompt", "")
        try:
            messages = [ChatMessage("user", self._check_prompt(well_formed(prompt)))]
            return await self._start(
                request,
                messages,
                params.get("model"),
                params.get("temperature"),
                params.get("mode"),
            )
        except BadStreamRequest as exc:
            return _error(exc.status, exc.message)

    async def post(self, request: Request) -> Response:
        if denied := self._unauthorised(request):
            return denied
        resumed = await self._resume(request)
        if resumed is not None:
            return resumed
        try:
            raw = await self._read_body(request)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise BadStreamRequest(400, "The request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise BadStreamRequest(
                    400, 'The request body must be a JSON object: {"messages": [...]}.'
                )
            messages = self._check_messages(body.get("messages"))
            temperature = body.get("temperature")
            return await self._start(
                request,
                messages,
                body.get("model"),
                None if temperature is None else str(temperature),
                body.get("mode"),
            )
        except BadStreamRequest as exc:
            return _error(exc.status, exc.message)

    async def delete(self, request: Request, stream_id: str) -> Response:
        if denied := self._unauthorised(request):
            return denied
        # Someone else's stream is answered as one that does not exist.
        missing = _error(404, "No such stream (or it is not yours).")
        event_log = self.hub.get(stream_id)
        if event_log is not None:
            if not _owned_by(request, event_log.owner):
                return missing
            if await self.hub.cancel(stream_id):
                return JSONResponse({"stopped": stream_id})
            return JSONResponse({"stopped": stream_id, "note": "the stream had already ended"})
        if self.hub.mirror is not None:
            # Perhaps another replica runs it.
            try:
                if not _owned_by(request, await self.hub.mirror.owner_of(stream_id)):
                    return missing
                running = await self.hub.mirror.request_cancel(stream_id)
            except StoreUnavailable:
                return _error(503, "The shared stream store is unavailable. Try again shortly.")
            if running:
                return JSONResponse({"stopped": stream_id})
            if running is False:
                return JSONResponse({"stopped": stream_id, "note": "the stream had already ended"})
        return missing

    # --- helpers -----------------------------------------------------------------------------

    async def _resume(self, request: Request) -> Response | None:
        """A request with Last-Event-ID resumes that stream, whatever else it asks. The id may
        also come as `?last_event_id=` (a closed EventSource cannot send the header)."""
        header = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        if not header:
            return None  # none, or blank (EventSource's own first request): a new stream
        parsed = parse_event_id(header)
        event_log = self.hub.get(parsed[0]) if parsed else None
        gone = _error(404, "That stream is no longer available (it ended too long ago). Ask again.")
        if parsed is None:
            return gone
        if event_log is None and self.hub.mirror is not None:
            return await self._resume_elsewhere(request, *parsed)
        if event_log is None or not _owned_by(request, event_log.owner):
            return gone  # someone else's stream is answered as one that does not exist
        try:
            remaining = event_log.since(parsed[1])  # checked now: follow() is lazy
        except LookupError:
            return _error(410, "Part of that stream is no longer kept. Ask again.")
        if event_log.closed and not remaining:
            return _nothing_more()
        return self._response(self.hub.follow(event_log, after_seq=parsed[1]), first=b"")

    async def _resume_elsewhere(self, request: Request, stream_id: str, after_seq: int) -> Response:
        """Follow a stream that another replica runs, from the shared store."""
        mirror = self.hub.mirror
        assert mirror is not None
        try:
            if not _owned_by(request, await mirror.owner_of(stream_id)):
                raise UnknownStream(stream_id)
            await mirror.check(stream_id, after_seq)
            if await mirror.ended_at(stream_id, after_seq):
                return _nothing_more()
        except UnknownStream:
            return _error(
                404, "That stream is no longer available (it ended too long ago). Ask again."
            )
        except EventsDropped:
            return _error(410, "Part of that stream is no longer kept. Ask again.")
        except StoreUnavailable:
            return _error(503, "The shared stream store is unavailable. Try again shortly.")
        events = mirror.follow(stream_id, after_seq, keepalive_s=self.hub.keepalive_s)
        return self._response(events, first=b"")

    async def _start(
        self,
        http_request: Request,
        messages: list[ChatMessage],
        model: object,
        temperature: object,
        mode: object = None,
    ) -> Response:
        runtime = self.runtime
        if runtime is None:
            return _error(503, f"streamchat is not configured correctly: {self.config_error}")
        if mode not in (None, "", "chat", "agent"):
            raise BadStreamRequest(400, 'The mode must be "chat" or "agent".')
        agent = mode == "agent"
        options = await self._check_options(runtime, model, temperature)
        settings = runtime.settings
        # The same system prompt (with the default language's instruction) and history budget
        # as the chat UI.
        system = full_system_prompt(settings.system_prompt, settings.language)
        request = fitted_request(
            (ChatMessage("system", system), *messages) if system else messages,
            settings.max_history_tokens,
            model=options[0],
            temperature=options[1],
            max_tokens=settings.max_tokens,
        )
        lease = None
        if runtime.limiter is not None:
            user = request_identity(http_request.headers.get("authorization"), http_request.cookies)
            address = client_address(http_request.scope)
            try:
                lease = await runtime.limiter.admit(limit_key(user, address))
            except LimitExceeded as exc:
                headers = (
                    {"Retry-After": str(math.ceil(exc.retry_after_s))}
                    if exc.retry_after_s is not None
                    else {}
                )
                response = _error(429, exc.user_message)
                response.headers.update(headers)
                return response

        # The chat UI's pipeline: the same input checks, guardrails and coalescing.
        pipeline = runtime.pipeline()

        async def produce(event_log: EventLog) -> None:
            async with lease.metered() if lease is not None else contextlib.nullcontext():
                await answer(event_log)

        async def answer(event_log: EventLog) -> None:
            sink = SseSink(event_log)
            # Every text the client sent reaches the model, whatever its role (a client can
            # write "assistant" or "system" turns as well as its own): all are screened.
            *earlier, last = messages
            if await pipeline.screen(last.content, sink) is not None:
                return  # refused: nothing goes upstream
            for message in earlier:
                if await pipeline.screen(message.content, sink, check_length=False) is not None:
                    return
            # The logs name the run by a digest of the stream id, never the id itself.
            log_id = _digest(event_log.stream_id)[:12]
            if not agent:
                await pipeline.run(sink, stream_id=log_id).run(request)
                return
            # An agent's run: its tool activity as events of their own, in the same sequence.
            source = agent_source(runtime, pipeline.guardrails, partial(agent_event, event_log))
            agent_pipeline = replace(pipeline, resilience=agent_resilience(pipeline.resilience))
            await agent_pipeline.run(sink, stream_id=log_id, source=source).run(request)

        owner, token = _owner(http_request)
        event_log = self.hub.start(produce, owner=owner)
        streamed = self._response(self.hub.follow(event_log), first=encode_retry(self.retry_ms))
        if token is not None:
            streamed.headers[STREAM_TOKEN_HEADER] = token
            # Readable by pages of other origins allowed by ALLOW_ORIGINS, too.
            streamed.headers["Access-Control-Expose-Headers"] = STREAM_TOKEN_HEADER
            streamed.set_cookie(
                STREAM_COOKIE,
                token,
                max_age=86_400,
                path="/api/stream",
                secure=http_request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
        return streamed

    def _response(self, events: AsyncIterator[object], *, first: bytes) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for item in events:
                yield KEEPALIVE_BYTES if item is KEEPALIVE else encode_event(item)  # type: ignore[arg-type]

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to be larger than any acceptable
        request: by its Content-Length before reading, and by counting while reading (a chunked
        body declares no length), so a huge body is never held in memory."""
        limit = self._max_body_bytes()
        too_large = BadStreamRequest(413, f"The request body is too large (over {limit} bytes).")
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared[:20]) > limit:
            raise too_large
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _max_body_bytes(self) -> int:
        # The longest conversation accepted (_check_messages), each character written the
        # longest way JSON can (\uXXXX), and room for the rest of the object.
        return self._max_chars() * 4 * 6 + 65_536

    def _max_chars(self) -> int:
        return self.runtime.settings.max_input_chars if self.runtime else 32_000

    def _check_prompt(self, prompt: str) -> str:
        if not prompt.strip():
            raise BadStreamRequest(400, "The prompt is missing: add ?prompt=your+question.")
        problem = length_problem("The prompt", prompt, self._max_chars())
        if problem is not None:
            raise BadStreamRequest(413, problem)
        return prompt

    def _check_messages(self, value: object) -> list[ChatMessage]:
        if not isinstance(value, list) or not value:
            raise BadStreamRequest(
                400, '"messages" must be a non-empty list of {"role", "content"} objects.'
            )
        messages = []
        for position, item in enumerate(value):
            if (
                not isinstance(item, dict)
                or item.get("role") not in ("system", "user", "assistant")
                or not isinstance(item.get("content"), str)
            ):
                raise BadStreamRequest(
                    400,
                    f"messages[{position}] must be an object with a role (system, user or "
                    "assistant) and a string content.",
                )
            messages.append(ChatMessage(item["role"], well_formed(item["content"])))
        if messages[-1].role != "user":
            raise BadStreamRequest(400, "The last message must be the user's (role: user).")
        self._check_prompt(messages[-1].content)
        total = sum(len(m.content) for m in messages)
        if total > self._max_chars() * 4:
            raise BadStreamRequest(413, f"The conversation is too long ({total} characters).")
        return messages

    async def _check_options(
        self, runtime: Runtime, model: object, temperature: object
    ) -> tuple[str, float]:
        chosen = str(model).strip() if model else ""
        if chosen:
            available = await runtime.available_models()
            if available and chosen not in available:
                raise BadStreamRequest(
                    404,
                    f"Unknown model {chosen!r}. Available: {', '.join(available[:20])}.",
                )
        value = runtime.settings.temperature
        if temperature not in (None, ""):
            try:
                value = check_temperature(temperature, name="temperature")
            except ConfigError as exc:
                raise BadStreamRequest(400, str(exc)) from None
        return chosen, value
