"""Stream updates to one browser straight onto its engine.io queue, with a bounded backlog.

python-socketio's `emit` wraps every packet in a task and waits for it, even for a single
recipient, and walks each payload for binary parts. For one client and no acknowledgement it
comes down to: encode the Socket.IO packet, put it on the client's engine.io queue, which is what
`SocketUpdates.emit` does, in the same order. Chainlit's own events for a chat go the same way
once `route_session_emits` has set the session's `emit`. While `max_backlog` packets wait for a
slow browser, `emit` waits (engine.io's queue has no bound); the CoalescingSink in front merges
the text meanwhile. This uses engine.io's sockets and queues and python-socketio's manager:
`problem(server)` checks they are there before app.py routes anything through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import socketio
from engineio import packet as eio_packet
from socketio import packet

DEFAULT_MAX_BACKLOG = 16
# What `json.dumps(value, separators=(",", ":"))` builds for every call, built once.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class SocketUpdates:
    """Sends events to the one client whose Socket.IO id `socket_id()` returns.

    `socket_id` is asked at every send, so a browser that reconnected mid-answer (Chainlit
    moves the session to the new socket) gets the rest of it. A client that is not connected
    to this process (gone, or served by another node of a message queue) is left to the
    server's own `emit`, which knows what to do.
    """

    def __init__(
        self,
        server: socketio.AsyncServer,
        socket_id: Callable[[], str],
        *,
        namespace: str = "/",
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        recheck_s: float = 0.25,
    ) -> None:
        if max_backlog < 1:
            raise ValueError("max_backlog must be at least 1")
        self._server = server
        self._socket_id = socket_id
        self._namespace = namespace
        self.max_backlog = max_backlog
        self._recheck_s = recheck_s
        self.waits = 0  # times a send waited for a slow client (for tests and metrics)
        self._event_prefix = str(packet.EVENT) + ("" if namespace == "/" else namespace + ",")
        self._found: tuple[str, Any] | None = None  # (sid, its engine.io socket) while open

    def backlogged(self) -> bool:
        """Whether the client has `max_backlog` packets waiting: the next `emit` would wait."""
        socket = self._socket(self._socket_id())
        return socket is not None and socket.queue.qsize() >= self.max_backlog

    def _socket(self, sid: str) -> Any:
        """The client's engine.io socket, if it is connected to this process. A Socket.IO sid
        names one connection for its whole life, so its socket is looked up once."""
        found = self._found
        if found is not None and found[0] == sid and not found[1].closed:
            return found[1]
        eio_sid = self._server.manager.eio_sid_from_sid(sid, self._namespace)
        socket = self._server.eio.sockets.get(eio_sid) if eio_sid is not None else None
        # A socket without the queue and state known here is left to the server's `emit`.
        if socket is None or getattr(socket, "closed", True) or not hasattr(socket, "queue"):
            self._found = None
            return None
        self._found = (sid, socket)
        return socket

    async def emit(self, event: str, data: Any) -> None:
        sid = self._socket_id()
        socket = self._socket(sid)
        if socket is None:
            await self._server.emit(event, data, to=sid, namespace=self._namespace)
            return
        if socket.queue.qsize() >= self.max_backlog:
            self.waits += 1
            # Until the client has taken everything waiting (engine.io marks each packet done
            # as its writer takes it). A client that leaves closes the socket without emptying
            # the queue, so the wait also looks at the socket now and then.
            while socket.queue.qsize() >= self.max_backlog and not socket.closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._recheck_s):
                        await socket.queue.join()
            if socket.closed:  # gone, or moved to a new socket: ask again where it is
                await self.emit(event, data)
                return
        self._put(socket, event, data)

    async def emit_now(self, event: str, data: Any) -> None:
        """Send at once, however many packets the client has waiting, as python-socketio's
        `emit` does: for Chainlit's own events (see `route_session_emits`), a handful per
        answer, which must not wait behind a slow client's stream."""
        sid = self._socket_id()
        socket = self._socket(sid)
        if socket is None:
            await self._server.emit(event, data, to=sid, namespace=self._namespace)
            return
        self._put(socket, event, data)

    def _put(self, socket: Any, event: str, data: Any) -> None:
        # What the socket's own `send` does for a connected client: queue the packet for its
        # writer. (`send` also checks the client's last ping, which engine.io's reader does
        # anyway; the socket is open, as looked up just now with nothing awaited since.)
        for part in self.encode(event, data):
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, data=part))

    def encode(self, event: str, data: Any) -> list[str | bytes]:
        """The Socket.IO EVENT packet (and binary attachments) `emit(event, data)` sends: a
        tuple is several arguments, None none, anything else one."""
        if isinstance(data, tuple):
            args = [event, *data]
        else:
            args = [event] if data is None else [event, data]
        packet_class = self._server.packet_class
        if packet_class is packet.Packet and packet_class.json.dumps is json.dumps:
            try:
                return [self._event_prefix + _compact_json(args)]
            except TypeError:  # bytes somewhere in it: a binary event, which the class builds
                pass
        encoded = packet_class(packet.EVENT, namespace=self._namespace, data=args).encode()
        return encoded if isinstance(encoded, list) else [encoded]


class SessionEmit:
    """A Chainlit session's `emit` (how Chainlit sends a chat its steps, messages, task start
    and end) through `SocketUpdates.emit_now`: the same packets to the same queue, in the same
    order, without python-socketio's task per packet and its walk of every payload for binary
    parts. Chainlit's own `emit` for a session is `sio.emit(event, data, to=sid)`."""

    __slots__ = ("updates",)

    def __init__(self, updates: SocketUpdates) -> None:
        self.updates = updates

    def __call__(self, event: str, data: Any) -> Coroutine[Any, Any, None]:
        return self.updates.emit_now(event, data)


class ChainlitSession(Protocol):
    """The part of Chainlit's WebsocketSession that `route_session_emits` uses."""

    socket_id: str
    emit: Callable[[str, Any], Any]


def route_session_emits(server: socketio.AsyncServer, session: ChainlitSession) -> SocketUpdates:
    """Send the session's Chainlit events through a `SocketUpdates` (see `SessionEmit`), and
    return it for the session's streams too. Call it whenever the session is at hand: Chainlit
    puts its own `emit` back when a browser reconnects to the session."""
    current = session.emit
    if isinstance(current, SessionEmit):
        return current.updates
    updates = SocketUpdates(server, lambda: session.socket_id)
    session.emit = SessionEmit(updates)
    return updates


def problem(server: Any) -> str | None:
    """Why `SocketUpdates` cannot run with this Socket.IO server, or None when it can: the
    engine.io and python-socketio internals it uses must be the ones it knows."""
    eio = getattr(server, "eio", None)
    if not isinstance(getattr(eio, "sockets", None), dict):
        return "this engine.io server keeps no dictionary of sockets"
    if not callable(getattr(getattr(server, "manager", None), "eio_sid_from_sid", None)):
        return "this python-socketio manager cannot map a sid to its engine.io sid"
    if getattr(server, "packet_class", None) is None or not callable(server.emit):
        return "this python-socketio server has no packet class"
    if not hasattr(eio_packet, "Packet") or not hasattr(eio_packet, "MESSAGE"):
        return "this engine.io has no packet class"
    return None
