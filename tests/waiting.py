"""Waiting for a state, not for a time: one place for the deadline-bounded checks tests use
when no event announces what they wait for (a count in another process, a key in Redis, a
socket upgraded in the background).

A check is run at once, then again after each short pause, until it holds or the deadline
passes; then the wait fails and says what it was waiting for. A test that needs time itself to
pass (a grace period, a stall to be detected) sleeps instead, and says so where it does.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any


def wait_until(
    condition: Callable[[], object],
    *,
    within: float,
    what: str,
    every: float = 0.01,
    pause: Callable[[float], object] = time.sleep,
) -> None:
    """Return as soon as `condition()` is true; raise TimeoutError naming `what` after `within`
    seconds. `pause(seconds)` sleeps between checks (a browser test passes
    `browser_pause(page)`, which keeps Playwright's events flowing)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        pause(every)


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    *,
    within: float,
    what: str,
    every: float = 0.01,
) -> None:
    """`wait_until` for the event loop: `condition` may be a coroutine function, and the loop
    goes on running other tasks between checks."""
    deadline = time.monotonic() + within
    while True:
        holds = condition()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(every)


def accepts_connections(port: int) -> bool:
    """Whether something listens on loopback `port` now."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def browser_pause(page: Any) -> Callable[[float], object]:
    """A `pause` for `wait_until` in a browser test: waits inside Playwright (which takes
    milliseconds), so the page's events are delivered meanwhile."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)
