"""The Agent profile in Chainlit: each tool call a step of type `tool`, named after the tool,
its arguments streaming in as its input, then its result and duration as its output.

app.py calls `answer` for an Agent chat's message; the answer itself streams into its message
through the same sink, coalescing and guard as every chat answer.
"""

from __future__ import annotations

from datetime import UTC, datetime

import chainlit as cl
from chainlit.context import context

from streamchat.agent.run import ToolActivity, agent_source, use_agent
from streamchat.agent.tools import TOOLS
from streamchat.chat import ChatSession
from streamchat.core.relay import StreamResult
from streamchat.core.sinks import ChainlitSink
from streamchat.runtime import Runtime
from streamchat.settings import public_url

PROFILE = "Agent"


def is_agent() -> bool:
    return bool(context.session and context.session.chat_profile == PROFILE)


def duration_text(seconds: float | None) -> str:
    """A tool's duration as a person reads it: "3 ms", "1.2 s"."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{max(seconds * 1000, 0.1):.3g} ms"
    return f"{seconds:.1f} s"


def server_label(entry: str) -> str:
    """An MCP server as shown: a URL without credentials or query, or a command's program name
    (its arguments may hold secrets)."""
    entry = entry.strip()
    if entry.startswith(("http://", "https://")):
        return public_url(entry)
    return entry.split()[0] if entry.split() else entry


def withheld_note(kind: str) -> str:
    return f"[withheld by a guardrail: {kind.replace('_', ' ')}]"


class ToolSteps:
    """Shows ToolActivity as Chainlit steps; `close()` ends the steps a Stop left open."""

    def __init__(self) -> None:
        self.steps: dict[str, cl.Step] = {}
        self.usage: list[ToolActivity] = []  # one per model call, for the stats

    async def __call__(self, activity: ToolActivity) -> None:
        if activity.kind == "call":
            parent = context.current_step
            step = cl.Step(
                name=activity.name,
                type="tool",
                parent_id=parent.id if parent is not None else None,
                default_open=True,
                show_input="json",
                language="text",  # the output; the input is shown as JSON
            )
            step.start = datetime.now(UTC).isoformat()
            self.steps[activity.call_id] = step
            await step.send()
        elif activity.kind == "arguments":
            streaming = self.steps.get(activity.call_id)
            if streaming is not None:
                text = activity.text
                if activity.withheld:
                    text += withheld_note(activity.withheld)
                await streaming.stream_token(text, is_input=True)
        elif activity.kind == "result":
            done = self.steps.pop(activity.call_id, None)
            if done is None:
                return
            output = activity.text
            if activity.withheld:
                output += withheld_note(activity.withheld)
            done.output = output
            done.is_error = activity.error
            done.end = datetime.now(UTC).isoformat()
            # Chainlit puts "Used" before a finished step's name: "Used calculate in 2 ms".
            done.name = f"{activity.name} in {duration_text(activity.duration_s)}"
            await done.update()
        elif activity.kind == "handoff":
            await cl.Message(content=f"Handed over to {activity.name}.", author="agent").send()
        elif activity.kind == "turn":
            self.usage.append(activity)

    async def close(self) -> None:
        """Steps still open (Stop came during a tool call) end now, marked as stopped."""
        for step in self.steps.values():
            step.end = datetime.now(UTC).isoformat()
            step.output = step.output or "Stopped."
            await step.update()
        self.steps.clear()


async def continue_answer(
    runtime: Runtime, chat: ChatSession, sink: ChainlitSink
) -> StreamResult | None:
    """Continue an Agent chat's interrupted answer with the agent (tools included)."""
    use_agent(chat)
    steps = ToolSteps()
    try:
        return await chat.continue_answer(
            sink, source=agent_source(runtime, chat.guardrail_config, steps)
        )
    finally:
        await steps.close()


def turns_line(turns: list[ToolActivity]) -> str | None:
    """Each model call's tokens (prompt in, completion out), when the answer took more than
    one; None otherwise (the stats line says it all)."""
    if len(turns) < 2:
        return None
    parts = [
        f"{turn.turn}) {turn.usage.prompt_tokens} in, {turn.usage.completion_tokens} out"
        if turn.usage is not None
        else f"{turn.turn}) not reported"
        for turn in turns
    ]
    return "Tokens per model call: " + " · ".join(parts)


async def answer(
    runtime: Runtime, chat: ChatSession, text: str, sink: ChainlitSink
) -> StreamResult:
    """An Agent chat's answer to `text`: the input checks, then the agent's run, its tool calls
    as steps above the answer, and (with the stats line on) each model call's tokens under it."""
    use_agent(chat)
    steps = ToolSteps()
    source = agent_source(runtime, chat.guardrail_config, steps)
    try:
        result = await chat.answer(text, sink, source=source)
    finally:
        await steps.close()
    line = turns_line(steps.usage) if chat.options.show_metrics else None
    if line is not None and sink.message.id:
        # Under the answer's stats line, in the same message (its stored answer text, kept in
        # its metadata for the history, is unchanged).
        sink.message.content = f"{sink.message.content}\n\n*{line}*"
        await sink.message.update()
    return result


async def start(runtime: Runtime) -> None:
    """Agent chat start: which tools the agent has, and which MCP servers are configured."""
    tools = ", ".join(f"`{tool.name}`" for tool in TOOLS)
    lines = [f"Tools: {tools}."]
    servers = runtime.settings.agent_mcp_servers
    if servers:
        names = ", ".join(f"`{server_label(entry)}`" for entry in servers)
        lines.append(f"MCP servers: {names}.")
    await cl.Message(content=" ".join(lines), author="agent").send()
