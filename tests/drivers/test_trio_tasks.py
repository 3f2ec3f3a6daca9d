"""What a connection costs the Trio driver in tasks, on real loopback
sockets: none for reading (the server's one poller reads every plain socket
it accepted), its handler's task if the application's handler runs it, and
nothing else while it is idle; a writer only while the kernel will not take
what the wire wrote, and ``write_buffer_size`` is what the kernel has not
taken. Where the poller is off (no epoll), a connection has a reader task
of its own instead."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from wslifecycle import Config, State, TerminationCause
from wslifecycle.drivers import trio as driver

CONNECTIONS = 50
FLOOD = 32  # messages of 64 KiB: far more than loopback buffers hold unread
CHUNK = 64 * 1024


def config() -> Config:
    return Config(allow_no_origin=True, heartbeat_interval=30.0, max_write_buffer=8 * FLOOD * CHUNK)


def task_count() -> int:
    """Every task of this Trio run (the caller's included)."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Client:
    """A wsproto client on a Trio socket stream, reading only when asked."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.stream.send_all(client.ws.send(Request(host="localhost", target="/")))
        while True:
            for event in await client.events():
                assert isinstance(event, AcceptConnection)
                return client

    async def events(self) -> list[object]:
        data = await self.stream.receive_some()
        assert data, "the server closed"
        self.ws.receive_data(bytes(data))
        return list(self.ws.events())

    async def send(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))


def registered_fds(server: driver.Server) -> set[int]:
    """The descriptors in the poller's epoll, as the kernel lists them
    (``tfd:`` lines of the epoll's fdinfo), the poller's eventfd left out."""
    poller = server._poller
    assert poller is not None
    epoll_fd = poller._epoll.fileno()
    with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
        fds = {int(line.split()[1]) for line in info if line.startswith("tfd:")}
    return fds - {poller._wake_fd}


def run(test: Callable[[driver.Server], Awaitable[None]], handler: driver.Handler) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server: driver.Server = await nursery.start(
                partial(driver.serve, handler, "127.0.0.1", 0, config=config())
            )
            with trio.fail_after(30):
                await test(server)
            server.begin_drain()

    trio.run(main)


async def echo(conn: driver.Connection) -> None:
    """A handler of the application's own (not the driver's built-in echo)."""
    async for message in conn:
        conn.send(message)


@pytest.mark.parametrize(
    ("handler", "per_connection"),
    [(echo, 1), (driver.echo_handler, 0), (driver.relay_handler, 0)],
    ids=["own-handler", "built-in-echo", "built-in-relay"],
)
def test_an_idle_connection_holds_its_handler_and_nothing_else(
    handler: driver.Handler, per_connection: int
) -> None:
    """50 idle connections add 1 task each, the application's handler (the
    old driver held five: serving, transport, reader, writer, handler, and
    two nurseries), and none with a built-in handler, which runs where the
    poller reads; once they close, tasks and descriptors are back where
    they were."""
    check_idle_connections(handler, per_connection)


@pytest.mark.parametrize(
    ("handler", "per_connection"),
    [(echo, 2), (driver.echo_handler, 1)],
    ids=["own-handler", "built-in-echo"],
)
def test_without_the_poller_a_connection_has_a_reader_task_of_its_own(
    handler: driver.Handler, per_connection: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where epoll is missing: the reader's task per connection, plus the
    application's handler; the same clean end."""
    monkeypatch.setattr(driver, "_CAN_POLL", False)
    check_idle_connections(handler, per_connection)


def check_idle_connections(handler: driver.Handler, per_connection: int) -> None:
    async def test(server: driver.Server) -> None:
        await trio.testing.wait_all_tasks_blocked()
        tasks, fds = task_count(), open_fds()
        clients = [await Client.open(server.port) for _ in range(CONNECTIONS)]
        await trio.testing.wait_all_tasks_blocked()
        assert len(server.connections) == CONNECTIONS
        assert task_count() - tasks == per_connection * CONNECTIONS
        await clients[0].send("still answered")
        assert [event.data for event in await clients[0].events()] == [  # type: ignore[attr-defined]
            "still answered"
        ]
        for client in clients:
            await client.stream.aclose()
        while server.connections:
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert task_count() == tasks
        assert open_fds() == fds

    run(test, handler)


async def flood(conn: driver.Connection) -> None:
    """On any message: 32 binary messages of 64 KiB at once."""
    async for _ in conn:
        for _ in range(FLOOD):
            conn.send(bytes(CHUNK), critical=True)


def test_a_backlog_is_counted_until_the_kernel_takes_it_then_sent_in_full() -> None:
    """A peer that does not read: what the kernel will not take stays in the
    driver, counted in write_buffer_size, with one writer task waiting for
    the socket; when the peer reads, every byte arrives in order, the
    count falls to 0 and the writer task ends."""

    async def test(server: driver.Server) -> None:
        client = await Client.open(server.port)
        await trio.testing.wait_all_tasks_blocked()
        idle = task_count()
        await client.send("go")
        (conn,) = server.connections
        while conn.wire.write_buffer_size == 0:
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert 0 < conn.wire.write_buffer_size < FLOOD * CHUNK
        assert task_count() == idle + 1  # the writer, while the backlog lasts
        received = 0
        while received < FLOOD * CHUNK:
            for event in await client.events():
                assert isinstance(event, BytesMessage)
                assert event.data == bytes(len(event.data))
                received += len(event.data)
        assert received == FLOOD * CHUNK
        await trio.testing.wait_all_tasks_blocked()
        assert conn.wire.write_buffer_size == 0
        assert task_count() == idle
        await client.stream.aclose()

    run(test, flood)


async def read_to_the_end(client: Client) -> None:
    while True:
        await client.events()


async def never_reads(conn: driver.Connection) -> None:
    await conn.wait_closed()


def test_a_reader_paused_by_a_full_inbox_ends_when_its_connection_is_terminated() -> None:
    """A handler that never takes a message: the inbox fills, the wire
    pauses reading, and the reader waits on that, not on the socket. A
    termination (RST) then still ends the reader: the connection is gone,
    and so are its tasks and its descriptor."""

    async def test(server: driver.Server) -> None:
        await trio.testing.wait_all_tasks_blocked()
        tasks, fds = task_count(), open_fds()
        client = await Client.open(server.port)
        (conn,) = server.connections
        while not conn.wire.reading_paused:
            await client.send("unread")
            await trio.testing.wait_all_tasks_blocked()
        conn.wire.terminate(trio.current_time(), TerminationCause.SLOW_CONSUMER)
        server.flush(conn.wire)
        with pytest.raises(trio.BrokenResourceError):  # the RST
            await read_to_the_end(client)
        await client.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == []
        assert conn.state is State.CLOSED
        assert task_count() == tasks
        assert open_fds() == fds

    run(test, never_reads)


def test_a_paused_reader_is_resumed_and_read_through_the_poller_again() -> None:
    """A handler that takes no message until let: the inbox fills, the wire
    pauses reading and the socket leaves the poller's epoll (the peer's
    bytes wait in the kernel); once the handler takes its messages the
    socket is back in the epoll, every message sent is answered in order,
    and so is one sent after."""
    letting = trio.Event()

    async def late_echo(conn: driver.Connection) -> None:
        await letting.wait()
        async for message in conn:
            conn.send(message)

    async def test(server: driver.Server) -> None:
        client = await Client.open(server.port)
        (conn,) = server.connections
        fd = server._transports[conn.wire].polled
        assert fd in registered_fds(server)
        sent = 0
        while not conn.wire.reading_paused:
            await client.send(f"message {sent}")
            sent += 1
            await trio.testing.wait_all_tasks_blocked()
        assert fd not in registered_fds(server)
        await client.send(f"message {sent}")  # read once the reader resumes
        sent += 1
        letting.set()
        answers: list[object] = []
        while len(answers) < sent:
            answers += [event.data for event in await client.events()]  # type: ignore[attr-defined]
        assert answers == [f"message {n}" for n in range(sent)]
        assert fd in registered_fds(server)  # reading resumed
        await client.send("after")
        assert [event.data for event in await client.events()] == ["after"]  # type: ignore[attr-defined]
        await client.stream.aclose()

    run(test, late_echo)


def test_connections_ending_every_way_at_once_leave_no_descriptor_in_the_poller() -> None:
    """50 connections end together while the poller reads: a third close
    their TCP, a third are terminated by the server (RST), a third close
    with a close frame. None stays in the epoll or the server's table, no
    task or descriptor is left, and new connections (on descriptor numbers
    the kernel hands out again) are read as if first."""

    async def test(server: driver.Server) -> None:
        await trio.testing.wait_all_tasks_blocked()
        tasks, fds = task_count(), open_fds()
        clients = [await Client.open(server.port) for _ in range(CONNECTIONS)]
        await trio.testing.wait_all_tasks_blocked()
        assert len(registered_fds(server)) == CONNECTIONS
        conns = server.connections
        now = trio.current_time()
        for n, (client, conn) in enumerate(zip(clients, conns, strict=True)):
            if n % 3 == 0:
                await client.stream.aclose()
            elif n % 3 == 1:
                conn.wire.terminate(now, TerminationCause.SLOW_CONSUMER)
                server.flush(conn.wire)
            else:
                await client.stream.send_all(client.ws.send(CloseConnection(code=1000)))
        while server.connections:
            await trio.sleep(0.01)
        for n, client in enumerate(clients):
            if n % 3:
                await client.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert registered_fds(server) == set()
        assert server._poller is not None
        assert server._poller._by_fd == {}
        assert task_count() == tasks
        assert open_fds() == fds
        again = [await Client.open(server.port) for _ in range(3)]
        for n, client in enumerate(again):
            await client.send(f"again {n}")
            assert [event.data for event in await client.events()] == [f"again {n}"]  # type: ignore[attr-defined]
            await client.stream.aclose()

    run(test, driver.echo_handler)


async def read_until_closed(stream: trio.SocketStream) -> None:
    while await stream.receive_some():
        pass


def test_cancelling_the_server_ends_every_polled_connection_and_the_poller() -> None:
    """The server's nursery cancelled while the poller holds two subscribed
    relay clients and one mid-handshake: each connection reaches CLOSED as
    ``server_stopped``, its channels released and its socket closed; the
    poller's epoll and eventfd are closed too, so every descriptor the
    server opened is gone."""

    async def main() -> None:
        fds = open_fds()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                server: driver.Server = await nursery.start(
                    partial(driver.serve, driver.relay_handler, "127.0.0.1", 0, config=config())
                )
                clients = [await Client.open(server.port) for _ in range(2)]
                for client in clients:
                    await client.send('{"type":"subscribe","channel":"room"}')
                    assert "subscribed" in str(await client.events())
                half_open = await trio.open_tcp_stream("127.0.0.1", server.port)
                await half_open.send_all(b"GET /chat HTTP/1.1\r\n")
                while len(server.hub.scheduler) < 3:
                    await trio.sleep(0.01)
                assert server.hub.members("room")
                scope.cancel()
        assert server.connections == []
        assert len(server.hub.scheduler) == 0
        assert server.hub.channel_sizes() == {}
        snapshot = server.hub.scheduler.metrics.snapshot()
        assert snapshot.closed_by_cause == {TerminationCause.SERVER_STOPPED: 3}
        for stream in (*(client.stream for client in clients), half_open):
            with pytest.raises(trio.BrokenResourceError):  # the RST of a termination
                await read_until_closed(stream)
            await stream.aclose()
        assert open_fds() == fds

    trio.run(main)
