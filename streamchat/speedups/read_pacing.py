"""Reading a provider's stream at the pace of the screen: what arrives between two UI updates
is read in one go.

Every chunk that arrives wakes the server to read it, yet the screen gets at most one update
per STREAM_FLUSH_MS. After an update `SocketHold` raises the socket's receive low-water mark
(SO_RCVLOWAT) so the kernel keeps the next chunks until the update is due, then lowers it: one
wake-up reads them all. The end of a stream, an error and more than HOLD_BYTES are reported at
once. Linux 4.18+ only (lowering the mark wakes a waiting reader); elsewhere `attach` returns
None. Runs that show when chunks arrive (chunk log, timeline, the CLI's --raw) are not paced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

# More than this waiting is reported at once (a provider that sends a lot between two updates).
HOLD_BYTES = 16 * 1024
# uvloop's timers fire up to about a millisecond early: released this much after the update is
# due, the read that follows finds it due.
RELEASE_LATE_S = 0.002
# A hold shorter than this saves no wake-up: the next chunk would come after it anyway.
MIN_HOLD_S = 0.005

_MIN_KERNEL = (4, 18)


@functools.cache
def supported() -> bool:
    """Whether this system can hold a TCP socket's readiness and wake the reader on release."""
    if sys.platform != "linux" or not hasattr(socket, "SO_RCVLOWAT"):
        return False
    return _kernel_version(os.uname().release) >= _MIN_KERNEL


def _kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a Linux release string such as "6.1.0-18-amd64"; (0, 0) if unreadable."""
    found = re.match(r"(\d+)\.(\d+)", release)
    return (int(found[1]), int(found[2])) if found else (0, 0)


class SocketHold:
    """Holds back one TCP connection's readiness until a given time, then lets it go.

    `hold_until(when)` after a read; the hold ends by itself at `when`. `close()` when the
    stream ends (before the connection goes back to a pool): the socket is left as it was found.
    The descriptor stays the transport's: it is used only while the transport is open, through
    a `_BorrowedSocket`, which never closes it or holds it open (not even when a hold is
    dropped without `close()`).
    """

    __slots__ = ("_closed", "_held", "_loop", "_sock", "_timer", "_transport", "holds")

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        fd: int,
        family: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        # One socket object for the hold's life, instead of one per change of the mark: making
        # one costs a system call (getsockname) and an object, twice per UI update.
        self._sock = _BorrowedSocket(family, socket.SOCK_STREAM, 0, fd)
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._held = False
        self._closed = False
        self.holds = 0  # how many times readiness was held back (for tests and benchmarks)

    @classmethod
    def attach(cls, transport: asyncio.BaseTransport | None) -> SocketHold | None:
        """A hold for the TCP socket under `transport` (TLS included), or None where holding is
        not possible (another system, no socket, not TCP, closed)."""
        if transport is None or transport.is_closing() or not supported():
            return None
        raw: Any = transport.get_extra_info("socket")
        if raw is None:
            return None
        try:
            family, fd = raw.family, raw.fileno()
            if raw.type != socket.SOCK_STREAM or family not in (socket.AF_INET, socket.AF_INET6):
                return None
        except (OSError, ValueError):  # closed meanwhile
            return None
        if fd < 0:
            return None
        return cls(transport, fd, family, asyncio.get_running_loop())

    def hold_until(self, when: float) -> None:
        """Do not report the socket readable before `when` (a `time.monotonic()` value), unless
        the stream ends, fails or more than HOLD_BYTES arrive. Already held: kept as it is."""
        if self._timer is not None or self._closed:
            return
        delay = when - time.monotonic()
        if delay < MIN_HOLD_S or not self._set(HOLD_BYTES):
            return
        self._held = True
        self.holds += 1
        self._timer = self._loop.call_later(delay + RELEASE_LATE_S, self._release_now)

    def release(self) -> None:
        """Report the socket readable again as soon as anything is there."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unhold()

    def close(self) -> None:
        """Release for good: later holds do nothing (the connection itself stays open)."""
        self.release()
        self._closed = True
        self._sock.detach()

    def _release_now(self) -> None:  # the hold's timer
        self._timer = None
        self._unhold()

    def _unhold(self) -> None:
        if self._held:
            self._held = False
            self._set(1)

    def _set(self, low_water: int) -> bool:
        # While the transport is open its descriptor is this connection's, whatever its number
        # (a transport marks itself closing before its descriptor is closed and reused).
        if self._closed or self._transport.is_closing():
            return False
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low_water)
        except OSError as exc:  # this socket refuses the option
            log.debug("cannot set SO_RCVLOWAT: %s", exc)
            return False
        return True


class _BorrowedSocket(socket.socket):
    """A socket object over a descriptor that belongs to someone else (a transport).

    It is never closed through this object: `detach()` lets go of the descriptor, and so does
    the object's finalizer, which replaces the one that would close it. A hold dropped without
    `close()` (a stream abandoned, an exception) leaves the connection as it was.
    """

    __slots__ = ()

    def __del__(self) -> None:
        self.detach()
