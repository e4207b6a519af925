"""SocketHold over real loopback TCP, on asyncio's loop and on uvloop: what arrives while the
socket is held is read in one go when the hold ends, and nothing is kept back for good (the end
of the stream, a flood of data, the end of the hold)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from streamchat.speedups import read_pacing as pacing
from streamchat.speedups.read_pacing import HOLD_BYTES, SocketHold, _kernel_version
from tests.conftest import require_component


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a scenario on a fresh loop of each kind: the app runs on uvloop, tests and the
    CLI on asyncio's, and the two hand sockets to the kernel differently."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


@pytest.fixture(autouse=True)
def _supported() -> None:
    require_component(pacing.supported(), "a Linux kernel 4.18+ with SO_RCVLOWAT")


class Reads(asyncio.Protocol):
    """Records every read the loop hands over, and when."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self.arrived = asyncio.Event()
        self.eof = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.monotonic(), data))
        self.arrived.set()

    def eof_received(self) -> bool:
        self.eof.set()
        return False

    @property
    def data(self) -> bytes:
        return b"".join(data for _, data in self.reads)

    async def until(self, done: Callable[[], bool], within: float = 5) -> None:
        async with asyncio.timeout(within):
            while not done():
                self.arrived.clear()
                await self.arrived.wait()


class Peer:
    """The far end of a loopback TCP connection: sends what a test tells it to."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.connected.set()

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()


@contextlib.asynccontextmanager
async def connection() -> AsyncIterator[tuple[Peer, Reads, SocketHold]]:
    """A loopback TCP connection, its far end, and a hold attached to it (closed at the end)."""
    peer = Peer()
    server = await asyncio.start_server(peer.accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, reads = await loop.create_connection(Reads, "127.0.0.1", port)
    await asyncio.wait_for(peer.connected.wait(), 5)
    hold = SocketHold.attach(transport)
    assert hold is not None
    try:
        yield peer, reads, hold
    finally:
        hold.close()
        transport.close()
        assert peer.writer is not None
        peer.writer.close()
        server.close()
        await server.wait_closed()


def low_water(reads: Reads) -> int:
    assert reads.transport is not None
    sock = reads.transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))


def test_chunks_that_arrive_while_held_are_read_in_one_go_when_the_hold_ends(run):
    run(_chunks_that_arrive_while_held_are_read_in_one_go_when_the_hold_ends())


async def _chunks_that_arrive_while_held_are_read_in_one_go_when_the_hold_ends():
    async with connection() as (peer, reads, hold):
        until = time.monotonic() + 0.3
        hold.hold_until(until)
        for i in range(5):  # a provider's chunks, each in a segment of its own
            await peer.send(f"chunk {i};".encode())
        await reads.until(lambda: reads.data.count(b";") == 5)
        assert len(reads.reads) == 1, "one read for everything that came during the hold"
        assert reads.reads[0][0] >= until - 0.002, "not before the hold ended"
        assert hold.holds == 1


def test_without_a_hold_every_chunk_is_read_as_it_arrives(run):
    run(_without_a_hold_every_chunk_is_read_as_it_arrives())


async def _without_a_hold_every_chunk_is_read_as_it_arrives():
    async with connection() as (peer, reads, _hold):
        for i in range(3):
            await peer.send(f"chunk {i};".encode())
            await reads.until(lambda i=i: reads.data.count(b";") == i + 1)
        assert len(reads.reads) == 3


def test_release_makes_what_is_waiting_readable_at_once(run):
    run(_release_makes_what_is_waiting_readable_at_once())


async def _release_makes_what_is_waiting_readable_at_once():
    async with connection() as (peer, reads, hold):
        hold.hold_until(time.monotonic() + 60)
        await peer.send(b"held")
        await asyncio.sleep(0.05)
        assert reads.reads == [], "held back"
        hold.release()
        await reads.until(lambda: reads.data == b"held", within=2)


def test_the_end_of_the_stream_is_never_held_back(run):
    run(_the_end_of_the_stream_is_never_held_back())


async def _the_end_of_the_stream_is_never_held_back():
    async with connection() as (peer, reads, hold):
        hold.hold_until(time.monotonic() + 60)
        await peer.send(b"last words")
        assert peer.writer is not None
        peer.writer.close()  # the provider ends the stream
        async with asyncio.timeout(2):
            await reads.eof.wait()
        assert reads.data == b"last words"


def test_more_than_hold_bytes_is_read_at_once(run):
    run(_more_than_hold_bytes_is_read_at_once())


async def _more_than_hold_bytes_is_read_at_once():
    async with connection() as (peer, reads, hold):
        hold.hold_until(time.monotonic() + 60)
        await peer.send(b"x" * (HOLD_BYTES + 1))
        await reads.until(lambda: len(reads.data) > HOLD_BYTES, within=2)


def test_close_leaves_the_connection_open_and_unheld(run):
    run(_close_leaves_the_connection_open_and_unheld())


async def _close_leaves_the_connection_open_and_unheld():
    async with connection() as (peer, reads, hold):
        hold.hold_until(time.monotonic() + 60)
        assert low_water(reads) == HOLD_BYTES
        hold.close()
        assert low_water(reads) == 1, "a pooled connection goes back as it was"
        hold.hold_until(time.monotonic() + 60)  # after close: does nothing
        await peer.send(b"next request's answer")
        await reads.until(lambda: reads.data == b"next request's answer", within=2)
        assert reads.transport is not None and not reads.transport.is_closing()


def test_a_hold_already_running_is_kept_and_a_short_one_is_not_worth_it(run):
    run(_a_hold_already_running_is_kept_and_a_short_one_is_not_worth_it())


async def _a_hold_already_running_is_kept_and_a_short_one_is_not_worth_it():
    async with connection() as (_peer, reads, hold):
        hold.hold_until(time.monotonic() + 0.001)
        assert hold.holds == 0 and low_water(reads) == 1, "shorter than a wake-up saves"
        hold.hold_until(time.monotonic() + 60)
        hold.hold_until(time.monotonic() + 120)
        assert hold.holds == 1


def test_a_connection_closed_under_the_hold_is_harmless(run):
    run(_a_connection_closed_under_the_hold_is_harmless())


async def _a_connection_closed_under_the_hold_is_harmless():
    async with connection() as (_peer, reads, hold):
        hold.hold_until(time.monotonic() + 0.02)
        assert reads.transport is not None
        reads.transport.abort()
        await asyncio.sleep(0.05)  # the hold ends on a socket that is gone


def test_a_hold_takes_no_descriptor_and_never_closes_the_connections(run):
    run(_a_hold_takes_no_descriptor_and_never_closes_the_connections())


def open_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


async def _a_hold_takes_no_descriptor_and_never_closes_the_connections():
    async with connection() as (peer, reads, hold):
        assert reads.transport is not None
        fd = reads.transport.get_extra_info("socket").fileno()
        gc.collect()  # other tests' garbage first: its finalizers may close descriptors of theirs
        before = open_descriptors()
        # Holds dropped without close(), also inside a reference cycle, as an abandoned
        # stream's would be: the connection's descriptor stays open and the transport's.
        for _ in range(3):
            dropped = SocketHold.attach(reads.transport)
            assert dropped is not None
            dropped.hold_until(time.monotonic() + 60)
            dropped.release()
            cycle: list[Any] = [dropped]
            cycle.append(cycle)
            del dropped, cycle
            gc.collect()
        after = open_descriptors()
        assert fd in after, "the connection's descriptor was not closed"
        assert after <= before, "no descriptor of its own"
        os.fstat(fd)
        hold.hold_until(time.monotonic() + 60)
        assert low_water(reads) == HOLD_BYTES
        hold.close()
        assert low_water(reads) == 1
        await peer.send(b"still connected")
        await reads.until(lambda: reads.data == b"still connected", within=2)
        assert not reads.transport.is_closing()


def test_no_hold_where_there_is_no_tcp_socket(run, tmp_path, monkeypatch):
    run(_no_hold_where_there_is_no_tcp_socket(tmp_path, monkeypatch))


async def _no_hold_where_there_is_no_tcp_socket(tmp_path, monkeypatch):
    assert SocketHold.attach(None) is None
    server = await asyncio.start_unix_server(lambda r, w: None, path=str(tmp_path / "s"))
    try:
        _reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s"))
        assert SocketHold.attach(writer.transport) is None
        writer.close()
    finally:
        server.close()
    async with connection() as (_peer, reads, _hold):
        monkeypatch.setattr(pacing, "supported", lambda: False)
        assert SocketHold.attach(reads.transport) is None


def test_kernel_versions_are_read_from_release_strings():
    assert _kernel_version("6.1.0-18-amd64") == (6, 1)
    assert _kernel_version("4.18.0-553.el8_10.x86_64") == (4, 18)
    assert _kernel_version("5.15.153.1-microsoft-standard-WSL2") == (5, 15)
    assert _kernel_version("4.9rc1") == (4, 9)
    assert _kernel_version("weird") == (0, 0)
