"""The asyncio driver: protocol callbacks around the sans-IO hub.

Per socket: ``data_received`` → ``wire.receive_data(data, now)`` → write
``data_to_send()`` → act on the events. For all sockets: ONE ``loop.call_at``
timer for the hub's earliest deadline, re-armed only when that deadline moves
earlier (a new connection, a close) — never per message, never per
connection. Handlers are tasks, one per accepted connection:

    async def handler(conn: Connection) -> None:
        async for message in conn:
            conn.send(message)

    server = await serve(handler, "127.0.0.1", 8765, config=Config(...))
    await server.serve_forever()        # until SIGTERM/SIGINT drains it
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from wslifecycle import Config, ConnectionClosed, Entropy, State
from wslifecycle.broker import Broker
from wslifecycle.relay import handle_relay_message, publish
from wslifecycle.wire import ServerConnection

from ._common import (
    TICK_BATCH,
    ConnectionBase,
    drain_wire,
    driver_hub,
    log,
    log_alert,
)

__all__ = ["Connection", "Handler", "Server", "serve"]

Handler = Callable[["Connection"], Awaitable[None]]

#: Messages queued for a handler before reading from its socket pauses.
QUEUE_HIGH_WATER = 64
QUEUE_LOW_WATER = 16


class Connection(ConnectionBase):
    """A WebSocket connection as a handler sees it.

    ``send`` never blocks: above the write-buffer guard a non-critical send is
    skipped and returns None. Iteration ends when the connection closes; after
    that ``send`` raises :class:`~wslifecycle.ConnectionClosed`.
    """

    __slots__ = (
        "_closed",
        "_closed_waiter",
        "_handler_task",
        "_messages",
        "_paused",
        "_server",
        "_transport",
        "_waiter",
    )

    def __init__(self, server: Server, wire: ServerConnection) -> None:
        self._server = server
        self.wire = wire
        self._transport: asyncio.Transport | None = None
        # Made on first use: an idle connection holds no queue and no future.
        self._messages: deque[str | bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._closed_waiter: asyncio.Future[None] | None = None
        self._handler_task: asyncio.Task[None] | None = None
        self._paused = False

    # ------------------------------------------------------------ handler API

    def send(self, data: str | bytes, *, critical: bool = False) -> int | None:
        """Send a message; its sequence number, or None if skipped (slow peer)."""
        seq = self.wire.send(data, self._server.now(), critical=critical)
        self._server.flush(self)
        return seq

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and wait until the connection is CLOSED."""
        if self.state is not State.CLOSED:
            self.wire.close(self._server.now(), code, reason)
            self._server.flush(self)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the connection is CLOSED."""
        if self._closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)

    def subscribe(self, channel: str) -> None:
        self._server.hub.subscribe(self.wire, channel)

    def unsubscribe(self, channel: str) -> None:
        self._server.hub.unsubscribe(self.wire, channel)

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel``; how many got it."""
        return self._server.publish(channel, data)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self

    async def __anext__(self) -> str | bytes:
        while not self._messages:
            if self._closed or self.state is not State.ACTIVE:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        messages = self._messages
        message = messages.popleft()
        if self._paused and len(messages) <= QUEUE_LOW_WATER:
            self._resume_reading()
        return message

    # -------------------------------------------------------------- internals

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deliver(self, data: str | bytes) -> None:
        messages = self._messages
        if messages is None:
            self._messages = messages = deque()
        messages.append(data)
        self._wake()
        if not self._paused and len(messages) >= QUEUE_HIGH_WATER and self.state is State.ACTIVE:
            # The handler is behind: stop reading. The lifecycle is told, so
            # pongs that cannot be read meanwhile count against nobody.
            self._paused = True
            self.wire.lifecycle.reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        self._paused = False
        self.wire.lifecycle.reading_paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()


#: One receive buffer for every connection: asyncio reads into it and calls
#: ``buffer_updated`` at once, so reads never interleave. (Plain
#: ``data_received`` would allocate, then shrink, a 256 KiB bytes object for
#: every read, an 8-byte pong included: the costliest step of a heartbeat.)
_RECEIVE = memoryview(bytearray(65536))


class _Protocol(asyncio.BufferedProtocol):
    """The transport side of one connection; all logic is in the wire."""

    __slots__ = ("conn", "server", "transport")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not
        # asyncio.Transport subclasses, but have the same methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.conn = self.server._accept(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVE

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        assert conn is not None
        conn.wire.receive_data(_RECEIVE[:nbytes].tobytes(), self.server.now())
        self.server.flush(conn)

    def eof_received(self) -> bool:
        conn = self.conn
        assert conn is not None
        conn.wire.receive_eof(self.server.now())
        self.server.flush(conn)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn is None:  # pragma: no cover - connection_made always ran
            return
        conn.wire.receive_eof(self.server.now())
        conn._transport = None
        self.server.flush(conn)
        self.server._forget(conn)


class _Ops:
    """How the driver carries out a wire's events on an asyncio transport."""

    __slots__ = ("conn", "server")

    def __init__(self, server: Server, conn: Connection) -> None:
        self.server = server
        self.conn = conn

    def write(self, data: bytes) -> None:
        transport = self.conn._transport
        if transport is not None:
            transport.write(data)

    def close(self) -> None:
        transport = self.conn._transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():  # a peer that stopped reading: bounded
                self.server.hub.closing(self.conn.wire, self.server.now())

    def abort(self) -> None:
        _reset(self.conn._transport)

    def accepted(self) -> None:
        self.server._start_handler(self.conn)

    def deliver(self, data: str | bytes) -> None:
        self.conn._deliver(data)

    def resume_reading(self) -> None:
        if self.conn._paused:
            self.conn._resume_reading()

    def closed(self) -> None:
        conn = self.conn
        conn._closed = True
        waiter = conn._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        conn._wake()


class Server:
    """A running asyncio server: the hub, the listening sockets, the timer."""

    def __init__(
        self,
        handler: Handler,
        config: Config,
        *,
        entropy: Entropy | None = None,
        broker: Broker[ServerConnection] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self.hub = driver_hub(config, entropy, broker)
        self._connections: dict[Connection, _Ops] = {}
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._armed_changes = -1
        self._drained = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- control

    def now(self) -> float:
        return self._loop.time()

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> None:
        self._server = await self._loop.create_server(
            lambda: _Protocol(self), host, port, backlog=backlog, reuse_address=True
        )

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful with port 0)."""
        port: int = self.sockets[0].getsockname()[1]
        return port

    def begin_drain(self) -> None:
        """SIGTERM: new handshakes get 503, connections close with 1001, and
        what is left at the drain deadline is terminated."""
        if self.hub.draining:
            return
        log.info("drain begins connections=%d", len(self._connections))
        for wire in self.hub.begin_drain(self.now()):
            self.flush(wire.context)
        self._arm()
        self._check_drained()

    async def serve_forever(self) -> None:
        """Serve until a drain finishes, then stop listening and return."""
        await self._drained.wait()
        await self.aclose()

    async def drain(self) -> None:
        """Drain now and wait until it is finished."""
        self.begin_drain()
        await self.serve_forever()

    async def aclose(self) -> None:
        """Stop listening; cancel handlers still running; release the timer."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._connections):
            _reset(conn._transport)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.hub.draining:
            self.begin_drain()
        await self._drained.wait()
        await self.aclose()

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel``; how many got it."""
        receivers = publish(self.hub, channel, data, self.now())
        for wire in receivers:
            self.flush(wire.context)
        return len(receivers)

    # ---------------------------------------------------------------- events

    def flush(self, conn: Connection, *, arm: bool = True) -> None:
        """Write a wire's output and act on its events; keep the timer armed
        (``arm=False``: the caller re-arms once, after a batch)."""
        ops = self._connections.get(conn)
        if ops is None:
            return
        wire = conn.wire
        drain_wire(wire, ops)
        transport = conn._transport
        if transport is not None:
            wire.write_buffer_size = transport.get_write_buffer_size()
        if arm:
            self._arm()

    def _accept(self, transport: asyncio.Transport) -> Connection:
        wire = self.hub.open(self.now())
        conn = Connection(self, wire)
        conn._transport = transport
        wire.context = conn
        self._connections[conn] = _Ops(self, conn)
        self._arm()
        return conn

    def _forget(self, conn: Connection) -> None:
        self._connections.pop(conn, None)
        self._check_drained()

    def _start_handler(self, conn: Connection) -> None:
        task = self._loop.create_task(self._run_handler(conn))
        conn._handler_task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, conn: Connection) -> None:
        try:
            await self._handler(conn)
        except ConnectionClosed:
            pass  # the connection ended under the handler: nothing to report
        except Exception as error:
            log.exception("handler failed connection=%s", conn.id)
            if conn.state is not State.CLOSED:
                conn.wire.lifecycle.handler_failed(self.now(), f"{type(error).__name__}: {error}")
                conn.wire.pump(self.now())
                self.flush(conn)
            return
        if conn.state is State.ACTIVE:
            conn.wire.close(self.now(), 1000, "")
            self.flush(conn)

    # ----------------------------------------------------------------- timer

    def _arm(self) -> None:
        """Keep ONE timer at the hub's earliest deadline; move it only earlier."""
        changes = self.hub.changes
        if changes == self._armed_changes and self._timer is not None:
            return  # no deadline moved since the timer was armed
        self._armed_changes = changes
        deadline = self.hub.next_deadline()
        if deadline is None:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return  # armed early enough; a spurious early fire just re-arms
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        hub = self.hub
        now = self.now()
        for wire in hub.tick(now, TICK_BATCH):
            self.flush(wire.context, arm=False)
        for alert in hub.take_alerts():
            log_alert(alert)
        for wire in hub.expired_closes(now):
            _reset(wire.context._transport)  # still flushing after close_timeout
        self._arm()
        self._check_drained()

    def _check_drained(self) -> None:
        if self.hub.draining and self.hub.drained and not self._connections:
            self._drained.set()


def _reset(transport: asyncio.Transport | None) -> None:
    """Drop a connection now: SO_LINGER 0 makes the close an RST, not a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    config: Config | None = None,
    entropy: Entropy | None = None,
    broker: Broker[ServerConnection] | None = None,
    **options: Any,
) -> Server:
    """Start serving ``handler`` on ``host:port``; returns the running server."""
    server = Server(handler, config or Config(), entropy=entropy, broker=broker)
    await server.start(host, port, **options)
    return server


async def relay_handler(conn: Connection) -> None:
    """The handler of ``wslifecycle serve``: the JSON pub/sub relay."""
    server = conn._server
    async for message in conn:
        for wire in handle_relay_message(server.hub, conn.wire, message, server.now()):
            server.flush(wire.context)
        server.flush(conn)


async def echo_handler(conn: Connection) -> None:
    """Echo every message back (the mode the Autobahn cases run against)."""
    async for message in conn:
        conn.send(message, critical=True)
