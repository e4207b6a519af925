"""SocketUpdates against a real python-socketio server on loopback: updates arrive as `emit`
sends them and in order with everything else; a reconnected browser gets the rest; a gone one is
left to Socket.IO; a browser that stops reading holds the sender at the backlog bound; packets
are encoded exactly as python-socketio's packet class encodes them; a Chainlit session's own
events take the same way, in order, and never wait for the backlog; the feature check names
what a Socket.IO server lacks; the app routes through it only with speed-ups on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
import socketio
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from socketio import packet

from streamchat.speedups.socket_updates import (
    SessionEmit,
    SocketUpdates,
    problem,
    route_session_emits,
)
from tests.harness import free_port


class Server:
    def __init__(self) -> None:
        self.sio = socketio.AsyncServer(async_mode="asgi")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            socketio.ASGIApp(self.sio),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.uvicorn = uvicorn.Server(config)
        self.disconnected: dict[str, asyncio.Event] = {}

        @self.sio.event
        async def connect(sid: str, environ: dict) -> None:
            self.disconnected[sid] = asyncio.Event()

        @self.sio.event
        async def disconnect(sid: str, reason: str) -> None:
            self.disconnected[sid].set()

    async def serve(self) -> None:
        """Serve until `should_exit`; returns once the server listens."""
        started = asyncio.Event()
        original = self.uvicorn.startup

        async def startup(sockets: object = None) -> None:
            await original(sockets)  # type: ignore[arg-type]
            started.set()

        self.uvicorn.startup = startup  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.uvicorn.serve())
        await asyncio.wait_for(started.wait(), 10)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.serve()
    try:
        yield srv
    finally:
        srv.uvicorn.should_exit = True
        await asyncio.wait_for(srv.task, 10)


class RawClient:
    """An engine.io websocket client that reads only when asked, as a stuck browser would."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws
        self.sid = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str) -> AsyncIterator[RawClient]:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"{url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0
            )
            client = cls(http, ws)
            assert (await ws.receive_str()).startswith("0")  # engine.io open
            await ws.send_str("40")  # join the default namespace
            joined = await ws.receive_str()
            assert joined.startswith("40")
            client.sid = json.loads(joined[2:])["sid"]
            try:
                yield client
            finally:
                await ws.close()

    async def event(self) -> tuple[str, object]:
        while True:
            frame = await self.ws.receive_str()
            if frame == "2":  # engine.io ping
                await self.ws.send_str("3")
                continue
            assert frame.startswith("42"), frame
            name, data = json.loads(frame[2:])
            return name, data


async def test_updates_arrive_as_emit_sends_them_and_in_order_with_it(server):
    async with RawClient.connect(server.url) as client:
        updates = SocketUpdates(server.sio, lambda: client.sid)
        await server.sio.emit("stream_start", {"id": "m1"}, to=client.sid)
        for token in ["a", "b", "é 字 🙂"]:
            await updates.emit("stream_token", {"id": "m1", "token": token})
        await server.sio.emit("new_message", {"id": "m1", "output": "done"}, to=client.sid)
        received = [await asyncio.wait_for(client.event(), 5) for _ in range(5)]
    assert received == [
        ("stream_start", {"id": "m1"}),
        ("stream_token", {"id": "m1", "token": "a"}),
        ("stream_token", {"id": "m1", "token": "b"}),
        ("stream_token", {"id": "m1", "token": "é 字 🙂"}),
        ("new_message", {"id": "m1", "output": "done"}),
    ]


async def test_a_browser_that_reconnected_mid_answer_gets_the_rest(server):
    async with RawClient.connect(server.url) as first, RawClient.connect(server.url) as second:
        current = {"sid": first.sid}
        updates = SocketUpdates(server.sio, lambda: current["sid"])
        await updates.emit("stream_token", {"token": "a"})
        current["sid"] = second.sid  # Chainlit moved the session to the new socket
        await updates.emit("stream_token", {"token": "b"})
        assert await asyncio.wait_for(first.event(), 5) == ("stream_token", {"token": "a"})
        assert await asyncio.wait_for(second.event(), 5) == ("stream_token", {"token": "b"})


async def test_a_browser_that_is_gone_is_left_to_socketio(server):
    async with RawClient.connect(server.url) as client:
        sid = client.sid
    updates = SocketUpdates(server.sio, lambda: sid)
    await asyncio.wait_for(server.disconnected[sid].wait(), 5)
    await updates.emit("stream_token", {"token": "a"})  # dropped, as emit drops it
    assert not updates.backlogged()
    await SocketUpdates(server.sio, lambda: "never-connected").emit("stream_token", {})


async def test_a_browser_that_stops_reading_holds_the_sender_at_the_backlog_bound(server):
    packets = 300
    big = "x" * 128 * 1024  # enough to fill the socket buffers between us and the browser
    async with RawClient.connect(server.url) as client:
        updates = SocketUpdates(server.sio, lambda: client.sid, max_backlog=4)

        sent = 0

        async def send_all() -> None:
            nonlocal sent
            for i in range(packets):
                await updates.emit("stream_token", {"i": i, "token": big})
                sent += 1

        sender = asyncio.create_task(send_all())
        # Stuck: the buffers are full, packets wait, and nothing more goes out for half a second.
        async with asyncio.timeout(60):
            before = -1
            while sent != before or not updates.backlogged():
                before = sent
                await asyncio.sleep(0.5)
        eio_sid = server.sio.manager.eio_sid_from_sid(client.sid, "/")
        queue = server.sio.eio.sockets[eio_sid].queue
        assert not sender.done() and sent < packets, "the sender waits for the browser"
        assert updates.backlogged() and updates.waits > 0
        assert queue.qsize() <= 4, "the packets waiting for the browser stay within the bound"
        # The browser reads again: everything arrives, in order, and the sender finishes.
        seen = []
        async with asyncio.timeout(60):
            while len(seen) < packets:
                _, data = await client.event()
                assert isinstance(data, dict)
                seen.append(data["i"])
            await sender
        assert seen == list(range(packets))
        assert not updates.backlogged()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def class_encoding(packet_class: type[packet.Packet], namespace: str, event: str, data: object):
    """What python-socketio's `emit(event, data)` encodes: a tuple is several arguments."""
    args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
    encoded = packet_class(packet.EVENT, namespace=namespace, data=[event, *args]).encode()
    return encoded if isinstance(encoded, list) else [encoded]


@given(
    event=st.text(min_size=1),
    data=json_values | st.tuples(json_values, json_values),
    namespace=st.sampled_from(["/", "/chat"]),
)
@settings(max_examples=300, deadline=None)
def test_updates_are_encoded_as_the_packet_class_encodes_them(event, data, namespace):
    sio = socketio.AsyncServer(async_mode="asgi")
    updates = SocketUpdates(sio, lambda: "sid", namespace=namespace)
    assert updates.encode(event, data) == class_encoding(packet.Packet, namespace, event, data)


def test_binary_payloads_and_other_packet_classes_get_the_class_encoding():
    sio = socketio.AsyncServer(async_mode="asgi")
    updates = SocketUpdates(sio, lambda: "sid")
    data = {"id": "m1", "audio": b"\x00\x01", "parts": [b"\xff"]}
    parts = updates.encode("chunk", data)
    assert parts == class_encoding(packet.Packet, "/", "chunk", data)
    assert parts[0].startswith("52-") and parts[1:] == [b"\x00\x01", b"\xff"]

    class Tagged(packet.Packet):
        def encode(self):  # type: ignore[no-untyped-def]
            return "tagged:" + super().encode()

    sio.packet_class = Tagged
    assert updates.encode("stream_token", {"t": "a"}) == ['tagged:2["stream_token",{"t":"a"}]']


async def test_an_update_for_a_socket_closed_since_it_was_found_is_left_to_socketio(server):
    """The socket found for a sid is kept; once it is closed (engine.io marks it so before it
    goes), nothing more is put on its queue: the update goes to python-socketio's `emit`, which
    drops it for a client that is gone, or finds the client where it is now."""
    async with RawClient.connect(server.url) as client:
        updates = SocketUpdates(server.sio, lambda: client.sid)
        await updates.emit("stream_token", {"token": "a"})  # finds the socket and keeps it
        assert await asyncio.wait_for(client.event(), 5) == ("stream_token", {"token": "a"})
        socket = server.sio.eio.sockets[server.sio.manager.eio_sid_from_sid(client.sid, "/")]
        sent: list[tuple[str, object, str]] = []

        async def emit(event: str, data: object, to: str, namespace: str) -> None:
            sent.append((event, data, to))

        real_emit = server.sio.emit
        server.sio.emit = emit  # type: ignore[method-assign]
        socket.closed = True
        queued = socket.queue.qsize()
        try:
            await updates.emit("stream_token", {"token": "b"})
        finally:
            socket.closed = False  # so the connection closes as usual
            server.sio.emit = real_emit  # type: ignore[method-assign]
        assert sent == [("stream_token", {"token": "b"}, client.sid)]
        assert socket.queue.qsize() == queued, "nothing put on a closed socket's queue"


def test_a_socketio_server_with_the_internals_known_passes_the_check():
    assert problem(socketio.AsyncServer(async_mode="asgi")) is None


def test_a_socketio_server_without_the_internals_known_is_named():
    sio = socketio.AsyncServer(async_mode="asgi")
    assert problem(SimpleNamespace(eio=SimpleNamespace(), manager=sio.manager)) == (
        "this engine.io server keeps no dictionary of sockets"
    )
    assert problem(SimpleNamespace(eio=sio.eio, manager=object())) == (
        "this python-socketio manager cannot map a sid to its engine.io sid"
    )


async def test_a_chainlit_sessions_events_go_straight_to_its_queue_in_order(server, monkeypatch):
    async with RawClient.connect(server.url) as client:
        session = SimpleNamespace(
            socket_id=client.sid,
            emit=lambda event, data: server.sio.emit(event, data, to=session.socket_id),
        )
        updates = route_session_emits(server.sio, session)
        assert isinstance(session.emit, SessionEmit)
        assert route_session_emits(server.sio, session) is updates, "routed once"

        async def not_used(*args: object, **kwargs: object) -> None:
            raise AssertionError("sent through python-socketio's emit")

        monkeypatch.setattr(server.sio, "emit", not_used)
        await session.emit("task_start", {})
        await session.emit("new_message", {"id": "m1", "output": ""})
        await updates.emit("stream_token", {"id": "m1", "token": "a"})
        await session.emit("update_message", {"id": "m1", "output": "a"})
        await session.emit("task_end", {})
        received = [await asyncio.wait_for(client.event(), 5) for _ in range(5)]
    assert received == [
        ("task_start", {}),
        ("new_message", {"id": "m1", "output": ""}),
        ("stream_token", {"id": "m1", "token": "a"}),
        ("update_message", {"id": "m1", "output": "a"}),
        ("task_end", {}),
    ]


async def test_chainlit_events_do_not_wait_behind_a_stuck_browsers_stream(server):
    async with RawClient.connect(server.url) as client:
        session = SimpleNamespace(socket_id=client.sid, emit=None)
        updates = route_session_emits(server.sio, session)
        updates.max_backlog = 2
        socket = server.sio.eio.sockets[server.sio.manager.eio_sid_from_sid(client.sid, "/")]
        writers_queue = socket.queue
        socket.queue = stuck = asyncio.Queue()  # one the writer never takes from: a stuck browser
        try:
            await updates.emit("stream_token", {"token": "a"})
            await updates.emit("stream_token", {"token": "b"})
            assert updates.backlogged()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(updates.emit("stream_token", {"token": "c"}), 0.3)
            await asyncio.wait_for(session.emit("task_end", {}), 1)
        finally:
            socket.queue = writers_queue  # so the connection can close
        assert stuck.qsize() == 3, "queued at once, behind the stream's updates"


async def test_a_session_routed_again_after_a_reconnect_reaches_the_new_socket(server):
    async with RawClient.connect(server.url) as first, RawClient.connect(server.url) as second:
        session = SimpleNamespace(socket_id=first.sid, emit=None)
        routed = route_session_emits(server.sio, session)
        await session.emit("task_end", {"n": 1})
        # Chainlit restores the session on the new socket and puts its own emit back.
        session.socket_id = second.sid
        session.emit = lambda event, data: server.sio.emit(event, data, to=second.sid)
        again = route_session_emits(server.sio, session)
        assert again is not routed and isinstance(session.emit, SessionEmit)
        await session.emit("task_end", {"n": 2})
        assert await asyncio.wait_for(first.event(), 5) == ("task_end", {"n": 1})
        assert await asyncio.wait_for(second.event(), 5) == ("task_end", {"n": 2})


async def test_a_chainlit_event_for_a_browser_that_is_gone_is_left_to_socketio(server):
    async with RawClient.connect(server.url) as client:
        sid = client.sid
    await asyncio.wait_for(server.disconnected[sid].wait(), 5)
    sent: list[tuple[str, object, str]] = []

    async def emit(event: str, data: object, to: str, namespace: str) -> None:
        sent.append((event, data, to))

    server.sio.emit = emit  # type: ignore[method-assign]
    session = SimpleNamespace(socket_id=sid, emit=None)
    route_session_emits(server.sio, session)
    await session.emit("task_end", {})
    assert sent == [("task_end", {}, sid)]
