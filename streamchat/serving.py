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
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any

import uvicorn
import uvicorn.server

log = logging.getLogger(__name__)

_UVICORN_SERVER = uvicorn.server.Server
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
