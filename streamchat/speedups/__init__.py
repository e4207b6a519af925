"""Measured speed-ups, fenced here: most reach into other libraries' internals.

Each checks that what it changes is what it expects and steps aside otherwise; all of them stay
off with `STREAM_SPEEDUPS=off`, and the app then runs on public APIs only. `install()` (app.py,
once, while it loads) puts the process-wide ones in place; `status()` says which are on and why
the others are off, and `log_status()` logs that once at startup. The figures behind each are
in docs/benchmarks.md.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

SWITCHED_OFF = "STREAM_SPEEDUPS=off"


@dataclass(frozen=True, slots=True)
class Speedups:
    """Which speed-ups may be used: plain values, read by streamchat.settings.

    `enabled` False (STREAM_SPEEDUPS=off) keeps every one of them off. `event_loop` is
    EVENT_LOOP (auto, uvloop, asyncio); `ws_per_message_deflate` is whether websockets may
    negotiate compression (UVICORN_WS_PER_MESSAGE_DEFLATE).
    """

    enabled: bool = True
    event_loop: str = "auto"
    ws_per_message_deflate: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """One speed-up: whether it is on, and if not, why."""

    name: str
    on: bool
    why: str = ""

    def describe(self) -> str:
        return f"{self.name}: on" if self.on else f"{self.name}: off ({self.why})"


_statuses: dict[str, Status] = {}
_installed: Speedups | None = None
_logged = False


def _record(name: str, problem: str | None) -> bool:
    _statuses[name] = Status(name, problem is None, problem or "")
    return problem is None


def install(speedups: Speedups, *, sio: Any = None) -> tuple[Status, ...]:
    """Put the process-wide speed-ups in place, as `speedups` allows: C tasks and uvloop,
    uvicorn's quiet main loop and its compression choice, stream updates onto engine.io (for
    `sio`, Chainlit's Socket.IO server). Call it once, while the app module loads (before
    `chainlit run` makes its loop and server). Returns `status()`."""
    global _installed
    _installed = speedups
    if not speedups.enabled:
        for name in (
            "C tasks",
            "event loop",
            "quiet server",
            "websocket compression",
            "socket updates",
            "frozen start-up heap",
        ):
            _record(name, SWITCHED_OFF)
        fast_stream_module(enabled=False)
        return status()

    from streamchat.speedups import eventloop, serving

    _record("C tasks", None if eventloop.use_c_tasks() else "this Python keeps them elsewhere")
    _record("event loop", eventloop.install_loop(speedups.event_loop).problem)
    _record("quiet server", serving.install_quiet_server())
    _record(
        "websocket compression",
        serving.install_websocket_compression(speedups.ws_per_message_deflate),
    )
    if sio is not None:
        _record("socket updates", _socket_updates_problem(sio))
    _record("frozen start-up heap", None)  # done by freeze_startup_heap, once started
    fast_stream_module()
    return status()


def freeze_startup_heap() -> int:
    """Once the app has started (its modules, Chainlit's and the SDK's loaded, its runtime
    built): collect once, then move every object left into the garbage collector's permanent
    generation (`gc.freeze`, a public API), so that full collections stop walking them. They
    are about 300,000 objects that live as long as the process; without this, each full
    collection while answers stream walks all of them, a pause of about 150 ms for every
    answer under way (docs/benchmarks.md). Returns how many objects were frozen: 0 with
    STREAM_SPEEDUPS=off or before `install`."""
    if _installed is None or not _installed.enabled:
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _socket_updates_problem(sio: Any) -> str | None:
    try:
        from streamchat.speedups import socket_updates
    except ImportError as exc:
        return f"cannot import {exc.name}"
    return socket_updates.problem(sio)


def socket_updates_on() -> bool:
    """Whether stream updates may go straight onto engine.io (installed, and it checked out)."""
    state = _statuses.get("socket updates")
    return state is not None and state.on


def quiet_servers_on() -> bool:
    """Whether servers this process starts (the offline model's) may be quiet ones: not when
    STREAM_SPEEDUPS=off was installed."""
    return _installed is None or _installed.enabled


def fast_stream_module(*, enabled: bool = True) -> ModuleType | None:
    """speedups/fast_stream.py when it may be used and runs with this SDK, else None (with the
    reason recorded for `status()`). A failed private import never stops the app."""
    if not enabled or (_installed is not None and not _installed.enabled):
        _record("fast stream", SWITCHED_OFF)
        return None
    try:
        from streamchat.speedups import fast_stream
    except ImportError as exc:  # a module fast_stream needs moved or went away
        _record("fast stream", f"cannot import {exc.name or exc}")
        return None
    if _record("fast stream", fast_stream.problem()):
        return fast_stream
    return None


def status() -> tuple[Status, ...]:
    """Every speed-up checked so far, in the order they were."""
    return tuple(_statuses.values())


def log_status(logger: logging.Logger) -> None:
    """Log once which speed-ups are on and why the others are off (later calls do nothing)."""
    global _logged
    if _logged:
        return
    _logged = True
    states = status()
    logger.info("speed-ups: %s", "; ".join(s.describe() for s in states) or "none checked")
    for state in states:
        if not state.on and state.why != SWITCHED_OFF:
            logger.warning("speed-up %s is off: %s", state.name, state.why)


def browser_updates(server: Any, session: Any) -> Any | None:
    """The stream-update channel to one Chainlit websocket session (`SocketUpdates`; Chainlit's
    own events for the chat are routed through it too), or None where Chainlit's own emit is
    to be used: speed-ups off, their check failed, or the session is not the kind known."""
    if not socket_updates_on() or not (hasattr(session, "emit") and hasattr(session, "socket_id")):
        return None
    from streamchat.speedups.socket_updates import route_session_emits

    return route_session_emits(server, session)
