"""uvicorn's server with housekeeping once a second, and websocket compression as chosen.

uvicorn's `Server.main_loop` wakes ten times a second to refresh the Date header and see whether
to exit, whatever the process is doing; on a chat server idle between tokens each wake-up finds
cold caches. `QuietServer` (a subclass overriding `main_loop`) calls uvicorn's `on_tick` once a
second, as its tenth tick, and setting `should_exit` from any thread wakes it at once. The
request limit (`limit_max_requests`, unset by Chainlit) is then checked once a second.
`install_quiet_server()` makes it the `uvicorn.Server` that `chainlit run` creates.

Chainlit reads UVICORN_WS_PER_MESSAGE_DEFLATE (on by default there) before it loads app.py, so
app.py cannot change that default through the variable; `install_websocket_compression(on)`
has the uvicorn configuration Chainlit makes next follow streamchat's default (off) instead.
Every browser offers permessage-deflate, and compressing a stream's many short updates costs
CPU and memory per connection (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any

import uvicorn
import uvicorn.config
import uvicorn.server

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


def new_server(config: uvicorn.Config, *, quiet: bool = True) -> uvicorn.Server:
    """A QuietServer for `config`, or uvicorn's own server when `quiet` is False, its tick is
    not the one known, or the app installed speed-ups switched off."""
    from streamchat.speedups import quiet_servers_on

    if quiet and quiet_servers_on() and _ticks_as_expected(_UVICORN_SERVER):
        return QuietServer(config)
    return _UVICORN_SERVER(config)


def install_quiet_server() -> str | None:
    """Have `uvicorn.Server(...)` (how `chainlit run` starts its server) make a QuietServer.
    Returns why not, with uvicorn left as it is, when its tick is not the one this module
    knows; None when installed."""
    if uvicorn.Server is QuietServer:
        return None
    if uvicorn.Server is not _UVICORN_SERVER:
        return "uvicorn.Server is not uvicorn's own class"
    if not _ticks_as_expected(_UVICORN_SERVER):
        return f"this uvicorn's ({uvicorn.__version__}) main loop is not the one known"
    uvicorn.Server = QuietServer  # type: ignore[misc]
    return None


def install_websocket_compression(per_message_deflate: bool) -> str | None:
    """Have every uvicorn configuration made from now on by `uvicorn.Config(...)` (how
    `chainlit run` configures its server) negotiate permessage-deflate as given, whatever it
    was passed. Returns why not, with uvicorn left as it is, when this uvicorn's Config has no
    such option or `uvicorn.Config` is someone else's class; None when installed."""
    current = uvicorn.Config
    if current is not _UVICORN_CONFIG and not getattr(current, "_chosen_compression", False):
        return "uvicorn.Config is not uvicorn's own class"
    if "ws_per_message_deflate" not in inspect.signature(_UVICORN_CONFIG).parameters:
        return f"this uvicorn ({uvicorn.__version__}) has no ws_per_message_deflate option"

    class ChosenCompressionConfig(_UVICORN_CONFIG):
        """uvicorn's configuration, websocket compression as streamchat's setting says."""

        _chosen_compression = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Read by uvicorn's websocket protocols as each connection is accepted.
            self.ws_per_message_deflate = per_message_deflate

    uvicorn.Config = ChosenCompressionConfig  # type: ignore[misc]
    return None
