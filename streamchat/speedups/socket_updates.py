"""Stream updates to one browser straight onto its engine.io queue, with a bounded backlog.

python-socketio's `emit` wraps every packet in a task and waits for it with `asyncio.wait`, even
for a single recipient. A streamed answer sends an update every few tens of milliseconds per
chat, and that wrapper costs about as much server CPU as the rest of the send. For one client
and no acknowledgement, `emit` comes down to: encode the Socket.IO packet, put it on the
client's engine.io queue. `SocketUpdates.emit` does exactly that, in the same order. With
python-socketio's own packet class and JSON, the packet is one `json.dumps` behind its type
digit (and namespace), which is what the class would build after looking through the whole
payload for binary parts; a payload with binary parts (JSON cannot hold them) or another packet
class gets the class's own encoding.

Chainlit's own events for a chat (task start and end, the answer's step, its message's start
and finished form: six to eight per answer) go the same way once `route_session_emits` has set
the session's `emit`. Through `emit`, each of them also has its whole payload (a step is a dict of
some twenty fields) walked for binary parts before it is encoded.

It also gives a slow browser backpressure. engine.io's per-client queue has no bound: a client
that reads slower than we write (a weak connection, a sleeping laptop tab) would collect every
update in server memory, and engine.io's pings would wait behind them. While `max_backlog`
packets are waiting, `emit` waits until the client has taken them all; the CoalescingSink in
front of it writes from a task of its own meanwhile and merges the answer's text, so a slow
client gets fewer, larger updates and the answer is still read from the provider at its pace.

`hand_off_queues` gives each new client a `HandoffQueue`: the packet goes to engine.io's
waiting writer directly, without the task `asyncio.wait_for` wraps around every `queue.get()`
on Python 3.11 (and the two loop iterations it takes to finish), once per packet.
"""

from __future__ import annotations

import asyncio
import collections
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
        if socket is None or socket.closed:
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


class HandoffQueue(asyncio.Queue[Any]):
    """An asyncio.Queue whose `get()` is a Future, filled by the next `put` when nothing waits.

    engine.io's writer waits for each packet with `asyncio.wait_for(queue.get(), timeout)`. On
    Python 3.11 `wait_for` runs a coroutine in a task of its own: for every packet a task is
    made, stepped, finished, and its end passed on to the writer one loop iteration later. A
    Future is awaited as it is. Everything else is the Queue's own: order (a waiting `get`
    takes the first packet put), `qsize`, `task_done` and `join` (a packet handed over counts
    as unfinished until the writer marks it done, as one taken from the queue does), and a
    `get` given up (a timeout cancels its Future) takes nothing. Only `shutdown()` (Python
    3.13) is refused: it would not wake a waiting `get` (engine.io never shuts a queue).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._takers: collections.deque[asyncio.Future[Any]] = collections.deque()

    def get(self) -> asyncio.Future[Any]:  # type: ignore[override]
        """The next item, as a Future to await (done already when one is waiting)."""
        taker = asyncio.get_running_loop().create_future()
        if self.qsize():
            taker.set_result(self.get_nowait())
        else:
            self._takers.append(taker)
        return taker

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)  # counted unfinished, as any put
        takers = self._takers
        while takers:
            taker = takers.popleft()
            if not taker.done():  # not given up
                taker.set_result(self.get_nowait())
                return

    def shutdown(self, immediate: bool = False) -> None:
        """Refused: a `get` waiting on its Future would never learn of it."""
        raise NotImplementedError("a HandoffQueue cannot be shut down")


def hand_off_queues(server: socketio.AsyncServer) -> None:
    """Give every engine.io client that connects from now on a `HandoffQueue` (engine.io makes
    each client's queue with its server's `create_queue`)."""
    server.eio.create_queue = HandoffQueue
