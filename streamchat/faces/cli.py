"""Console face: stream an answer to the terminal (`streamchat "question"`, `python -m streamchat`).

Answer text goes to stdout, flushed as it arrives; a reasoning model's thinking (dimmed on a
terminal), the stats line and errors go to stderr, so `streamchat "q" > answer.txt` captures
only the answer. Ctrl+C stops the current answer (and
closes the upstream request); in interactive mode the chat goes on.

Exit codes: 0 answered; 1 the provider failed (the message says why); 2 bad usage or
configuration; 130 stopped with Ctrl+C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from streamchat import __version__
from streamchat.agent.run import ToolActivity, agent_source, use_agent
from streamchat.chat import ChatSession
from streamchat.core.errors import ConfigError
from streamchat.core.relay import StreamResult
from streamchat.core.sinks import ConsoleSink
from streamchat.core.types import Delta, EndReason
from streamchat.logs import configure_logging
from streamchat.runtime import Runtime

EXIT_OK = 0
EXIT_PROVIDER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamchat",
        description="Stream an answer from an OpenAI-compatible model to the terminal. "
        "With no OPENAI_API_KEY or OPENAI_BASE_URL set, the offline demo model answers.",
    )
    parser.add_argument("question", nargs="*", help="the question (omit with -i)")
    parser.add_argument("-i", "--interactive", action="store_true", help="chat with history")
    parser.add_argument(
        "--no-stream", action="store_true", help="ask without streaming (for comparison)"
    )
    parser.add_argument(
        "--raw", action="store_true", help="print each upstream chunk's JSON as it arrives"
    )
    parser.add_argument(
        "--no-reasoning",
        action="store_true",
        help="hide a reasoning model's thinking (it stays out of the answer)",
    )
    parser.add_argument(
        "--agent",
        action="store_true",
        help="answer with an agent that may call tools (activity on stderr)",
    )
    parser.add_argument("--model", help="model name (default: OPENAI_MODEL or the provider's)")
    parser.add_argument("--system", help="system prompt (default: SYSTEM_PROMPT)")
    parser.add_argument("--temperature", type=float, help="0 to 2 (default: TEMPERATURE)")
    parser.add_argument(
        "--language", help="en or hinglish (Roman Urdu); default: ANSWER_LANGUAGE or en"
    )
    parser.add_argument("--version", action="version", version=f"streamchat {__version__}")
    return parser


async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        runtime = Runtime.from_env()
    except ConfigError as exc:
        err.write(f"configuration error: {exc}\n")
        return EXIT_USAGE
    # The terminal is for the answer: routine INFO lines would interleave with it.
    level = runtime.settings.log_level
    configure_logging("WARNING" if level == "INFO" else level)
    await runtime.start()
    try:
        chat, _ = await runtime.new_chat()
        overrides = {
            key: value
            for key, value in (
                ("model", args.model),
                ("system_prompt", args.system),
                ("temperature", args.temperature),
                ("language", args.language),
                ("show_reasoning", False if args.no_reasoning else None),
            )
            if value is not None
        }
        try:
            chat.options = chat.options.updated(overrides)
        except ConfigError as exc:
            err.write(f"error: {exc}\n")
            return EXIT_USAGE
        if args.no_stream and args.agent:
            err.write("error: --agent always streams; leave out --no-stream\n")
            return EXIT_USAGE
        if args.no_stream:
            chat.source = chat.pipeline.unstreamed() or chat.source
        if args.agent:
            use_agent(chat)
            chat.source = agent_source(runtime, chat.guardrail_config, ToolLines(err))
        if args.interactive:
            return await _interactive(chat, args, out, err)
        question = " ".join(args.question).strip()
        if not question and not sys.stdin.isatty():
            question = sys.stdin.read().strip()
        if not question:
            err.write('error: give a question, e.g. streamchat "What is a token?", or use -i\n')
            return EXIT_USAGE
        result = await _answer_interruptibly(chat, question, args, out, err)
        return _exit_code(result)
    finally:
        await runtime.aclose()


async def _answer_interruptibly(
    chat: ChatSession, question: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> StreamResult | None:
    """Answer one question; Ctrl+C cancels the answer (closing the upstream), not the program."""
    sink = ConsoleSink(out, err, show_text=not args.raw, show_reasoning=not args.no_reasoning)

    def print_raw(delta: Delta) -> None:
        if delta.raw:
            out.write(delta.raw + "\n")
            out.flush()

    task = asyncio.create_task(
        chat.answer(question, sink, on_delta=print_raw if args.raw else None)
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not _cancelling(asyncio.current_task()):
            return None  # stopped by Ctrl+C; the sink already printed what was shown
        raise
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)


class ToolLines:
    """An agent's tool activity on stderr: the call with its arguments as they stream, then
    its result and duration, one line each."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.open = False  # a call's arguments line is still being written

    async def __call__(self, activity: ToolActivity) -> None:
        err = self.err
        if activity.kind == "call":
            self._end_line()
            err.write(f"[tool] {activity.name}(")
            self.open = True
        elif activity.kind == "arguments" and self.open:
            err.write(activity.text)
            if activity.withheld:
                err.write(f" [withheld: {activity.withheld}]")
        elif activity.kind == "result":
            self._end_line()
            took = f"{(activity.duration_s or 0.0) * 1000:.1f} ms"
            what = "failed" if activity.error else "->"
            withheld = f" [withheld: {activity.withheld}]" if activity.withheld else ""
            err.write(f"[tool] {activity.name} {what} {activity.text}{withheld} ({took})\n")
        elif activity.kind == "handoff":
            self._end_line()
            err.write(f"[agent] handed over to {activity.name}\n")
        err.flush()

    def _end_line(self) -> None:
        if self.open:
            self.err.write(")\n")
            self.open = False


def _cancelling(task: asyncio.Task[object] | None) -> bool:
    return bool(task is not None and task.cancelling())


async def _interactive(
    chat: ChatSession, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    err.write(
        f"streamchat {__version__}: model {chat.options.model or '(provider default)'}. "
        "Ctrl+C stops an answer; Ctrl+D or /quit leaves.\n"
    )
    lines = _StdinLines()
    while True:
        err.write("> ")
        err.flush()
        line = await lines.next()
        if line is None:
            err.write("\n")
            return EXIT_OK
        question = line.strip()
        if question in ("/quit", "/exit"):
            return EXIT_OK
        if not question:
            continue
        await _answer_interruptibly(chat, question, args, out, err)


class _StdinLines:
    """Lines from stdin, read on a daemon thread so a blocked read never delays exit."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._read, name="stdin-reader", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def next(self) -> str | None:
        return await self._queue.get()


def _exit_code(result: StreamResult | None) -> int:
    if result is None or result.reason is EndReason.STOPPED_BY_USER:
        return EXIT_INTERRUPTED
    if result.reason is EndReason.ERROR:
        return EXIT_PROVIDER_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        # Ctrl+C outside an answer (at the prompt, or while starting): end the line, so the
        # shell's prompt starts on a line of its own.
        sys.stderr.write("\n")
        sys.stderr.flush()
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
