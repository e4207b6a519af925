"""Run the real app and talk to it as the browser does.

`AppProcess` starts `chainlit run app.py -h` on a free port from a temporary app root (so tests
leave no `.files/` or translations behind in the checkout). `ChainlitClient` speaks Chainlit's
Socket.IO protocol: the same auth payload, events and message shape as the web UI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import socketio

REPO = Path(__file__).resolve().parent.parent

# Variables that would point the app at a real provider; tests never inherit them.
_PROVIDER_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OFFLINE_FAULT",
    "CHAINLIT_AUTH_SECRET",
    "DATABASE_URL",
    "REDIS_URL",
    # `chainlit run` reads CI as its --ci flag, which replaces OPENAI_API_KEY with a fake key.
    "CI",
)


# The lines the Chainlit sink appends under an answer: a marker, then the stats line.
_FOOTER = re.compile(
    r"(\n\n\*\((?:Stopped by you|Stopped: |Interrupted:|Resumed |The answer reached)[^\n]*\)\*)?"
    r"(\n\n\*TTFT [^\n]*\*)?\Z"
)


def strip_footer(content: str) -> str:
    """An answer's text as the model wrote it, without the marker and stats lines."""
    return _FOOTER.sub("", content, count=1)


def probe_app(code: str, **extra_env: str) -> str:
    """The last line `code` prints in a fresh interpreter run from the checkout, with no provider
    configured (and `extra_env` set): for what importing app.py sets up in the process."""
    env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_VARS} | extra_env
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def speedups_on() -> bool:
    """Whether the apps these tests start run their speed-ups: STREAM_SPEEDUPS is passed through
    from this environment (the integration tests run both ways)."""
    from streamchat.settings import ConfigReader

    return ConfigReader(dict(os.environ)).flag("STREAM_SPEEDUPS")


def start_upstream(command: list[str], port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start an OpenAI-compatible upstream (`command`, a process listening on `port`) and wait
    until it lists its models; the benchmarks' scripted servers start this way."""
    proc = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"{url}/v1/models", timeout=1)
            return proc, url
        except httpx2.HTTPError:
            time.sleep(0.1)  # a bounded poll: the server says nothing until it listens
    proc.kill()
    raise RuntimeError("the benchmark upstream did not start")


@contextlib.contextmanager
def long_answer_app(*, tps: int, tokens: int, env: Mapping[str, str]) -> Iterator[AppProcess]:
    """The app answering from benchmarks/browser_render.py's upstream (its long Markdown answer
    of about `tokens` tokens at `tps` tokens/s), with `env` besides."""
    port = free_port()
    upstream, url = start_upstream(
        [sys.executable, str(REPO / "benchmarks/browser_render.py"), "--upstream", str(port),
         "--tps", str(tps), "--tokens", str(tokens)],
        port,
    )  # fmt: skip
    try:
        base = {
            "OPENAI_BASE_URL": f"{url}/v1",
            "OPENAI_API_KEY": "not-needed",
            "OPENAI_MODEL": "bench",
            "STREAM_RETRIES": "0",
        }
        with AppProcess({**base, **env}) as running:
            yield running
    finally:
        upstream.kill()
        upstream.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    return free_port()


class AppProcess:
    """`chainlit run app.py -h` in a subprocess with a clean environment."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        startup_timeout: float = 60,
        app_path: Path | None = None,
    ) -> None:
        self.app_path = app_path or REPO / "app.py"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._extra_env = dict(env or {})
        self._startup_timeout = startup_timeout
        self._root = Path(tempfile.mkdtemp(prefix="streamchat-app-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = self._root / "app.log"

    def start(self) -> AppProcess:
        shutil.copytree(REPO / ".chainlit", self._root / ".chainlit", ignore=_no_translations)
        shutil.copytree(REPO / "public", self._root / "public")
        if (REPO / "chainlit.md").exists():
            shutil.copy(REPO / "chainlit.md", self._root / "chainlit.md")
        env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_VARS}
        env.update(
            {
                "CHAINLIT_APP_ROOT": str(self._root),
                "PYTHONUNBUFFERED": "1",
                "OFFLINE_TPS": "200",
                "OFFLINE_TTFT_MS": "20",
                **self._extra_env,
            }
        )
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chainlit",
                "run",
                str(self.app_path),
                "-h",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=self._root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log()}")
            try:
                if httpx2.get(f"{self.url}/project/settings?language=en-US", timeout=1).status_code:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"app did not start within {self._startup_timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _no_translations(directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "translations"]


@dataclass
class Event:
    name: str
    data: Any
    at: float


@dataclass
class Answer:
    """Everything the server emitted for one user message, until task_end."""

    events: list[Event] = field(default_factory=list)

    def named(self, *names: str) -> list[Event]:
        return [e for e in self.events if e.name in names]

    @property
    def stream_events(self) -> list[Event]:
        return self.named("stream_start", "stream_token")

    def progress(self) -> Iterator[tuple[Event, str]]:
        """Each stream event with the text the browser shows after it (stream_start sets the
        text, stream_token appends, or replaces with isSequence)."""
        text = ""
        for event in self.stream_events:
            if event.name == "stream_start":
                text = event.data.get("output") or ""
            elif event.data.get("isSequence"):
                text = event.data["token"]
            else:
                text += event.data["token"]
            yield event, text

    @property
    def streamed_text(self) -> str:
        """The text as the browser builds it from the stream events."""
        texts = [text for _, text in self.progress()]
        return texts[-1] if texts else ""

    def messages(self) -> list[dict[str, Any]]:
        """Final message states (new_message / update_message), in order."""
        return [e.data for e in self.named("new_message", "update_message")]

    def final_assistant_text(self) -> str:
        streamed_ids = {e.data["id"] for e in self.named("stream_start")}
        finals = [m for m in self.messages() if m["id"] in streamed_ids]
        return finals[-1]["output"] if finals else ""

    def errors(self) -> list[str]:
        return [m["output"] for m in self.messages() if m.get("isError")]

    def texts(self) -> list[str]:
        return [m["output"] for m in self.messages()]


class ChainlitClient:
    """A Socket.IO client that behaves like Chainlit's web UI."""

    def __init__(
        self,
        app_url: str,
        *,
        chat_profile: str = "",
        access_token: str | None = None,
        thread_id: str = "",
        offer_deflate: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.app_url = app_url
        self.headers = dict(headers or {})  # sent with the connection, e.g. X-Forwarded-For
        self.session_id = str(uuid.uuid4())
        self.chat_profile = chat_profile
        self.access_token = access_token  # the login cookie's value, when login is on
        self.thread_id = thread_id  # a stored thread to resume instead of a new chat
        # Websocket compression offered as every browser offers it; the server decides.
        self.sio = socketio.AsyncClient(
            reconnection=False,
            websocket_extra_options={"compress": 15} if offer_deflate else {},
        )
        self.events: list[Event] = []
        self._new_event = asyncio.Event()
        self.sio.on("*", self._on_any)

    async def _on_any(self, name: str, data: Any = None) -> None:
        self.events.append(Event(name, data, time.monotonic()))
        self._new_event.set()

    @property
    def compressed(self) -> bool:
        """Whether the websocket negotiated permessage-deflate (once connected)."""
        ws = getattr(self.sio.eio, "ws", None)
        return bool(ws is not None and ws.compress)

    async def connect(self, *, restored: bool = False, wait: bool = True) -> ChainlitClient:
        """Connect and start the chat; `restored`: a browser back on a session that has
        already been used (same `session_id`), which Chainlit picks up where it was. With
        `wait` False it returns as soon as the chat was asked to start, as a quick user types
        before the chat has started."""
        headers = {"Cookie": f"access_token={self.access_token}"} if self.access_token else {}
        headers.update(self.headers)
        await self.sio.connect(
            self.app_url,
            headers=headers,
            socketio_path="/ws/socket.io",
            transports=["websocket"],
            auth={
                "clientType": "webapp",
                "sessionId": self.session_id,
                "threadId": self.thread_id,
                "userEnv": "{}",
                "chatProfile": self.chat_profile,
            },
            wait_timeout=10,
        )
        await self.sio.emit("connection_successful")
        if not wait:
            return self
        if restored:
            # Chainlit clears what it was asking the old socket, and starts nothing new.
            await self.wait_for(lambda e: e.name == "clear_call_fn", within=30)
        elif self.thread_id:
            # A resumed chat ends with the stored thread sent back to the UI.
            await self.wait_for(
                lambda e: e.name in ("resume_thread", "resume_thread_error"), within=30
            )
        else:
            # on_chat_start runs as a Chainlit "run" step; its update_message marks the end.
            await self.wait_for(
                lambda e: e.name == "update_message" and e.data.get("name") == "on_chat_start",
                within=30,
            )
        return self

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()

    async def wait_for(
        self, predicate: Callable[[Event], bool], *, within: float = 20, start: int = 0
    ) -> Event:
        deadline = time.monotonic() + within
        seen = start
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = [e.name for e in self.events[start:]]
                raise TimeoutError(f"no matching event within {within} s; saw {names}")
            self._new_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), remaining)

    async def started_thread(self, *, within: float = 30) -> str:
        """The id of the thread this chat started. Chainlit announces it (`first_interaction`)
        only once its data layer has stored the thread, which can come after the first answer's
        own events (a request that fails at once, say), so this waits for it."""
        event = await self.wait_for(lambda e: e.name == "first_interaction", within=within)
        return str(event.data["thread_id"])

    async def send(self, text: str, *, command: str | None = None) -> int:
        """Send a user message as the UI does (with a composer command if given); returns the
        event index it was sent at."""
        mark = len(self.events)
        extra = {"command": command} if command else {}
        await self.sio.emit(
            "client_message",
            {
                "message": {
                    **extra,
                    "threadId": "",
                    "id": str(uuid.uuid4()),
                    "name": "User",
                    "type": "user_message",
                    "output": text,
                    "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "metadata": {"location": self.app_url},
                },
                "fileReferences": [],
            },
        )
        return mark

    async def finished(self, mark: int, *, within: float = 60) -> Answer:
        """Wait for the task_end that closes the message sent at `mark`."""
        start = await self.wait_for(lambda e: e.name == "task_start", within=within, start=mark)
        # A task_end from before this message (the end of chat start) may arrive after `mark`:
        # the answer's own task_end is the first one after its task_start.
        begun = self.events.index(start)
        end = await self.wait_for(lambda e: e.name == "task_end", within=within, start=begun)
        # Nothing to wait for after it: one socket delivers the server's events in the order they
        # were sent, and the client records each in arrival order (its handler tasks start in
        # order and append before their first await), so what came before task_end is recorded.
        index = self.events.index(end)
        return Answer(self.events[mark : index + 1])

    async def ask(self, text: str, *, within: float = 60, command: str | None = None) -> Answer:
        return await self.finished(await self.send(text, command=command), within=within)

    async def stop(self) -> None:
        await self.sio.emit("stop")

    async def change_settings(self, values: dict[str, Any]) -> None:
        # call() waits for the server's acknowledgement, sent when the handler has finished,
        # so the next message is answered with the new settings.
        await self.sio.call("chat_settings_change", values, timeout=10)


async def click_action(app_url: str, client: ChainlitClient, name: str, *, start: int = 0) -> None:
    """Press an action button as the UI does: POST /project/action with the action's dict
    (the first one named `name` sent at or after event index `start`)."""
    event = await client.wait_for(
        lambda e: e.name == "action" and e.data.get("name") == name, start=start
    )
    cookies = {"access_token": client.access_token} if client.access_token else None
    async with httpx2.AsyncClient(base_url=app_url, timeout=30, cookies=cookies) as http:
        response = await http.post(
            "/project/action", json={"sessionId": client.session_id, "action": event.data}
        )
        response.raise_for_status()


class GatedProxy:
    """A TCP proxy on loopback, in the test's event loop, in front of an upstream at
    `target_port`: connections are accepted at once but nothing passes either way until
    `release()`, so a test decides when the app hears back (a provider slow to list its
    models, say). Use as `async with`; `base_url` is the proxy's /v1."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.released = asyncio.Event()
        self.connected = asyncio.Event()  # set at the first connection
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the proxy is not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def release(self) -> None:
        self.released.set()

    async def __aenter__(self) -> GatedProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connected.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.released.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def upstream_requests(server: Any, count: int, *, within: float = 10) -> list[Any]:
    """The offline server's first `count` request records, waited for off the event loop (a
    blocking wait would also stall this process's Socket.IO client and hold back its sends)."""
    records: list[Any] = await asyncio.to_thread(server.records.wait_for, count, within)
    return records


async def upstream_ended(record: Any, *, within: float) -> bool:
    """Whether the upstream request ended within `within` seconds (waited off the loop)."""
    ended: bool = await asyncio.to_thread(record.ended.wait, within)
    return ended


def login(app_url: str, username: str, password: str) -> str:
    """Log in with a password as the login page does; returns the access_token cookie."""
    response = httpx2.post(
        f"{app_url}/login", data={"username": username, "password": password}, timeout=30
    )
    response.raise_for_status()
    token = response.cookies.get("access_token")
    assert token, "login set no access_token cookie"
    return str(token)
