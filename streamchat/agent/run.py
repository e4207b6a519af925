"""AgentSource: an OpenAI Agents SDK agent (`Runner.run_streamed`) as a DeltaSource.

The agent's answer text leaves as `Delta`s, so the relay, guard, coalescer, metrics and sinks
treat it like any chat answer; what it does beside the answer (tool calls with their arguments
as they stream, results, durations, handoffs, each model call's usage) travels as
`ToolActivity` values to a callback of the face's, never inside the text. Arguments and
results pass through a guard of their own before anyone sees them. Stop closes the generator:
the run is cancelled and its upstream response closed before the generator ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import httpx2
import openai
from agents import (
    Agent,
    FunctionTool,
    MaxTurnsExceeded,
    ModelSettings,
    RunConfig,
    Runner,
    set_tracing_disabled,
)
from agents.exceptions import AgentsException
from agents.mcp import MCPServer, MCPServerStdio, MCPServerStreamableHttp
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent
from agents.tool_context import ToolContext

from streamchat.agent.tools import TOOLS, Tool, ToolError
from streamchat.chat import ChatSession
from streamchat.core.errors import (
    BadRequest,
    ConfigError,
    ProviderError,
    public_url,
    redact_secrets,
)
from streamchat.core.relay import ReadPace, Resilience
from streamchat.core.types import ChatRequest, Delta, Usage
from streamchat.guardrails import Guard, GuardrailConfig, build_guard
from streamchat.runtime import Runtime

log = logging.getLogger("streamchat.agent")

# The SDK's traces go to OpenAI's servers; nothing here may reach the network unasked.
set_tracing_disabled(True)

DEFAULT_MAX_TURNS = 6
AGENT_NAME = "streamchat"
# What the model is told when a tool fails: it reads this as the tool's output and goes on.
TOOL_FAILED = "Error: {message}"

ActivityKind = Literal["call", "arguments", "result", "handoff", "turn"]


@dataclass(frozen=True, slots=True)
class ToolActivity:
    """One thing the agent did beside its answer, for the face to show in its own place.

    - `call`: a tool call began (`call_id`, `name`);
    - `arguments`: more of its arguments, checked by the guard (`text`: the new piece);
    - `result`: the tool's output as shown (`text`, checked by the guard), `duration_s`, and
      `error` when the tool failed (its message is the text; the model saw it too);
    - `handoff`: the run went to another agent (`name`);
    - `turn`: one model call ended (`turn`, its `usage`).
    `withheld` names what the guard found when it kept arguments or a result back.
    """

    kind: ActivityKind
    call_id: str = ""
    name: str = ""
    text: str = ""
    error: bool = False
    duration_s: float | None = None
    turn: int = 0
    usage: Usage | None = None
    withheld: str = ""


ActivityCallback = Callable[[ToolActivity], Awaitable[None]]
ErrorMapper = Callable[[openai.APIError, str], ProviderError]


class TurnLimitReached(ProviderError):
    """The agent used every turn it may take without finishing its answer."""

    kind = "max_turns"


class ToolsUnsupported(BadRequest):
    """The provider refused the request because the model cannot call tools."""

    kind = "tools_unsupported"


def mcp_servers(entries: Sequence[str]) -> list[MCPServer]:
    """MCP servers from AGENT_MCP_SERVERS entries: a URL is a streamable HTTP server, anything
    else a command line started over stdio. Each is named without credentials or arguments
    (they may hold secrets). Raises ConfigError for a command line that cannot be read."""
    servers: list[MCPServer] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        if entry.startswith(("http://", "https://")):
            servers.append(MCPServerStreamableHttp({"url": entry}, name=public_url(entry)))
            continue
        try:
            command, *args = shlex.split(entry)
        except ValueError as exc:  # an unclosed quote
            raise ConfigError(
                f"AGENT_MCP_SERVERS has a command line that cannot be read ({exc})."
            ) from None
        servers.append(MCPServerStdio({"command": command, "args": args}, name=command))
    return servers


@dataclass
class _Call:
    """What is known about one tool call while it streams and runs."""

    name: str
    guard: Guard | None
    called_at: float | None = None
    withheld: str = ""


@dataclass
class _Outcome:
    duration_s: float
    error: bool


@dataclass
class AgentSource:
    """Runs an agent for a ChatRequest and streams its answer as Deltas.

    `client` is the chat's own AsyncOpenAI client (base URL, key, timeouts); `on_activity`
    receives the ToolActivity values; `guards` makes a guard for each tool call's arguments
    and result (None: shown unchecked). `mcp` servers are connected for each run.
    """

    client: openai.AsyncOpenAI
    on_activity: ActivityCallback
    guards: Callable[[], Guard] | None = None
    tools: Sequence[Tool] = TOOLS
    max_turns: int = DEFAULT_MAX_TURNS
    mcp: Sequence[str] = ()  # AGENT_MCP_SERVERS entries: URLs or command lines
    map_error: ErrorMapper | None = None
    # The model when a request names none (the SSE endpoint's default), as the chat's provider
    # picks it.
    default_model: Callable[[], Awaitable[str]] | None = None
    _outcomes: dict[str, _Outcome] = field(default_factory=dict, init=False)

    def sdk_tools(self) -> list[FunctionTool]:
        """The built-in tools as the SDK's FunctionTools (their failures become outputs)."""
        return [
            FunctionTool(
                name=tool.name,
                description=tool.description,
                params_json_schema=dict(tool.parameters),
                on_invoke_tool=self._invoker(tool),
                strict_json_schema=False,
            )
            for tool in self.tools
        ]

    def _invoker(self, tool: Tool) -> Callable[[ToolContext[Any], str], Awaitable[str]]:
        async def invoke(context: ToolContext[Any], arguments: str) -> str:
            started = time.perf_counter()
            error = True
            try:
                try:
                    values = json.loads(arguments or "{}")
                except json.JSONDecodeError:
                    return TOOL_FAILED.format(message="the arguments were not valid JSON.")
                if not isinstance(values, dict):
                    return TOOL_FAILED.format(message="the arguments must be a JSON object.")
                try:
                    output = tool.run(**values)
                except ToolError as exc:
                    return TOOL_FAILED.format(message=str(exc))
                except TypeError:
                    return TOOL_FAILED.format(message=f"{tool.name} got unexpected arguments.")
                except Exception:
                    log.exception("tool %s failed", tool.name)
                    return TOOL_FAILED.format(message=f"{tool.name} failed unexpectedly.")
                error = False
                return output
            finally:
                self._outcomes[context.tool_call_id] = _Outcome(
                    time.perf_counter() - started, error
                )

        return invoke

    async def stream(
        self, request: ChatRequest, *, pace: ReadPace | None = None
    ) -> AsyncGenerator[Delta, None]:
        """The agent's answer to `request` (its last user message, with the history before it
        as input and its system message as instructions)."""
        del pace  # the SDK reads the network itself
        model = request.model
        if not model and self.default_model is not None:
            model = await self.default_model()
        instructions = "\n\n".join(m.content for m in request.messages if m.role == "system")
        items: list[Any] = [m.as_dict() for m in request.messages if m.role != "system"]
        settings = ModelSettings(
            temperature=request.temperature, max_tokens=request.max_tokens, include_usage=True
        )
        async with contextlib.AsyncExitStack() as opened:
            servers = await self._connect(opened)
            agent: Agent[Any] = Agent(
                name=AGENT_NAME,
                instructions=instructions or None,
                model=OpenAIChatCompletionsModel(model=model, openai_client=self.client),
                model_settings=settings,
                tools=list(self.sdk_tools()),
                mcp_servers=servers,
            )
            result = Runner.run_streamed(
                agent,
                input=items,
                max_turns=self.max_turns,
                run_config=RunConfig(tracing_disabled=True),
            )
            events = _Events(self, model)
            try:
                async for event in result.stream_events():
                    delta = await events.handle(event)
                    if delta is not None:
                        yield delta
                yield Delta("", index=0, finish_reason="stop", usage=events.total)
            except MaxTurnsExceeded:
                raise TurnLimitReached(
                    f"The agent used all {self.max_turns} of its turns without finishing its "
                    "answer. Ask something simpler, or raise AGENT_MAX_TURNS."
                ) from None
            except openai.APIError as exc:
                raise self._error(exc, model) from None
            except AgentsException as exc:
                raise ProviderError(
                    "The agent could not finish its answer. Try again.",
                    detail=f"{type(exc).__name__}: {exc}",
                ) from None
            except ProviderError:
                raise
            except Exception as exc:  # the connection broke under the SDK, a bad chunk...
                raise ProviderError(
                    "The agent's connection to the model provider broke. Try again.",
                    detail=redact_secrets(f"{type(exc).__name__}: {exc}"),
                ) from None
            finally:
                # Stop, an error or the end: the run and its upstream response end here, now.
                result.cancel()
                task = result.run_loop_task
                if task is not None and not task.done():
                    await asyncio.wait((task,))

    async def _connect(self, opened: contextlib.AsyncExitStack) -> list[MCPServer]:
        """This run's MCP servers, started or connected, closed when `opened` closes."""
        try:
            servers = mcp_servers(self.mcp)
        except ConfigError as exc:
            raise ProviderError(str(exc)) from None
        for server in servers:
            try:
                await server.connect()
            except Exception as exc:
                raise ProviderError(
                    f"The MCP server {server.name} could not be started or reached, so the "
                    "agent cannot answer. Check AGENT_MCP_SERVERS.",
                    detail=redact_secrets(f"{type(exc).__name__}: {exc}"),
                ) from None
            opened.push_async_callback(server.cleanup)
        return servers

    def _error(self, exc: openai.APIError, model: str) -> ProviderError:
        if isinstance(exc, openai.APIStatusError) and exc.status_code == 400:
            said = str(exc.message).lower()
            if "tool" in said or "function" in said:
                return ToolsUnsupported(
                    f"The model '{model}' does not support tools, so the Agent profile cannot "
                    "use it. Pick a model that can call tools.",
                    status=400,
                    detail=f"{type(exc).__name__}: {exc.message}",
                )
        if self.map_error is not None:
            return self.map_error(exc, model)
        return ProviderError(
            "The model provider failed. Try again.", detail=f"{type(exc).__name__}: {exc}"
        )


class _Events:
    """One run's stream events turned into Deltas and ToolActivity."""

    def __init__(self, source: AgentSource, model: str) -> None:
        self.source = source
        self.model = model
        self.calls: dict[str, _Call] = {}
        self.by_output_index: dict[int, str] = {}
        self.turns = 0
        self.prompt_tokens = self.completion_tokens = self.reasoning_tokens = 0

    @property
    def total(self) -> Usage | None:
        if not self.turns:
            return None
        return Usage(self.prompt_tokens, self.completion_tokens, self.reasoning_tokens)

    async def tell(self, activity: ToolActivity) -> None:
        await self.source.on_activity(activity)

    async def handle(self, event: object) -> Delta | None:
        if isinstance(event, RawResponsesStreamEvent):
            # The provider is sending (a tool call, say) even when no text comes of it: an
            # empty Delta says so, so the relay does not take a long tool call for a stall.
            return await self._raw(event.data) or Delta("", index=0)
        if isinstance(event, RunItemStreamEvent):
            await self._item(event)
        return None

    async def _raw(self, data: Any) -> Delta | None:
        kind = getattr(data, "type", "")
        if kind == "response.output_text.delta":
            return Delta(data.delta, index=0) if data.delta else None
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return Delta("", index=0, reasoning=data.delta) if data.delta else None
        if kind == "response.output_item.added" and getattr(data.item, "type", "") == (
            "function_call"
        ):
            self.by_output_index[data.output_index] = data.item.call_id
            await self._start(data.item.call_id, data.item.name)
        elif kind == "response.function_call_arguments.delta":
            call_id = self.by_output_index.get(data.output_index)
            if call_id is not None and data.delta:
                await self._arguments(call_id, data.delta)
        elif kind == "response.completed":
            await self._turn(getattr(data.response, "usage", None))
        return None

    async def _start(self, call_id: str, name: str) -> None:
        if call_id in self.calls:
            return
        factory = self.source.guards
        self.calls[call_id] = _Call(name, factory() if factory is not None else None)
        await self.tell(ToolActivity("call", call_id=call_id, name=name))

    async def _arguments(self, call_id: str, piece: str) -> None:
        call = self.calls[call_id]
        if call.withheld:
            return
        shown = piece
        if call.guard is not None:
            step = call.guard.feed(piece)
            shown = step.release
            if step.stopped and step.violation is not None:
                call.withheld = step.violation.kind
        if shown or call.withheld:
            await self.tell(
                ToolActivity(
                    "arguments", call_id=call_id, name=call.name, text=shown, withheld=call.withheld
                )
            )

    async def _end_arguments(self, call_id: str) -> None:
        call = self.calls[call_id]
        if call.guard is None or call.withheld:
            return
        step = call.guard.finish()
        if step.stopped and step.violation is not None:
            call.withheld = step.violation.kind
        if step.release or call.withheld:
            await self.tell(
                ToolActivity(
                    "arguments",
                    call_id=call_id,
                    name=call.name,
                    text=step.release,
                    withheld=call.withheld,
                )
            )

    async def _item(self, event: RunItemStreamEvent) -> None:
        raw = event.item.raw_item
        if event.name == "tool_called":
            call_id = str(_field(raw, "call_id") or "")
            name = str(_field(raw, "name") or "tool")
            if call_id not in self.calls:
                await self._start(call_id, name)
                await self._arguments(call_id, str(_field(raw, "arguments") or ""))
            await self._end_arguments(call_id)
            self.calls[call_id].called_at = time.perf_counter()
        elif event.name == "tool_output":
            call_id = str(_field(raw, "call_id") or "")
            await self._result(call_id, str(getattr(event.item, "output", "")))
        elif event.name in ("handoff_occured", "handoff_occurred"):
            target = getattr(getattr(event.item, "target_agent", None), "name", "")
            await self.tell(ToolActivity("handoff", name=str(target)))

    async def _result(self, call_id: str, output: str) -> None:
        call = self.calls.get(call_id) or _Call("tool", None)
        outcome = self.source._outcomes.pop(call_id, None)
        if outcome is not None:
            duration, error = outcome.duration_s, outcome.error
        else:  # a tool of an MCP server: timed from its call to its output
            started = call.called_at
            duration = time.perf_counter() - started if started is not None else 0.0
            error = output.startswith("Error")
        # One line per tool call for operators: never its arguments or output.
        log.info("tool_call name=%s duration_ms=%.1f error=%s", call.name, duration * 1000, error)
        shown, withheld = _checked(self.source.guards, output)
        await self.tell(
            ToolActivity(
                "result",
                call_id=call_id,
                name=call.name,
                text=shown,
                error=error,
                duration_s=duration,
                withheld=withheld,
            )
        )

    async def _turn(self, usage: Any) -> None:
        self.turns += 1
        counted: Usage | None = None
        if usage is not None:
            details = getattr(usage, "output_tokens_details", None)
            counted = Usage(
                prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
                reasoning_tokens=int(getattr(details, "reasoning_tokens", 0) or 0),
            )
            self.prompt_tokens += counted.prompt_tokens
            self.completion_tokens += counted.completion_tokens
            self.reasoning_tokens += counted.reasoning_tokens
        await self.tell(ToolActivity("turn", turn=self.turns, usage=counted))


def _checked(guards: Callable[[], Guard] | None, text: str) -> tuple[str, str]:
    """`text` as the guard lets it be shown, and what it withheld (a violation's kind)."""
    if guards is None:
        return text, ""
    guard = guards()
    first = guard.feed(text)
    if first.stopped and first.violation is not None:
        return first.release, first.violation.kind
    last = guard.finish()
    if last.stopped and last.violation is not None:
        return first.release + last.release, last.violation.kind
    return first.release + last.release, ""


def _field(raw: object, name: str) -> object:
    if isinstance(raw, dict):
        return raw.get(name)
    return getattr(raw, name, None)


def tool_guards(config: GuardrailConfig) -> Callable[[], Guard] | None:
    """Guards for what tool steps show: the chat's policies and action, always holding text
    back until checked (a step is never retracted)."""
    if not config.enabled:
        return None
    return partial(build_guard, replace(config, mode="hold"))


def agent_source(
    runtime: Runtime,
    guardrails: GuardrailConfig,
    on_activity: ActivityCallback,
    *,
    client: openai.AsyncOpenAI | None = None,
) -> AgentSource:
    """An AgentSource on the runtime's provider (its base URL, key, timeouts: the offline demo
    model when none is configured) with the operator's agent settings. The SDK retries each
    model call before its answer starts (STREAM_RETRIES); the run itself is not repeated."""
    settings = runtime.settings
    provider = runtime.provider
    return AgentSource(
        client or provider.client.with_options(max_retries=settings.retries),
        on_activity,
        guards=tool_guards(guardrails),
        max_turns=settings.agent_max_turns,
        mcp=settings.agent_mcp_servers,
        # The provider's own wording for every other failure (private to the core, shared).
        map_error=lambda exc, model: provider.map_error(exc, model=model),
        default_model=provider.default_model,
    )


def agent_resilience(resilience: Resilience) -> Resilience:
    """An agent run is neither retried nor resumed as a whole (its tools would run again and
    their steps show twice): the SDK retries each model call instead."""
    return replace(resilience, retries=0, resumes=0)


def use_agent(chat: ChatSession) -> None:
    """Make `chat`'s answers agent runs' answers as far as the pipeline is concerned."""
    chat.pipeline = replace(chat.pipeline, resilience=agent_resilience(chat.pipeline.resilience))


ChunkTap = Callable[[str], None]


class _TappedStream(httpx2.AsyncByteStream):
    """A response body passed on unchanged, each `data:` line's JSON told to `tap` as read."""

    def __init__(self, inner: httpx2.AsyncByteStream, tap: ChunkTap) -> None:
        self._inner = inner
        self._tap = tap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = b""
        async for part in self._inner:
            pending += part
            *lines, pending = pending.split(b"\n")
            for line in lines:
                payload = line.removeprefix(b"data:").strip()
                if line.startswith(b"data:") and payload and payload != b"[DONE]":
                    self._tap(payload.decode("utf-8", "replace"))
            yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TappedTransport(httpx2.AsyncBaseTransport):
    """HTTP as usual; the chat completions streams' chunks are also told to `tap`."""

    def __init__(self, tap: ChunkTap) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._tap = tap

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if not request.url.path.endswith("/chat/completions"):
            return response
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_TappedStream(response.stream, self._tap),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def tapped_client(
    client: openai.AsyncOpenAI, tap: ChunkTap
) -> AsyncIterator[openai.AsyncOpenAI]:
    """`client` (base URL, key, timeouts) on a connection of its own whose streamed chunks'
    JSON is also told to `tap`, exactly as it came: the classroom shows a tool call's raw
    chunks beside its step. Closed on leaving."""
    http = httpx2.AsyncClient(transport=_TappedTransport(tap), timeout=client.timeout)
    try:
        yield client.with_options(http_client=http, max_retries=0)
    finally:
        # Ours alone: the chat's own client and its pool are left as they are.
        await http.aclose()
