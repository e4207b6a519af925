"""uvicorn's server, with housekeeping once a second instead of ten times.

uvicorn's `Server.main_loop` sleeps 0.1 s, then calls `on_tick`, which refreshes the Date
header every tenth time and returns whether the server should exit; a signal handler or the
code that runs the server asks for that by setting `should_exit`. So the process wakes ten
times a second whatever it is doing. On a server that is otherwise idle, as a chat server is
between the tokens of a slow stream, each of those wake-ups finds cold caches and costs a
quarter of a millisecond of CPU here. Ten a second are about a tenth of what the app spends on
an answer that streams alone at 50 tokens a second.

`QuietServer` calls `on_tick` once a second, always as uvicorn's tenth tick (so the Date header
is refreshed just as often), and setting `should_exit`, from any thread, wakes its main loop at
once: a Ctrl-C or SIGTERM stops it as promptly as before, and a server run in a thread stops as
soon as it is told to. What is checked less often is the request limit (`limit_max_requests`,
which Chainlit does not set): once a second, so a server may take up to a second longer to stop
at it. Everything else is uvicorn's.

`install_quiet_server()` makes `uvicorn.Server`, the name Chainlit creates its server by, this
class. Call it while the app module loads: `chainlit run` creates the server afterwards.

Websocket compression (`UVICORN_WS_PER_MESSAGE_DEFLATE`, Chainlit's variable): off unless
asked for, where uvicorn (and so Chainlit) has it on. Every browser offers permessage-deflate,
and with it on the server compresses every frame it sends, a stream's updates included, and
keeps a compressor for every connection. A stream's update is a short JSON event (about 120
bytes) sent 25 times a second; compressing it saves about 2.5 KB a second per answer, and
costs 8–29% more CPU per streamed token with 25 or more answers at once and some 120 KiB of
memory per connected browser (docs/benchmarks.md). `websocket_compression(environ)` reads
the choice; `install_websocket_compression(on)` has the uvicorn configuration Chainlit makes
next follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
import uvicorn.config
import uvicorn.server

from streamchat.core.errors import ConfigError
from streamchat.settings import env_flag

log = logging.getLogger(__name__)

_UVICORN_SERVER = uvicorn.server.Server
_UVICORN_CONFIG = uvicorn.config.Config
# uvicorn refreshes the Date header on every tick whose counter is a multiple of this.
_TICKS_PER_REFRESH = 10
_COUNTER_WRAP = 864000  # uvicorn's: the counter wraps after 24 hours of 0.1 s ticks


def _wake(tick: asyncio.Future[None]) -> None:
    if not tick.done():
        tick.set_result(None)


class QuietServer(_UVICORN_SERVER):
    """uvicorn's `Server`, whose main loop wakes once a second, or at once to exit."""

    tick_s = 1.0

    def __init__(self, config: uvicorn.Config) -> None:
        self._should_exit = False
        self._pending_tick: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        pending = self._pending_tick
        if value and pending is not None:
            loop, tick = pending
            # A closed loop raises RuntimeError: nothing waits on it any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, tick)

    async def main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + _TICKS_PER_REFRESH) % _COUNTER_WRAP
            tick: asyncio.Future[None] = loop.create_future()
            # Published before `should_exit` is read: a request to exit made after the read
            # finds this tick and wakes it.
            self._pending_tick = (loop, tick)
            timer = loop.call_later(self.tick_s, _wake, tick)
            try:
                if not self._should_exit:
                    await tick
            finally:
                timer.cancel()
                self._pending_tick = None
            should_exit = await self.on_tick(counter)


def _ticks_as_expected(server_class: Any) -> bool:
    """uvicorn's main loop and tick have the shape this module was written against."""
    on_tick = getattr(server_class, "on_tick", None)
    if not inspect.iscoroutinefunction(on_tick) or not inspect.iscoroutinefunction(
        getattr(server_class, "main_loop", None)
    ):
        return False
    return list(inspect.signature(on_tick).parameters) == ["self", "counter"]


def new_server(config: uvicorn.Config) -> uvicorn.Server:
    """A QuietServer for `config`, or uvicorn's own server when its tick is not the one known."""
    if _ticks_as_expected(_UVICORN_SERVER):
        return QuietServer(config)
    return _UVICORN_SERVER(config)


def install_quiet_server() -> bool:
    """Have `uvicorn.Server(...)` (how `chainlit run` starts its server) make a QuietServer.
    False, with uvicorn left as it is, when its tick is not the one this module knows."""
    if uvicorn.Server is QuietServer:
        return True
    if uvicorn.Server is not _UVICORN_SERVER or not _ticks_as_expected(_UVICORN_SERVER):
        log.info("uvicorn's main loop keeps its own tick: this uvicorn's is not the one known")
        return False
    uvicorn.Server = QuietServer  # type: ignore[misc]
    return True


@dataclass(frozen=True)
class CompressionChoice:
    """Whether websockets negotiate permessage-deflate, and what was wrong with the setting."""

    per_message_deflate: bool = False
    problem: str | None = None


def websocket_compression(environ: Mapping[str, str]) -> CompressionChoice:
    """The choice `UVICORN_WS_PER_MESSAGE_DEFLATE` makes: off when unset or empty; a value
    that is neither true nor false is reported as `problem`, and compression stays off."""
    try:
        return CompressionChoice(env_flag(environ, "UVICORN_WS_PER_MESSAGE_DEFLATE", False))
    except ConfigError as exc:
        return CompressionChoice(False, f"{exc} Websocket compression stays off (the default).")


def install_websocket_compression(per_message_deflate: bool) -> bool:
    """Have every uvicorn configuration made from now on by `uvicorn.Config(...)` (how
    `chainlit run` configures its server) negotiate permessage-deflate as given, whatever it
    was passed. False, with uvicorn left as it is, when this uvicorn's Config has no such
    option or `uvicorn.Config` is someone else's class."""
    current = uvicorn.Config
    if current is not _UVICORN_CONFIG and not getattr(current, "_chosen_compression", False):
        log.info("websocket compression left to uvicorn: uvicorn.Config is not uvicorn's own")
        return False
    if "ws_per_message_deflate" not in inspect.signature(_UVICORN_CONFIG).parameters:
        log.info("websocket compression left to uvicorn: this uvicorn has no such option")
        return False

    class ChosenCompressionConfig(_UVICORN_CONFIG):
        """uvicorn's configuration, websocket compression as streamchat's setting says."""

        _chosen_compression = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Read by uvicorn's websocket protocols as each connection is accepted.
            self.ws_per_message_deflate = per_message_deflate

    uvicorn.Config = ChosenCompressionConfig  # type: ignore[misc]
    return True
