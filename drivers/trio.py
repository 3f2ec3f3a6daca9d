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
  wake-up inside a cancel scope; when an earlier one appears (a new
  connection, a close) the scope's ``deadline`` is moved earlier, never
  cancelled and re-created, and never touched per message.
* Per connection: a reader (``receive_some`` → ``wire.receive_data(data,
  now)`` → flush), a writer woken when the wire has output (so a slow socket
  blocks only its own writer, never the ticker or a fan-out), and the
  handler. No per-connection timer or liveness task.

``now`` is ``trio.current_time()``, so the whole server runs on
``trio.testing.MockClock``; :func:`serve_listeners` takes any
``trio.abc.Listener`` and :func:`serve_stream` any ``trio.abc.Stream``
(``memory_stream_pair`` in tests). ``send`` never blocks: bytes go to the
connection's buffer and its writer sends them; the buffer's size (plus what
is in flight) is the wire's ``write_buffer_size``. While the wire says
``reading_paused`` the reader waits. ``Terminate`` = RST (SO_LINGER 0 on a
``SocketStream``'s socket, the reader and writer cancelled); a graceful close
is bounded by the hub (``Hub.closing``). Cancellation always reaches CLOSED:
a connection whose tasks are cancelled is terminated in the core (cause
``server_stopped``) and its stream closed in a ``finally``; once the server
is drained, :func:`serve` cancels whatever handler is left and returns.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Unpack

try:
    import trio
except ImportError as missing:  # an optional dependency: say which extra brings it
    raise ImportError(
        "wslifecycle.drivers.trio needs trio: pip install 'wslifecycle[trio]'", name=missing.name
    ) from missing

from wslifecycle import TerminationCause
from wslifecycle.hub import Hub
from wslifecycle.wire import ServerConnection

from ._common import HubOptions, ServerBase, carry_out, driver_hub, reset_socket
from ._coroutine import AsyncConnection, echo_handler, relay_handler, run_handler

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

#: Bytes asked of the stream per read.
RECEIVE_SIZE = 65536


class Connection(AsyncConnection):
    """A WebSocket connection as a handler sees it (see :class:`AsyncConnection`)."""

    __slots__ = ("_arrived", "_closed", "_stream")

    def __init__(self, server: Server, wire: ServerConnection, stream: trio.abc.Stream) -> None:
        super().__init__(server, wire)
        self._stream = stream
        self._arrived = trio.Event()
        self._closed = trio.Event()

    async def _arrival(self) -> None:
        self._arrived = trio.Event()
        await self._arrived.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _Transport:
    """The stream side of one connection, and the transport operations that
    carry out its wire's output."""

    __slots__ = (
        "aborting",
        "closing",
        "conn",
        "in_flight",
        "nursery",
        "out",
        "reading",
        "scope",
        "server",
        "stream",
        "wire",
        "writer_wakeup",
    )

    def __init__(self, server: Server, wire: ServerConnection, stream: trio.abc.Stream) -> None:
        self.server = server
        self.wire = wire
        self.stream = stream
        self.conn = Connection(server, wire, stream)
        self.out = bytearray()  # written by the wire, not yet sent
        self.in_flight = 0  # bytes inside the current send_all
        self.closing = False  # CloseTransport: close once ``out`` is sent
        self.aborting = False  # Terminate: drop now
        self.writer_wakeup = trio.Event()
        self.reading = trio.Event()  # set when a paused reader may go on
        self.scope = trio.CancelScope()  # the reader and the writer
        self.nursery: trio.Nursery | None = None  # the transport and the handler

    # TransportOps
    def write(self, data: bytes) -> None:
        if not self.aborting:
            self.out += data
            self.writer_wakeup.set()

    def close(self) -> None:
        self.closing = True
        self.writer_wakeup.set()
        # The last write may not hang on a peer that stopped reading: the hub
        # hands the connection back after close_timeout if it is still open.
        self.server.hub.closing(self.wire, trio.current_time())

    def abort(self) -> None:
        self.aborting = True
        self.out.clear()
        if isinstance(self.stream, trio.SocketStream):
            reset_socket(self.stream.socket)  # the close that follows is an RST
        self.scope.cancel()

    def accepted(self) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(run_handler, self.server._handler, self.conn)

    def messages_waiting(self) -> None:
        self.conn._arrived.set()

    def sync_reading(self, paused: bool) -> None:
        if not paused:
            self.reading.set()  # a paused reader reads the peer's close frame

    def closed(self) -> None:
        self.conn._closed.set()
        self.conn._arrived.set()


class Server(ServerBase):
    """A running Trio server: the hub, its connections, the one ticker."""

    def __init__(
        self,
        handler: Handler,
        hub: Hub,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    ) -> None:
        self._handler = handler
        self.hub = hub
        self.listeners = list(listeners)
        self._transports: dict[ServerConnection, _Transport] = {}
        self._timer: trio.CancelScope | None = None
        self._drained = trio.Event()

    # ----------------------------------------------------------------- control

    def now(self) -> float:
        return trio.current_time()

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
        return [transport.conn for transport in self._transports.values()]

    def begin_drain(self) -> None:
        """SIGTERM: new handshakes get 503, connections close with 1001, and
        what is left at the drain deadline is terminated. :func:`serve`
        returns once every connection is closed."""
        if not self.hub.draining:
            self._drain_hub()
            self._check_drained()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    # ---------------------------------------------------------------- events

    def flush(self, wire: ServerConnection) -> None:
        """Hand a wire's output to its writer and act on its actions; keep
        the ticker's deadline at the hub's next wake-up."""
        transport = self._transports.get(wire)
        if transport is None:
            return  # its stream is closed: nothing more to write or deliver
        carry_out(wire, transport)
        wire.write_buffer_size = len(transport.out) + transport.in_flight
        self._arm()

    def _reset(self, wire: ServerConnection) -> None:
        transport = self._transports.get(wire)
        if transport is not None:  # still flushing: drop it
            transport.abort()

    def _arm(self) -> None:
        """Move the ticker's deadline earlier if the hub's wake-up moved earlier."""
        timer = self._timer
        if timer is None:
            return  # the ticker is ticking: it re-reads the wake-up next
        wakeup = self.hub.next_wakeup()
        if wakeup is not None and wakeup < timer.deadline:
            timer.deadline = wakeup

    async def _tick_forever(self) -> None:
        """The one timer of every connection."""
        hub = self.hub
        while True:
            wakeup = hub.next_wakeup()
            with trio.CancelScope(deadline=math.inf if wakeup is None else wakeup) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            self._run_timer()
            self._check_drained()

    def _check_drained(self) -> None:
        if self.hub.drained and not self._transports:
            self._drained.set()

    # ------------------------------------------------------------ connections

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        transport = _Transport(self, self.hub.open(trio.current_time()), stream)
        self._transports[transport.wire] = transport
        self._arm()
        async with trio.open_nursery() as nursery:
            transport.nursery = nursery
            nursery.start_soon(self._run_transport, transport)

    async def _run_transport(self, transport: _Transport) -> None:
        try:
            with transport.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, transport)
                    nursery.start_soon(self._write, transport)
        finally:
            # Only a cancellation (or a bug) gets here with the wire still open.
            transport.wire.terminate(trio.current_time(), TerminationCause.SERVER_STOPPED)
            self.flush(transport.wire)
            try:
                await trio.aclose_forcefully(transport.stream)
            finally:  # under cancellation, the await above raises
                self._transports.pop(transport.wire, None)
                self._check_drained()

    async def _read(self, transport: _Transport) -> None:
        wire = transport.wire
        stream = transport.stream
        while not wire.ended:
            while wire.reading_paused:
                transport.reading = trio.Event()
                await transport.reading.wait()
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._lost(transport, error)
                return
            if data:
                wire.receive_data(bytes(data), trio.current_time())  # bytes: no copy
            else:
                wire.receive_eof(trio.current_time())
            self.flush(wire)

    async def _write(self, transport: _Transport) -> None:
        stream = transport.stream
        while True:
            if transport.out:
                data = bytes(transport.out)
                transport.out.clear()
                transport.in_flight = len(data)
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    self._lost(transport, error)
                    return
                finally:
                    transport.in_flight = 0
                    transport.wire.write_buffer_size = len(transport.out)
            elif transport.closing:
                transport.scope.cancel()  # written: stop reading, close
                return
            else:
                transport.writer_wakeup = trio.Event()
                await transport.writer_wakeup.wait()

    def _lost(self, transport: _Transport, error: Exception) -> None:
        """The stream failed under us (reset, broken pipe)."""
        transport.wire.transport_lost(trio.current_time(), f"{type(error).__name__}: {error}")
        self.flush(transport.wire)
        transport.scope.cancel()


async def serve_stream(server: Server, stream: trio.abc.Stream) -> None:
    """Serve one accepted stream (any ``trio.abc.Stream``) on ``server`` until
    its connection has ended and its handler returned; the stream is closed."""
    await server._serve_stream(stream)


async def serve_listeners(
    handler: Handler,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **hub: Unpack[HubOptions],
) -> None:
    """Serve ``handler`` on ``listeners`` (possibly none: feed it with
    :func:`serve_stream`) until drained (``config``, ``entropy``, ``broker``:
    :class:`HubOptions`). With ``nursery.start`` it returns the
    :class:`Server` once listening."""
    server = Server(handler, driver_hub(**hub), listeners)
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
    backlog: int = 1024,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **hub: Unpack[HubOptions],
) -> None:
    """Serve ``handler`` on ``host:port`` until drained; start it with
    ``server = await nursery.start(serve, handler, host, port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    await serve_listeners(handler, listeners, task_status=task_status, **hub)
