"""The asyncio driver's poller, on real loopback sockets: on the standard
loop every plain socket the server accepted is read by one epoll of the
server's own (no transport); a socket leaves that epoll while its wire
pauses reading and when its connection ends; what the kernel will not take
is a backlog, counted in ``write_buffer_size`` and sent when the peer reads;
stopping the server ends every polled connection and closes the epoll."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from wslifecycle import Config, State, TerminationCause
from wslifecycle.drivers import asyncio as driver
from wslifecycle.drivers._asyncio_poll import Poller
from wslifecycle.drivers.asyncio import _Polled

CONNECTIONS = 50
FLOOD = 128  # messages of 64 KiB: 8 MiB, more than loopback buffers hold unread (4 MiB here)
CHUNK = 64 * 1024
TIMEOUT = 20.0  # bounds every test; each takes well under a second here


def config() -> Config:
    return Config(allow_no_origin=True, heartbeat_interval=30.0, max_write_buffer=8 * FLOOD * CHUNK)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Client:
    """A wsproto client on asyncio streams, reading only when asked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        # A small receive buffer: what the server sends beyond a few
        # hundred KiB unread stays on the server's side.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        client = cls(*await asyncio.open_connection(sock=sock))
        client.writer.write(client.ws.send(Request(host="localhost", target="/")))
        while True:
            for event in await client.events():
                assert isinstance(event, AcceptConnection)
                return client

    async def events(self) -> list[object]:
        data = await self.reader.read(65536)
        assert data, "the server closed"
        self.ws.receive_data(data)
        return list(self.ws.events())

    async def texts(self) -> list[str]:
        texts = []
        for event in await self.events():
            assert isinstance(event, TextMessage)
            texts.append(event.data)
        return texts

    def send(self, text: str) -> None:
        self.writer.write(self.ws.send(TextMessage(data=text)))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):  # the server reset it first
            await self.writer.wait_closed()


def poller_of(server: driver.Server) -> Poller:
    poller = server._poller
    assert poller is not None, "the standard loop on Linux reads through the poller"
    return poller


def registered_fds(server: driver.Server) -> set[int]:
    """The descriptors in the poller's epoll, as the kernel lists them
    (``tfd:`` lines of the epoll's fdinfo)."""
    epoll_fd = poller_of(server)._epoll.fileno()
    with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
        return {int(line.split()[1]) for line in info if line.startswith("tfd:")}


def polled(server: driver.Server, conn: driver.Connection) -> _Polled:
    protocol = server._protocols[conn.wire]
    assert isinstance(protocol, _Polled)
    return protocol


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded by the test's timeout) until ``condition`` holds."""
    while not condition():
        await asyncio.sleep(0.005)


def run(test: Callable[[driver.Server], Awaitable[None]], handler: driver.Handler) -> None:
    async def main() -> None:
        async with driver.serve(handler, "127.0.0.1", 0, config=config()) as server:
            await asyncio.wait_for(test(server), TIMEOUT)

    asyncio.run(main())


async def echo(conn: driver.Connection) -> None:
    """A handler of the application's own (not the driver's built-in echo)."""
    async for message in conn:
        conn.send(message)


def test_a_plain_socket_is_read_by_the_poller_not_a_transport() -> None:
    """Accepted on the standard loop: no transport, the socket in the
    poller's epoll, and the messages answered from there."""

    async def test(server: driver.Server) -> None:
        assert server.socket_reader == "plain sockets read by one epoll poller"
        client = await Client.open(server.port)
        (conn,) = server.connections
        protocol = polled(server, conn)
        assert protocol.transport is None
        assert registered_fds(server) == {protocol.sock.fileno()}
        client.send("hello")
        assert await client.texts() == ["hello"]
        await client.close()

    run(test, echo)


async def flood(conn: driver.Connection) -> None:
    """On any message: FLOOD binary messages of 64 KiB at once."""
    async for _ in conn:
        for _ in range(FLOOD):
            conn.send(bytes(CHUNK), critical=True)


def test_a_backlog_is_counted_until_the_kernel_takes_it_then_sent_in_full() -> None:
    """A peer that does not read: what the kernel will not take stays in the
    driver, counted in write_buffer_size, the loop watching the socket for
    room; when the peer reads, every byte arrives in order, the count falls
    to 0 and the loop stops watching."""

    async def test(server: driver.Server) -> None:
        client = await Client.open(server.port)
        client.send("go")
        (conn,) = server.connections
        await until(lambda: conn.wire.write_buffer_size > 0)
        protocol = polled(server, conn)
        assert 0 < conn.wire.write_buffer_size < FLOOD * CHUNK
        assert conn.wire.write_buffer_size == len(protocol.out)
        assert protocol.writing
        received = 0
        while received < FLOOD * CHUNK:
            for event in await client.events():
                assert isinstance(event, BytesMessage)
                assert event.data == bytes(len(event.data))
                received += len(event.data)
        assert received == FLOOD * CHUNK
        await until(lambda: not protocol.writing)
        assert conn.wire.write_buffer_size == 0
        await client.close()

    run(test, flood)


def test_a_ping_to_a_peer_with_a_backlog_waits_behind_it() -> None:
    """The timer's ping lane writes to a polled socket the same way: while
    there is a backlog, a ping frame queues after it (counted), never
    ahead of the bytes already refused."""

    async def test(server: driver.Server) -> None:
        client = await Client.open(server.port)
        client.send("go")
        (conn,) = server.connections
        await until(lambda: conn.wire.write_buffer_size > 0)
        before = conn.wire.write_buffer_size
        server._write_ping(conn.wire, b"\x89\x00")
        assert conn.wire.write_buffer_size == before + 2
        assert polled(server, conn).out.endswith(b"\x89\x00")
        await client.close()

    run(test, flood)


def test_a_paused_reader_is_resumed_and_read_through_the_poller_again() -> None:
    """A handler that takes no message until let: the inbox fills, the wire
    pauses reading and the socket leaves the poller's epoll (the peer's
    bytes wait in the kernel); once the handler takes its messages the
    socket is back in the epoll, every message sent is answered in order,
    and so is one sent after."""
    letting = asyncio.Event()

    async def late_echo(conn: driver.Connection) -> None:
        await letting.wait()
        async for message in conn:
            conn.send(message)

    async def test(server: driver.Server) -> None:
        client = await Client.open(server.port)
        (conn,) = server.connections
        fd = polled(server, conn).sock.fileno()
        assert fd in registered_fds(server)
        sent = 0
        while not conn.wire.reading_paused:
            client.send(f"message {sent}")
            sent += 1
            await asyncio.sleep(0.005)
        assert fd not in registered_fds(server)
        client.send(f"message {sent}")  # read once the reader resumes
        sent += 1
        letting.set()
        answers: list[str] = []
        while len(answers) < sent:
            answers += await client.texts()
        assert answers == [f"message {n}" for n in range(sent)]
        assert fd in registered_fds(server)  # reading resumed
        client.send("after")
        assert await client.texts() == ["after"]
        await client.close()

    run(test, late_echo)


def test_connections_ending_every_way_at_once_leave_no_descriptor_in_the_poller() -> None:
    """50 connections end together while the poller reads: a third close
    their TCP, a third are terminated by the server (RST), a third close
    with a close frame. None stays in the epoll or the server's table, no
    descriptor is left, and new connections (on descriptor numbers the
    kernel hands out again) are read as if first."""

    async def test(server: driver.Server) -> None:
        fds = open_fds()
        clients = [await Client.open(server.port) for _ in range(CONNECTIONS)]
        await until(lambda: len(server.connections) == CONNECTIONS)
        assert len(registered_fds(server)) == CONNECTIONS
        conns = server.connections
        now = server.now()
        for n, (client, conn) in enumerate(zip(clients, conns, strict=True)):
            if n % 3 == 0:
                await client.close()
            elif n % 3 == 1:
                conn.wire.terminate(now, TerminationCause.SLOW_CONSUMER)
                server.flush(conn.wire)
            else:
                client.writer.write(client.ws.send(CloseConnection(code=1000)))
        await until(lambda: not server.connections and not server._protocols)
        for n, client in enumerate(clients):
            if n % 3:
                await client.close()
        assert all(conn.state is State.CLOSED for conn in conns)
        assert registered_fds(server) == set()
        assert poller_of(server).watched == 0
        assert open_fds() == fds
        for n in range(3):
            again = await Client.open(server.port)
            again.send(f"again {n}")
            assert await again.texts() == [f"again {n}"]
            await again.close()

    run(test, driver.echo_handler)


def test_closing_the_server_ends_every_polled_connection_and_the_poller() -> None:
    """``aclose`` while the poller holds two subscribed relay clients and
    one mid-handshake: each connection reaches CLOSED as
    ``server_stopped`` and its socket is closed; the poller's epoll is
    closed too, so every descriptor the server opened is gone."""

    async def main() -> None:
        fds = open_fds()
        server = await driver.serve(driver.relay_handler, "127.0.0.1", 0, config=config())
        clients = [await Client.open(server.port) for _ in range(2)]
        for client in clients:
            client.send('{"type":"subscribe","channel":"room"}')
            assert "subscribed" in str(await client.texts())
        half_open = await asyncio.open_connection("127.0.0.1", server.port)
        half_open[1].write(b"GET /chat HTTP/1.1\r\n")
        await until(lambda: len(server.hub.scheduler) == 3)
        assert server.hub.members("room")
        await server.aclose()
        await until(lambda: not server.connections)
        assert len(server.hub.scheduler) == 0
        assert server.hub.channel_sizes() == {}
        snapshot = server.hub.scheduler.metrics.snapshot()
        assert snapshot.closed_by_cause == {TerminationCause.SERVER_STOPPED: 3}
        for reader, writer in (*((c.reader, c.writer) for c in clients), half_open):
            with contextlib.suppress(ConnectionError):  # the RST of a termination
                while await reader.read(65536):
                    pass
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert poller_of(server)._epoll.closed
        assert open_fds() == fds

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_without_the_poller_a_plain_socket_keeps_its_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the poller is off (uvloop, no epoll): asyncio's server and a
    transport per connection, with the same answers."""
    monkeypatch.setattr(driver, "can_poll", lambda loop: False)

    async def test(server: driver.Server) -> None:
        assert server._poller is None
        assert server.socket_reader == "sockets read by asyncio transports"
        client = await Client.open(server.port)
        (conn,) = server.connections
        assert server._protocols[conn.wire].transport is not None
        client.send("hello")
        assert await client.texts() == ["hello"]
        await client.close()

    run(test, echo)


def test_a_peer_that_half_closes_during_a_backlog_is_read_no_more() -> None:
    """The peer's FIN arrives while the server still holds a backlog for
    it: the socket leaves the epoll at once (level-triggered EOF is not
    read again and again), and the connection still ends, leaving nothing
    registered."""

    async def test(server: driver.Server) -> None:
        client = await Client.open(server.port)
        client.send("go")
        (conn,) = server.connections
        await until(lambda: conn.wire.write_buffer_size > 0)
        protocol = polled(server, conn)
        client.writer.write_eof()
        await until(lambda: protocol.closing)
        assert protocol.polled == -1
        assert registered_fds(server) == set()
        with contextlib.suppress(ConnectionError):
            while await client.reader.read(65536):
                pass
        await until(lambda: not server.connections)
        assert conn.state is State.CLOSED
        assert registered_fds(server) == set()
        await client.close()

    run(test, flood)
