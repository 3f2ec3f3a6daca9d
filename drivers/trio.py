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
``SocketStream``'s socket, or the one under a ``trio.SSLStream``, the reader
and writer cancelled); a graceful close is bounded by the hub
(``Hub.closing``). Cancellation always reaches CLOSED:
a connection whose tasks are cancelled is terminated in the core (cause
``server_stopped``) and its stream closed in a ``finally``; once the server
is drained, :func:`serve` cancels whatever handler is left and returns.

Listeners: ``host:port`` or ``unix_path``, and ``host:metrics_port`` for
``/healthz`` and ``/metrics`` only. With ``ssl`` the WebSocket listeners are
wrapped in ``trio.SSLListener``: an accepted stream is served at once and
handshakes on its first read, so the handshake timeout covers TLS too
(``https_compatible``: no close_notify is sent or required, as HTTPS does).
"""

from __future__ import annotations

import contextlib
import math
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from functools import partial
from typing import Any, Unpack

try:
    import trio
except ImportError as missing:  # an optional dependency: say which extra brings it
    raise ImportError(
        "wslifecycle.drivers.trio needs trio: pip install 'wslifecycle[trio]'", name=missing.name
    ) from missing

from wslifecycle import TerminationCause
from wslifecycle.fleet.link import LinkEvent
from wslifecycle.handshake import Accept, Address, HandshakeRequest, Reject
from wslifecycle.hub import Hub
from wslifecycle.wire import ServerConnection

from ._common import (
    HubOptions,
    ServerBase,
    answer_handshake,
    carry_out,
    check_handler,
    driver_hub,
    log,
    peer_address,
    reset_socket,
)
from ._coroutine import (
    AsyncConnection,
    AsyncProcessRequest,
    await_hook,
    call_hook,
    echo_handler,
    relay_handler,
    run_handler,
)
from ._listen import check_address, listen_error, listen_unix, tcp_where
from ._tls import check_context, describe
from ._trio_client import Client, ClientStopped, connect

__all__ = [
    "Client",
    "ClientStopped",
    "Connection",
    "Handler",
    "Server",
    "Serving",
    "connect",
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
        "hook_scope",
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
        self.hook_scope: trio.CancelScope | None = None  # an async handshake hook

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
        reset_socket(_socket_of(self.stream))  # the close that follows is an RST
        self.scope.cancel()

    def handshake(self, request: HandshakeRequest) -> None:
        server = self.server
        hook = server._process_request
        assert hook is not None  # only a server with a hook defers handshakes
        answer, pending = call_hook(hook, request)
        if pending is None:
            answer_handshake(server, self.wire, answer)
        else:
            assert self.nursery is not None
            self.hook_scope = trio.CancelScope()
            self.nursery.start_soon(self._await_hook, pending, self.hook_scope)

    async def _await_hook(
        self, pending: Awaitable[Accept | Reject | None], scope: trio.CancelScope
    ) -> None:
        with scope:
            answer = await await_hook(pending)
            self.hook_scope = None
            answer_handshake(self.server, self.wire, answer)

    def accepted(self) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(run_handler, self.server._handler, self.conn)

    def messages_waiting(self) -> None:
        self.conn._arrived.set()

    def sync_reading(self, paused: bool) -> None:
        if not paused:
            self.reading.set()  # a paused reader reads the peer's close frame

    def closed(self) -> None:
        if self.hook_scope is not None:  # the handshake timed out under the hook
            self.hook_scope.cancel()
            self.hook_scope = None
        self.conn._closed.set()
        self.conn._arrived.set()


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under ``stream`` (under its TLS too), if it has one."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _listener_socket(listener: trio.abc.Listener[trio.abc.Stream]) -> trio.socket.SocketType | None:
    """The socket a listener accepts on (under its TLS too), if it has one."""
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    return listener.socket if isinstance(listener, trio.SocketListener) else None


class Server(ServerBase):
    """A running Trio server: the hub, its connections, the one ticker."""

    def __init__(
        self,
        handler: Handler,
        hub: Hub,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
        metrics_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
        process_request: AsyncProcessRequest | None = None,
    ) -> None:
        self._handler = handler
        self._process_request = process_request
        self.hub = hub
        self.listeners = list(listeners)
        #: Listeners that answer /healthz and /metrics only.
        self.metrics_listeners = list(metrics_listeners)
        self._transports: dict[ServerConnection, _Transport] = {}
        self._timer: trio.CancelScope | None = None
        self._drained = trio.Event()

    # ----------------------------------------------------------------- control

    def now(self) -> float:
        return trio.current_time()

    @property
    def sockets(self) -> list[trio.socket.SocketType]:
        """The WebSocket listeners' sockets (under their TLS)."""
        return [sock for sock in map(_listener_socket, self.listeners) if sock is not None]

    @property
    def port(self) -> int:
        """The port of the first TCP listener (useful with port 0)."""
        port = _tcp_port(self.listeners)
        if port is None:
            raise RuntimeError("this server has no TCP listener")
        return port

    @property
    def metrics_port(self) -> int | None:
        """The port of the first TCP metrics listener (None: there is none)."""
        return _tcp_port(self.metrics_listeners)

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
        carry_out(wire, transport, self)
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

    def _rearm(self) -> None:
        self._arm()

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

    async def _serve_stream(self, stream: trio.abc.Stream, plain_only: bool = False) -> None:
        wire = self.hub.open(trio.current_time(), _peer(stream), plain_only=plain_only)
        transport = _Transport(self, wire, stream)
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
        """The stream failed under us (reset, broken pipe, a TLS failure)."""
        wire = transport.wire
        cause = error.__cause__
        if isinstance(cause, _ssl.SSLError):  # from trio.SSLStream
            reason = describe(cause)
            log.info("tls failed connection=%s error=%s", wire.id, reason)
            wire.transport_lost(trio.current_time(), f"TLS: {reason}")
        else:
            wire.transport_lost(trio.current_time(), f"{type(error).__name__}: {error}")
        self.flush(wire)
        transport.scope.cancel()


def _peer(stream: trio.abc.Stream) -> Address | None:
    """The stream's peer address, when it is a socket (or wraps one)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            return peer_address(stream.socket.getpeername())
        except OSError:  # reset before we asked: the reader will find out
            return None
    return None


def _tcp_port(listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> int | None:
    for listener in listeners:
        sock = _listener_socket(listener)
        if sock is not None and sock.family != trio.socket.AF_UNIX:
            port: int = sock.getsockname()[1]
            return port
    return None


async def serve_stream(
    server: Server, stream: trio.abc.Stream, *, plain_only: bool = False
) -> None:
    """Serve one accepted stream (any ``trio.abc.Stream``) on ``server`` until
    its connection has ended and its handler returned; the stream is closed.
    ``plain_only``: answer ``/healthz`` and ``/metrics`` only (404 otherwise)."""
    await server._serve_stream(stream, plain_only)


async def serve_listeners(
    handler: Handler,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    *,
    process_request: AsyncProcessRequest | None = None,
    metrics_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **hub: Unpack[HubOptions],
) -> None:
    """Serve ``handler`` on ``listeners`` (possibly none: feed it with
    :func:`serve_stream`), and ``/healthz`` and ``/metrics`` only on
    ``metrics_listeners``, until drained (``config``, ``entropy``,
    ``broker``: :class:`HubOptions`; ``process_request``: the handshake
    hook, a function or a coroutine function). With ``nursery.start`` it
    returns the :class:`Server` once listening."""
    check_handler(handler, driver="trio", coroutine=True)
    driver = driver_hub(defer_handshake=process_request is not None, **hub)
    server = Server(handler, driver, listeners, metrics_listeners, process_request)
    token = trio.lowlevel.current_trio_token()

    def hop(handle: Callable[[LinkEvent], None]) -> Callable[[LinkEvent], None]:
        from ._redis import trio_deliver

        return trio_deliver(token, handle)

    try:
        async with trio.open_nursery() as nursery:
            server._start_fleet(hop)
            await _serve_in(nursery, server, listeners, metrics_listeners, task_status)
    finally:
        server._stop_fleet()


async def _serve_in(
    nursery: trio.Nursery,
    server: Server,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    metrics_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    task_status: trio.TaskStatus[Server],
) -> None:
    """Run the ticker and the listeners in ``nursery`` until drained."""
    nursery.start_soon(server._tick_forever)
    for serving, plain_only in ((listeners, False), (metrics_listeners, True)):
        if serving:
            await nursery.start(
                partial(
                    trio.serve_listeners,
                    partial(serve_stream, server, plain_only=plain_only),
                    list(serving),
                    handler_nursery=nursery,
                )
            )
    task_status.started(server)
    await server._drained.wait()
    nursery.cancel_scope.cancel()  # stop listening, the ticker, lingering handlers


def serve(
    handler: Handler,
    host: str | None = None,
    port: int | None = None,
    *,
    unix_path: str | os.PathLike[str] | None = None,
    ssl: _ssl.SSLContext | None = None,
    metrics_port: int | None = None,
    backlog: int = 1024,
    process_request: AsyncProcessRequest | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **hub: Unpack[HubOptions],
) -> Serving:
    """Serve ``handler`` on ``host:port``, or on the unix socket
    ``unix_path``, until drained; over TLS with ``ssl``; ``/healthz`` and
    ``/metrics`` also on ``host:metrics_port``; ``process_request``: the
    handshake hook. Start it with ``server = await nursery.start(serve,
    handler, host, port)``, or ``async with serve(handler, host, port) as
    server:`` (leaving the block drains)."""
    path = check_address(host, port, unix_path, metrics_port)  # at the call: nothing made yet
    check_handler(handler, driver="trio", coroutine=True)
    context = check_context(ssl)

    async def run(task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        metrics_listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        remove_unix_path = _nothing
        try:
            if path is not None:
                sock, remove_unix_path = listen_unix(path, backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            else:
                assert host is not None  # checked
                assert port is not None
                listeners += await _listen_tcp(host, port, "port", backlog)
            if metrics_port is not None:
                assert host is not None  # checked
                metrics_listeners += await _listen_tcp(host, metrics_port, "metrics_port", backlog)
            if context is not None:
                listeners = [
                    trio.SSLListener(listener, context, https_compatible=True)
                    for listener in listeners
                ]
            await serve_listeners(
                handler,
                listeners,
                metrics_listeners=metrics_listeners,
                process_request=process_request,
                task_status=task_status,
                **hub,
            )
        finally:
            for listener in (*listeners, *metrics_listeners):
                listening = _listener_socket(listener)
                if listening is not None:
                    listening.close()  # closed already if serving began: no effect then
            remove_unix_path()

    return Serving(run, task_status)


class Serving(Coroutine[Any, Any, None]):
    """What :func:`serve` returns: the coroutine ``nursery.start`` runs, and
    an async context manager that runs it in a nursery of its own (so a
    websockets habit, ``async with serve(...)``, works here too)."""

    __slots__ = ("_coroutine", "_exit", "_run", "_task_status")

    def __init__(
        self,
        run: Callable[..., Coroutine[Any, Any, None]],
        task_status: trio.TaskStatus[Server],
    ) -> None:
        self._run = run
        self._task_status = task_status
        self._coroutine: Coroutine[Any, Any, None] | None = None  # made on first use
        self._exit: contextlib.AbstractAsyncContextManager[Server] | None = None

    def _inner(self) -> Coroutine[Any, Any, None]:
        if self._coroutine is None:
            self._coroutine = self._run(task_status=self._task_status)
        return self._coroutine

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, *args: Any) -> Any:
        return self._inner().throw(*args)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self._inner().__await__()

    async def __aenter__(self) -> Server:
        self._exit = _running(self._run)
        return await self._exit.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._exit is not None
        return await self._exit.__aexit__(*exc_info)


@contextlib.asynccontextmanager
async def _running(run: Callable[..., Coroutine[Any, Any, None]]) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(run)
        try:
            yield server
        finally:
            server.begin_drain()  # the nursery waits until it is drained


def _nothing() -> None:
    pass


async def _listen_tcp(host: str, port: int, name: str, backlog: int) -> list[trio.SocketListener]:
    """Trio's TCP listeners (one per address of ``host``); an error names
    serve() and the address."""
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    except OSError as error:
        raise listen_error(error, tcp_where(host, port, name)) from error
