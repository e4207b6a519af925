"""QuietServer: uvicorn's server with housekeeping once a second, woken at once to exit; and
websocket compression, off unless asked for."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from streamchat.speedups import serving
from streamchat.speedups.serving import (
    QuietServer,
    install_quiet_server,
    install_websocket_compression,
    new_server,
)
from tests.harness import probe_app

ROOT = Path(__file__).resolve().parent.parent


async def _hello(scope, receive, send):  # a minimal ASGI app
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


class _Ticks(list):
    """The counters a server's ticks were called with, and an event for each new one."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def reach(self, count: int) -> None:
        while len(self) < count:
            self.changed.clear()
            await self.changed.wait()


def _server(tick_s: float) -> tuple[QuietServer, _Ticks]:
    config = uvicorn.Config(_hello, log_config=None, log_level="warning", lifespan="off")
    config.load()
    server = QuietServer(config)
    server.tick_s = tick_s
    ticks = _Ticks()
    on_tick = server.on_tick

    async def recording_tick(counter: int) -> bool:
        ticks.append(counter)
        ticks.changed.set()
        return await on_tick(counter)

    server.on_tick = recording_tick  # type: ignore[method-assign]
    return server, ticks


async def test_every_tick_is_uvicorns_tenth_so_the_date_header_is_refreshed_on_each():
    server, ticks = _server(tick_s=0.01)
    main = asyncio.create_task(server.main_loop())
    await ticks.reach(4)
    server.should_exit = True
    await asyncio.wait_for(main, 30)
    assert ticks[:4] == [0, 10, 20, 30]
    assert all(counter % 10 == 0 for counter in ticks)
    date = dict(server.server_state.default_headers)[b"date"]
    assert email.utils.parsedate_to_datetime(date.decode()).year >= 2024


async def test_asking_to_exit_from_another_thread_wakes_the_main_loop_at_once():
    server, ticks = _server(tick_s=3600)  # the timer alone would keep it asleep for an hour
    main = asyncio.create_task(server.main_loop())
    await ticks.reach(1)
    assert server._pending_tick is not None  # asleep in the tick after the first
    asker = threading.Thread(target=setattr, args=(server, "should_exit", True))
    asker.start()
    await asyncio.wait_for(main, 30)
    asker.join()
    assert ticks == [0, 10]  # the first tick, then the one the request to exit woke


async def test_asking_to_exit_on_the_loop_itself_wakes_the_main_loop():
    server, ticks = _server(tick_s=3600)
    main = asyncio.create_task(server.main_loop())
    await ticks.reach(1)
    assert server._pending_tick is not None  # asleep in the tick after the first
    server.should_exit = True
    await asyncio.wait_for(main, 30)
    assert ticks == [0, 10]


async def test_a_server_told_to_exit_before_its_main_loop_does_not_sleep():
    server, ticks = _server(tick_s=3600)
    server.should_exit = True
    await asyncio.wait_for(server.main_loop(), 30)
    assert ticks == [0]


async def test_setting_should_exit_false_does_not_wake_it():
    server, ticks = _server(tick_s=3600)
    main = asyncio.create_task(server.main_loop())
    await ticks.reach(1)
    assert server._pending_tick is not None  # asleep in the tick after the first
    server.should_exit = False
    await asyncio.sleep(0.05)
    assert not main.done() and ticks == [0]
    server.should_exit = True
    await asyncio.wait_for(main, 30)


def test_a_request_to_exit_after_the_loop_closed_is_harmless():
    server, _ = _server(tick_s=3600)
    loop = asyncio.new_event_loop()
    server._pending_tick = (loop, loop.create_future())
    loop.close()
    server.should_exit = True
    assert server.should_exit


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_running_server_at_once(loop, signal_name):
    """The real thing: uvicorn's own signal handling, on a socket, in a process of its own, with
    an hour between ticks. Without the wake-up it would sleep out the hour (and time out)."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, uvicorn
        from streamchat.speedups.serving import QuietServer

        async def hello(scope, receive, send):
            await send({{"type": "http.response.start", "status": 200, "headers": []}})
            await send({{"type": "http.response.body", "body": b"hello"}})

        async def main():
            # uvicorn raises the signal again once it has stopped: to this handler.
            signal.signal(signal.{signal_name}, lambda *_: print("signal passed on"))
            server = QuietServer(uvicorn.Config(hello, port=0, log_level="warning", lifespan="off"))
            server.tick_s = 3600
            serving = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # into the hour-long tick
            os.kill(os.getpid(), signal.{signal_name})
            await serving
            print("stopped")

        if {loop!r} == "uvloop":
            import uvloop
            uvloop.run(main())
        else:
            asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["signal", "passed", "on", "stopped"]


@contextlib.contextmanager
def _serving(**options: Any) -> Iterator[tuple[httpx.Client, threading.Thread]]:
    """A QuietServer with these Config options on a loopback socket, run in a thread of its
    own: a client for it, and the thread (told to exit, and joined, at the end)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            _hello, log_config=None, log_level="warning", lifespan="off", **options
        )
        server = QuietServer(config)
        thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.started
            port = sock.getsockname()[1]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                yield client, thread
        finally:
            server.should_exit = True
            thread.join(30)
        assert not thread.is_alive()


def test_a_served_date_header_moves_on_with_the_clock():
    with _serving() as (client, _):
        first = email.utils.parsedate_to_datetime(client.get("/").headers["date"])
        time.sleep(2.5)  # two and a half ticks
        later = email.utils.parsedate_to_datetime(client.get("/").headers["date"])
    assert 1 <= (later - first).total_seconds() <= 30


def test_a_server_still_stops_at_its_request_limit():
    with _serving(limit_max_requests=2) as (client, thread):
        assert client.get("/").text == "hello"
        assert client.get("/").text == "hello"
        thread.join(30)  # the next tick finds the limit reached
        assert not thread.is_alive()


def test_install_makes_uvicorn_server_a_quiet_one(monkeypatch):
    monkeypatch.setattr(uvicorn, "Server", serving._UVICORN_SERVER)
    assert install_quiet_server() is None
    assert uvicorn.Server is QuietServer
    assert install_quiet_server() is None  # again: nothing more to do


def test_an_unknown_uvicorn_tick_is_left_alone(monkeypatch):
    class NewerServer(serving._UVICORN_SERVER):
        async def on_tick(self, counter: int, now: float) -> bool:  # a changed signature
            return True

    monkeypatch.setattr(serving, "_UVICORN_SERVER", NewerServer)
    monkeypatch.setattr(uvicorn, "Server", NewerServer)
    assert "main loop is not the one known" in (install_quiet_server() or "")
    assert uvicorn.Server is NewerServer
    assert type(new_server(uvicorn.Config(_hello))) is NewerServer


def test_someone_elses_server_class_is_left_alone(monkeypatch):
    class TheirServer(serving._UVICORN_SERVER):
        pass

    monkeypatch.setattr(uvicorn, "Server", TheirServer)
    assert install_quiet_server() == "uvicorn.Server is not uvicorn's own class"
    assert uvicorn.Server is TheirServer


def test_new_server_makes_a_quiet_one_for_this_uvicorn():
    assert type(new_server(uvicorn.Config(_hello))) is QuietServer


def test_new_server_makes_uvicorns_own_with_speedups_switched_off(monkeypatch):
    from streamchat import speedups

    monkeypatch.setattr(speedups, "_installed", speedups.Speedups(enabled=False))
    assert type(new_server(uvicorn.Config(_hello))) is serving._UVICORN_SERVER


def test_new_server_makes_uvicorns_own_when_asked_for_a_plain_one():
    assert type(new_server(uvicorn.Config(_hello), quiet=False)) is serving._UVICORN_SERVER


def test_the_app_has_chainlit_start_a_quiet_server():
    # In `chainlit run`'s order: its cli first, then the app.
    probe = "import chainlit.cli\nimport app\nprint(chainlit.cli.uvicorn.Server.__name__)"
    assert probe_app(probe, STREAM_SPEEDUPS="on") == "QuietServer"


def test_with_speedups_off_chainlit_starts_uvicorns_own_server_and_config():
    probe = (
        "import chainlit.cli\nimport app\n"
        "print(chainlit.cli.uvicorn.Server.__name__, chainlit.cli.uvicorn.Config.__name__)"
    )
    assert probe_app(probe, STREAM_SPEEDUPS="off") == "Server Config"


def test_the_offline_model_runs_on_a_quiet_server_and_stops():
    from streamchat.offline.server import OfflineServer

    model = OfflineServer(port=0)
    model.start()
    try:
        assert type(model._server) is QuietServer
        assert httpx.get(f"{model.base_url}/models", timeout=10).status_code == 200
    finally:
        thread = model._thread
        model.stop()
    assert thread is not None and not thread.is_alive()


def test_uvicorn_configs_made_after_the_install_follow_the_choice(monkeypatch):
    monkeypatch.setattr(uvicorn, "Config", serving._UVICORN_CONFIG)
    assert install_websocket_compression(False) is None
    # As `chainlit run` makes it: with uvicorn's default, or its own variable's value.
    config = uvicorn.Config(_hello, ws_per_message_deflate=True)
    assert isinstance(config, serving._UVICORN_CONFIG)
    assert config.ws_per_message_deflate is False
    assert uvicorn.Config(_hello).ws_per_message_deflate is False
    assert install_websocket_compression(True) is None  # chosen again: the new choice holds
    assert uvicorn.Config(_hello, ws_per_message_deflate=False).ws_per_message_deflate is True


def test_someone_elses_config_class_is_left_alone(monkeypatch):
    class TheirConfig(serving._UVICORN_CONFIG):
        pass

    monkeypatch.setattr(uvicorn, "Config", TheirConfig)
    assert install_websocket_compression(False) == "uvicorn.Config is not uvicorn's own class"
    assert uvicorn.Config is TheirConfig
    assert uvicorn.Config(_hello).ws_per_message_deflate is True


def test_a_uvicorn_without_the_option_is_left_alone(monkeypatch):
    class OlderConfig:
        def __init__(self, app: Any) -> None:
            self.app = app

    monkeypatch.setattr(serving, "_UVICORN_CONFIG", OlderConfig)
    monkeypatch.setattr(uvicorn, "Config", OlderConfig)
    assert "has no ws_per_message_deflate option" in (install_websocket_compression(False) or "")
    assert uvicorn.Config is OlderConfig


def test_the_app_has_chainlit_configure_its_server_without_compression():
    # `chainlit run` passes its own variable's value, true unless set: the app's choice wins.
    probe = (
        "import os\nos.environ.pop('UVICORN_WS_PER_MESSAGE_DEFLATE', None)\n"
        "import chainlit.cli\nimport app\n"
        "print(chainlit.cli.uvicorn.Config(None, ws_per_message_deflate=True)"
        ".ws_per_message_deflate)"
    )
    assert probe_app(probe, STREAM_SPEEDUPS="on") == "False"
