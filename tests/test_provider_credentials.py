"""Credentials in OPENAI_BASE_URL (`http://user:key@host/v1`): sent as basic auth on every HTTP
stack and path, never part of the URL the stack connects to or logs, never in a log line."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from streamchat.core.provider import Provider, split_credentials
from streamchat.core.types import ChatMessage, ChatRequest

SECRET = "s3cr%40t-key"  # percent-encoded "@" in the URL: "s3cr@t-key"


def test_user_info_is_split_off_as_basic_auth():
    bare, auth = split_credentials(f"http://alice:{SECRET}@proxy.example:8443/v1?x=1")
    assert bare == "http://proxy.example:8443/v1?x=1"
    assert auth == "Basic " + base64.b64encode(b"alice:s3cr@t-key").decode()
    assert split_credentials("http://[::1]:9000/v1") == ("http://[::1]:9000/v1", None)
    assert split_credentials(None) == (None, None)


class RecordingServer:
    """A loopback HTTP server that answers any POST with a two-chunk chat stream and keeps each
    request's head."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RecordingServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.heads.append(head)
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in head.split("\r\n")
                if line.lower().startswith("content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        events = [
            {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        payload = body.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("speedups", [True, False], ids=["fast-path", "sdk-stream"])
@pytest.mark.parametrize("stack", ["aiohttp", "httpx"])
async def test_credentials_in_the_base_url_go_as_basic_auth_and_never_into_a_log(
    stack, speedups, caplog
):
    caplog.set_level(logging.DEBUG)
    async with RecordingServer() as server:
        provider = Provider(
            base_url=f"http://alice:{SECRET}@127.0.0.1:{server.port}/v1",
            model="m",
            http_stack=stack,
            speedups=speedups,
        )
        try:
            request = ChatRequest(messages=(ChatMessage("user", "hello"),), model="m")
            text = "".join([d.text async for d in provider.stream(request)])
        finally:
            await provider.aclose()
    assert text == "Hi"
    (head,) = server.heads
    assert head.startswith("POST /v1/chat/completions ")
    expected = "authorization: basic " + base64.b64encode(b"alice:s3cr@t-key").decode().lower()
    assert expected in head.lower()
    assert "alice" not in provider.label and "s3cr" not in provider.label
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "s3cr" not in logged and "alice:" not in logged
