"""A scripted OpenAI-compatible upstream that streams tool calls, for the agent tests: each
chat request gets the next script (chunks written a few bytes at a time, so reads split
anywhere), an error status, or chunks and then silence until the client hangs up."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Self


def chunk_bytes(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "scripted",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def tool_call(
    name: str, arguments: str, *, call_id: str = "call_1", index: int = 0, size: int = 3
) -> list[bytes]:
    """One tool call's chunks: the first names it, then its arguments `size` characters each."""
    first = {"index": index, "id": call_id, "type": "function"}
    first["function"] = {"name": name, "arguments": ""}
    chunks = [chunk_bytes({"role": "assistant", "tool_calls": [first]})]
    for at in range(0, len(arguments), size):
        piece = {"index": index, "function": {"arguments": arguments[at : at + size]}}
        chunks.append(chunk_bytes({"tool_calls": [piece]}))
    return chunks


def text(answer: str, size: int = 4) -> list[bytes]:
    return [chunk_bytes({"content": answer[at : at + size]}) for at in range(0, len(answer), size)]


def ends(finish: str, prompt: int = 10, completion: int = 5) -> list[bytes]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    return [chunk_bytes({}, finish), chunk_bytes(None, usage=usage), b"data: [DONE]\n\n"]


@dataclass
class Script:
    chunks: list[bytes] = field(default_factory=list)
    status: int = 200
    error: dict[str, Any] | None = None
    hold: bool = False  # after the chunks, send nothing more until the client hangs up
    pause_s: float = 0.0  # between chunks: a slow provider
    drop: bool = False  # after the chunks, the connection is cut mid-body


@dataclass
class Seen:
    body: dict[str, Any]
    ended: threading.Event = field(default_factory=threading.Event)


class LoopbackServer:
    """A raw HTTP server on a loopback port, on its own thread and event loop, so the app
    under test and the test's own loop never wait on it; `_serve` answers one connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head (request line and headers) and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
    return head, await reader.readexactly(length)


def asks_for_models(head: bytes) -> bool:
    return b"/models" in head.split(b"\r\n")[0]


class ToolUpstream(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[Script] = []
        self.seen: list[Seen] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: Seen | None = None
        try:
            head, raw = await read_request(reader)
            if asks_for_models(head):
                self._json(writer, 200, {"object": "list", "data": [{"id": "scripted"}]})
                await writer.drain()
                return
            seen = Seen(json.loads(raw or b"{}"))
            self.seen.append(seen)
            script = (
                self.scripts.pop(0) if self.scripts else Script(text("unscripted") + ends("stop"))
            )
            if script.status != 200:
                self._json(writer, script.status, {"error": script.error or {}})
                await writer.drain()
                return
            if script.drop:
                # A chunked body that never gets its last chunk: the client sees it break.
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for piece in script.chunks:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            if script.pause_s:
                for piece in script.chunks:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(script.pause_s)  # the scripted provider's pace
            stream = b"" if script.pause_s else b"".join(script.chunks)
            for at in range(0, len(stream), 7):
                writer.write(stream[at : at + 7])
                await writer.drain()
            if script.hold:
                await reader.read()  # returns when the client closes the connection
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if seen is not None:
                seen.ended.set()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
