"""The Trio driver: structured concurrency around the sans-IO hub.

    async def handler(conn: Connection) -> None:
        async for message in conn:
            conn.send(message)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, handler, "127.0.0.1", 8765)
        ...
        server.begin_drain()            # serve() returns once drained

Tasks, and why there are no others:

* ONE ticker task for every connection. It sleeps until the hub's next
  deadline inside a cancel scope; when an earlier deadline appears (a new
  connection, a close) the scope's ``deadline`` is moved earlier, never
  cancelled and re-created, and never touched per message. A fire that finds
  nothing due (the deadline moved later) just re-arms.
* Per connection: a reader (``receive_some`` → ``wire.receive_data(data,
  now)`` → flush), a writer woken when the wire has output (so a slow socket
  blocks only its own writer, never the ticker or a fan-out), and the
  handler. No per-connection timer or liveness task.

Decisions, in the order a connection meets them:

* ``now`` is ``trio.current_time()``, so the whole server runs on
  ``trio.testing.MockClock``; :func:`serve_listeners` takes any
  ``trio.abc.Listener`` and :func:`serve_stream` any ``trio.abc.Stream``
  (``memory_stream_pair`` in tests).
* ``send`` never blocks: bytes go to the connection's buffer and its writer
  sends them; the buffer's size (plus what is in flight) is the wire's
  ``write_buffer_size``, which feeds the core's write-buffer guard.
* Inbound backpressure: with ``QUEUE_HIGH_WATER`` messages queued for the
  handler the reader stops and ``lifecycle.reading_paused`` is set (unread
  pongs blame nobody); it resumes at ``QUEUE_LOW_WATER``. Only while ACTIVE:
  a closing connection must read the peer's close frame.
* ``Terminate`` = RST: SO_LINGER 0 on a ``SocketStream``'s socket, cancel the
  reader and writer, close. ``CloseTransport`` = close once the buffer is
  written; the hub bounds that last write (``Hub.closing``): a connection
  still flushing after ``close_timeout`` is dropped.
* Cancellation always reaches CLOSED: a connection whose tasks are cancelled
  (the server's nursery was) is terminated in the lifecycle (cause
  ``server_stopped``: the server went away undrained), so metrics and the broker stay
  consistent, and its stream is closed in a ``finally``.
* A handler that raises is logged with its traceback and the connection is
  closed with 1011; one that returns while ACTIVE closes it with 1000. A
  handler still running when its connection has closed keeps running (its
  iteration has ended, ``send`` raises); once the server is drained,
  :func:`serve` cancels whatever is left and returns.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import trio

from wslifecycle import Config, ConnectionClosed, Entropy, State, TerminationCause
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

__all__ = [
    "Connection",
    "Handler",
    "Server",
    "echo_handler",
    "relay_handler",
    "serve",
    "serve_listeners",
    "serve_stream",
]

Handler = Callable[["Connection"], Awaitable[None]]

#: Messages queued for a handler before reading from its socket pauses.
QUEUE_HIGH_WATER = 64
QUEUE_LOW_WATER = 16
#: Bytes asked of the stream per read.
RECEIVE_SIZE = 65536

_LINGER_ZERO = struct.pack("ii", 1, 0)


class Connection(ConnectionBase):
    """A WebSocket connection as a handler sees it.

    ``send`` never blocks: above the write-buffer guard a non-critical send is
    skipped and returns None. Iteration ends when the connection closes; after
    that ``send`` raises :class:`~wslifecycle.ConnectionClosed`.
    """

    __slots__ = (
        "_aborting",
        "_closed",
        "_closing",
        "_in_flight",
        "_message_arrived",
        "_messages",
        "_nursery",
        "_out",
        "_paused",
        "_reading_resumed",
        "_server",
        "_stream",
        "_transport_scope",
        "_writer_wakeup",
    )

    def __init__(self, server: Server, wire: ServerConnection, stream: trio.abc.Stream) -> None:
        self._server = server
        self.wire = wire
        self._stream = stream
        self._out = bytearray()  # written by the wire, not yet sent
        self._in_flight = 0  # bytes inside the current send_all
        self._closing = False  # CloseTransport: close once _out is sent
        self._aborting = False  # Terminate: drop now
        self._writer_wakeup = trio.Event()
        self._transport_scope = trio.CancelScope()  # the reader and the writer
        self._nursery: trio.Nursery | None = None  # the transport and the handler
        self._messages: deque[str | bytes] = deque()
        self._message_arrived = trio.Event()
        self._closed = trio.Event()
        self._paused = False
        self._reading_resumed = trio.Event()

    # ------------------------------------------------------------ handler API

    def send(self, data: str | bytes, *, critical: bool = False) -> int | None:
        """Send a message; its sequence number, or None if skipped (slow peer)."""
        seq = self.wire.send(data, trio.current_time(), critical=critical)
        self._server.flush(self)
        return seq

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and wait until the connection is CLOSED."""
        if self.state is not State.CLOSED:
            self.wire.close(trio.current_time(), code, reason)
            self._server.flush(self)
        await self._closed.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()

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
            if self._closed.is_set() or self.state is not State.ACTIVE:
                raise StopAsyncIteration
            self._message_arrived = trio.Event()
            await self._message_arrived.wait()
        message = self._messages.popleft()
        if self._paused and len(self._messages) <= QUEUE_LOW_WATER:
            self._resume_reading()
        return message

    # -------------------------------------------------------------- internals

    def _deliver(self, data: str | bytes) -> None:
        self._messages.append(data)
        self._message_arrived.set()
        if (
            not self._paused
            and len(self._messages) >= QUEUE_HIGH_WATER
            and self.state is State.ACTIVE
        ):
            # The handler is behind: stop reading. The lifecycle is told, so
            # pongs that cannot be read meanwhile count against nobody.
            self._paused = True
            self.wire.lifecycle.reading_paused = True

    def _resume_reading(self) -> None:
        self._paused = False
        self.wire.lifecycle.reading_paused = False
        self._reading_resumed.set()


class _Ops:
    """How the driver carries out a wire's events on a Trio stream."""

    __slots__ = ("conn", "server")

    def __init__(self, server: Server, conn: Connection) -> None:
        self.server = server
        self.conn = conn

    def write(self, data: bytes) -> None:
        conn = self.conn
        if not conn._aborting:
            conn._out += data
            conn._writer_wakeup.set()

    def close(self) -> None:
        conn = self.conn
        conn._closing = True
        conn._writer_wakeup.set()
        # The last write may not hang on a peer that stopped reading: the hub
        # hands the connection back after close_timeout if it is still open.
        self.server.hub.closing(conn.wire, trio.current_time())

    def abort(self) -> None:
        conn = self.conn
        conn._aborting = True
        conn._out.clear()
        _linger_zero(conn._stream)  # close() now sends RST, not FIN
        conn._transport_scope.cancel()

    def accepted(self) -> None:
        nursery = self.conn._nursery
        assert nursery is not None
        nursery.start_soon(self.server._run_handler, self.conn)

    def deliver(self, data: str | bytes) -> None:
        self.conn._deliver(data)

    def resume_reading(self) -> None:
        if self.conn._paused:
            self.conn._resume_reading()  # read the peer's close frame

    def closed(self) -> None:
        conn = self.conn
        conn._closed.set()
        conn._message_arrived.set()


def _linger_zero(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.SocketStream):
        # Already closed or reset: nothing left to abort.
        with contextlib.suppress(OSError):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


class Server:
    """A running Trio server: the hub, its connections, the one ticker."""

    def __init__(
        self,
        handler: Handler,
        config: Config,
        *,
        entropy: Entropy | None = None,
        broker: Broker[ServerConnection] | None = None,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    ) -> None:
        self._handler = handler
        self.hub = driver_hub(config, entropy, broker)
        self.listeners = list(listeners)
        self._connections: dict[Connection, _Ops] = {}
        self._timer: trio.CancelScope | None = None
        self._drained = trio.Event()

    # ----------------------------------------------------------------- control

    @property
    def port(self) -> int:
        """The port of the first TCP listener (useful with port 0)."""
        for listener in self.listeners:
            if isinstance(listener, trio.SocketListener):
                port: int = listener.socket.getsockname()[1]
                return port
        raise RuntimeError("this server has no TCP listener")

    @property
    def connections(self) -> list[Connection]:
        """Connections whose stream is not yet closed."""
        return list(self._connections)

    def begin_drain(self) -> None:
        """SIGTERM: new handshakes get 503, connections close with 1001, and
        what is left at the drain deadline is terminated. :func:`serve`
        returns once every connection is closed."""
        if self.hub.draining:
            return
        log.info("drain begins connections=%d", len(self._connections))
        for wire in self.hub.begin_drain(trio.current_time()):
            self.flush(wire.context)
        self._check_drained()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel``; how many got it."""
        receivers = publish(self.hub, channel, data, trio.current_time())
        for wire in receivers:
            self.flush(wire.context)
        return len(receivers)

    # ---------------------------------------------------------------- events

    def flush(self, conn: Connection) -> None:
        """Hand a wire's output to its writer and act on its events; keep the
        ticker's deadline at the hub's earliest."""
        ops = self._connections.get(conn)
        if ops is None:
            return  # its stream is closed: nothing more to write or deliver
        wire = conn.wire
        drain_wire(wire, ops)
        wire.write_buffer_size = len(conn._out) + conn._in_flight
        self._arm()

    def _arm(self) -> None:
        """Move the ticker's deadline earlier if the hub's moved earlier."""
        timer = self._timer
        if timer is None:
            return  # the ticker is ticking: it re-reads the deadline next
        deadline = self.hub.next_deadline()
        if deadline is not None and deadline < timer.deadline:
            timer.deadline = deadline

    async def _tick_forever(self) -> None:
        """The one timer of every connection (DESIGN §3)."""
        hub = self.hub
        while True:
            deadline = hub.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            for wire in hub.tick(now, TICK_BATCH):
                self.flush(wire.context)
            for alert in hub.take_alerts():
                log_alert(alert)
            for wire in hub.expired_closes(now):
                if wire.context in self._connections:  # still flushing: drop it
                    _Ops(self, wire.context).abort()
            self._check_drained()

    def _check_drained(self) -> None:
        if self.hub.drained and not self._connections:
            self._drained.set()

    # ------------------------------------------------------------ connections

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        conn = Connection(self, self.hub.open(trio.current_time()), stream)
        conn.wire.context = conn
        self._connections[conn] = _Ops(self, conn)
        self._arm()
        async with trio.open_nursery() as nursery:
            conn._nursery = nursery
            nursery.start_soon(self._run_transport, conn)

    async def _run_transport(self, conn: Connection) -> None:
        try:
            with conn._transport_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, conn)
                    nursery.start_soon(self._write, conn)
        finally:
            self._end(conn)
            try:
                await trio.aclose_forcefully(conn._stream)
            finally:  # under cancellation, the await above raises
                self._connections.pop(conn, None)
                self._check_drained()

    def _end(self, conn: Connection) -> None:
        """The transport is finishing: the lifecycle must be CLOSED. Only a
        cancellation (or a bug) gets here with it still open."""
        wire = conn.wire
        if wire.lifecycle.state is not State.CLOSED:
            wire.lifecycle.terminate(trio.current_time(), TerminationCause.SERVER_STOPPED)
            wire.pump(trio.current_time())
            self.flush(conn)

    async def _read(self, conn: Connection) -> None:
        wire = conn.wire
        stream = conn._stream
        while not wire.ended:
            while conn._paused:
                conn._reading_resumed = trio.Event()
                await conn._reading_resumed.wait()
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._lost(conn, error)
                return
            if data:
                wire.receive_data(bytes(data), trio.current_time())  # bytes: no copy
            else:
                wire.receive_eof(trio.current_time())
            self.flush(conn)

    async def _write(self, conn: Connection) -> None:
        wire = conn.wire
        stream = conn._stream
        while True:
            if conn._out:
                data = bytes(conn._out)
                conn._out.clear()
                conn._in_flight = len(data)
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    self._lost(conn, error)
                    return
                finally:
                    conn._in_flight = 0
                    wire.write_buffer_size = len(conn._out)
            elif conn._closing:
                conn._transport_scope.cancel()  # written: stop reading, close
                return
            else:
                conn._writer_wakeup = trio.Event()
                await conn._writer_wakeup.wait()

    def _lost(self, conn: Connection, error: Exception) -> None:
        """The stream failed under us (reset, broken pipe)."""
        wire = conn.wire
        now = trio.current_time()
        if not wire.ended:
            wire.lifecycle.transport_lost(now, f"{type(error).__name__}: {error}")
        wire.receive_eof(now)
        self.flush(conn)
        conn._transport_scope.cancel()

    async def _run_handler(self, conn: Connection) -> None:
        try:
            await self._handler(conn)
        except ConnectionClosed:
            pass  # the connection ended under the handler: nothing to report
        except Exception as error:
            log.exception("handler failed connection=%s", conn.id)
            if conn.state is not State.CLOSED:
                now = trio.current_time()
                conn.wire.lifecycle.handler_failed(now, f"{type(error).__name__}: {error}")
                conn.wire.pump(now)
                self.flush(conn)
            return
        if conn.state is State.ACTIVE:
            conn.wire.close(trio.current_time(), 1000, "")
            self.flush(conn)


async def serve_stream(server: Server, stream: trio.abc.Stream) -> None:
    """Serve one accepted stream (any ``trio.abc.Stream``) on ``server`` until
    its connection has ended and its handler returned; the stream is closed."""
    await server._serve_stream(stream)


async def serve_listeners(
    handler: Handler,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    *,
    config: Config | None = None,
    entropy: Entropy | None = None,
    broker: Broker[ServerConnection] | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``listeners`` (possibly none: feed it with
    :func:`serve_stream`) until drained. With ``nursery.start`` it returns the
    :class:`Server` once listening."""
    server = Server(
        handler, config or Config(), entropy=entropy, broker=broker, listeners=listeners
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._tick_forever)
        if listeners:
            await nursery.start(
                partial(
                    trio.serve_listeners,
                    partial(serve_stream, server),
                    list(listeners),
                    handler_nursery=nursery,
                )
            )
        task_status.started(server)
        await server._drained.wait()
        nursery.cancel_scope.cancel()  # stop listening, the ticker, lingering handlers


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    config: Config | None = None,
    entropy: Entropy | None = None,
    broker: Broker[ServerConnection] | None = None,
    backlog: int = 1024,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` until drained; start it with
    ``server = await nursery.start(serve, handler, host, port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    await serve_listeners(
        handler, listeners, config=config, entropy=entropy, broker=broker, task_status=task_status
    )


async def relay_handler(conn: Connection) -> None:
    """The handler of ``wslifecycle serve``: the JSON pub/sub relay."""
    server = conn._server
    async for message in conn:
        for wire in handle_relay_message(server.hub, conn.wire, message, trio.current_time()):
            server.flush(wire.context)
        server.flush(conn)


async def echo_handler(conn: Connection) -> None:
    """Echo every message back (the mode the Autobahn cases run against)."""
    async for message in conn:
        conn.send(message, critical=True)
