"""The asyncio driver: socket callbacks around the sans-IO hub.

Per socket: read → ``wire.receive_data(data, now)`` → write
``data_to_send()`` → act on the actions. Who reads: on asyncio's standard
loop (Linux epoll), every plain socket the server accepted itself (TCP or
unix) is read by ONE poller for the whole server (``_asyncio_poll.Poller``:
an epoll of its own, watched by the loop through one ``add_reader``; no
transport, no protocol, no handle per read); writes go straight to the
socket and what the kernel refuses is sent from ``add_writer``. TLS, the
metrics listener, uvloop (whose C transports are fast already) and systems
without epoll keep asyncio's transports and ``_Protocol.buffer_updated``.
The log says which, beside the event loop. For all sockets: ONE ``loop.call_at``
timer for the hub's next wake-up, re-armed only when that moves earlier (a
new connection, a close) — never per message, never per connection.
Handlers are tasks, one per accepted connection:

    async def handler(conn: Connection) -> None:
        async for message in conn:
            conn.send(message)

    server = await serve(handler, "127.0.0.1", 8765, config=Config(...))
    await server.serve_forever()        # until SIGTERM/SIGINT drains it

    async with serve(handler, "127.0.0.1", 8765) as server:
        ...                             # leaving the block drains, then closes

``process_request`` is the handshake hook (``wslifecycle.handshake``), a
function or a coroutine function: it runs in a task of its own, under the
handshake timeout (a hook still running then is cancelled).
``serve(handler, unix_path="/run/app.sock")`` listens on a unix socket
instead; ``ssl=context`` serves wss:// (TLS by ``_tls.TlsSession`` under the
wire, not asyncio's own, so the handshake timeout covers the TLS handshake);
``metrics_port=9100`` adds a listener for ``/healthz`` and ``/metrics`` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Unpack, cast

from wslifecycle.fleet.link import LinkEvent
from wslifecycle.handshake import Accept, HandshakeRequest, Reject
from wslifecycle.hub import Hub
from wslifecycle.wire import ServerConnection

from ._asyncio_client import Client, ClientStopped, Connecting, connect
from ._asyncio_poll import ACCEPT_BATCH, ACCEPT_RETRY, Poller, can_poll, listen_tcp
from ._common import (
    HubOptions,
    ServerBase,
    answer_handshake,
    carry_out,
    check_handler,
    driver_hub,
    peer_address,
    reset_socket,
)
from ._coroutine import (
    BUILT_IN,
    AsyncConnection,
    AsyncProcessRequest,
    answer_inline,
    await_hook,
    call_hook,
    echo_handler,
    relay_handler,
    run_handler,
)
from ._listen import check_address, listen_error, listen_unix, tcp_where
from ._tls import TlsSession, check_context, feed_wire

__all__ = [
    "Client",
    "ClientStopped",
    "Connecting",
    "Connection",
    "Handler",
    "Server",
    "Serving",
    "connect",
    "echo_handler",
    "relay_handler",
    "serve",
]

log = logging.getLogger("wslifecycle")

Handler = Callable[["Connection"], Awaitable[None]]


class Connection(AsyncConnection):
    """A WebSocket connection as a handler sees it (see :class:`AsyncConnection`)."""

    __slots__ = ("_closed", "_closed_waiter", "_waiter")

    def __init__(self, server: Server, wire: ServerConnection) -> None:
        super().__init__(server, wire)
        # Made on first use: an idle connection holds no future.
        self._waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._closed = False

    async def _arrival(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_closed(self) -> None:
        if self._closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


#: One receive buffer for every connection: asyncio reads into it and calls
#: ``buffer_updated`` at once, so reads never interleave. (Plain
#: ``data_received`` would allocate, then shrink, a 256 KiB bytes object for
#: every read, an 8-byte pong included: the costliest step of a heartbeat.)
_RECEIVE = memoryview(bytearray(65536))


class _Ops:
    """The transport operations both kinds of connection share: the
    handshake hook, the handler, waking whoever waits."""

    __slots__ = ("conn", "hook_task", "server", "wire")

    server: Server
    wire: ServerConnection
    conn: Connection
    hook_task: asyncio.Task[None] | None

    def handshake(self, request: HandshakeRequest) -> None:
        server = self.server
        hook = server._process_request
        assert hook is not None  # only a server with a hook defers handshakes
        answer, pending = call_hook(hook, request)
        if pending is None:
            answer_handshake(server, self.wire, answer)
        else:
            self.hook_task = server._spawn(self._await_hook(pending))

    async def _await_hook(self, pending: Awaitable[Accept | Reject | None]) -> None:
        answer = await await_hook(pending)
        self.hook_task = None
        answer_handshake(self.server, self.wire, answer)

    def accepted(self) -> None:
        if self.server._answer is None:  # a built-in handler runs where the socket is read
            self.server._start_handler(self.conn)

    def messages_waiting(self) -> None:
        self.conn._wake()

    def closed(self) -> None:
        if self.hook_task is not None:  # the handshake timed out under the hook
            self.hook_task.cancel()
            self.hook_task = None
        conn = self.conn
        conn._closed = True
        waiter = conn._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        conn._wake()


class _Protocol(_Ops, asyncio.BufferedProtocol):
    """The socket side of one connection through an asyncio transport (TLS,
    the metrics listener, uvloop, no epoll), and the transport operations
    that carry out its wire's output. All logic is in the wire."""

    __slots__ = ("paused", "plain_only", "tls", "tls_context", "transport")

    def __init__(
        self, server: Server, tls_context: _ssl.SSLContext | None, plain_only: bool
    ) -> None:
        self.server = server
        self.tls_context = tls_context
        self.plain_only = plain_only  # the metrics listener's
        self.transport: asyncio.Transport | None = None
        self.tls: TlsSession | None = None
        self.paused = False  # reading from the transport is paused
        self.hook_task: asyncio.Task[None] | None = None  # an async handshake hook

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not
        # asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        # Opened at the TCP accept: the handshake deadline covers TLS too.
        peer = peer_address(transport.get_extra_info("peername"))
        self.wire = self.server.hub.open(self.server.now(), peer, plain_only=self.plain_only)
        if self.tls_context is not None:
            self.tls = TlsSession(self.tls_context)
        self.conn = Connection(self.server, self.wire)
        self.server._accepted(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVE

    def buffer_updated(self, nbytes: int) -> None:
        data = _RECEIVE[:nbytes].tobytes()
        tls = self.tls
        wire = self.wire
        server = self.server
        if tls is None:
            if not wire.receive_data(data, server._clock()):
                return  # a lone pong: nothing to write or act on
        else:
            records = feed_wire(tls, wire, data, server._clock())
            if records and self.transport is not None:
                self.transport.write(records)
        answer = server._answer
        if answer is not None and wire.messages_waiting:
            answer_inline(self.conn, answer)  # a built-in handler: flushes
        else:
            server.flush(wire)

    def eof_received(self) -> bool:
        self.wire.receive_eof(self.server.now())
        self.server.flush(self.wire)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.transport_lost(self.server.now(), None if exc is None else repr(exc))
        self.server.flush(self.wire)
        self.transport = None
        self.server._forget(self)

    # TransportOps
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            if self.tls is not None:
                data = self.tls.encrypt(data)
            self.transport.write(data)

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            if self.tls is not None:
                transport.write(self.tls.close())  # close_notify, best effort
            transport.close()
            if transport.get_write_buffer_size():  # a peer that stopped reading: bounded
                self.server.hub.closing(self.wire, self.server.now())

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            reset_socket(transport.get_extra_info("socket"))
            transport.abort()

    def sync_reading(self, paused: bool) -> None:
        transport = self.transport
        if paused is not self.paused and transport is not None and not transport.is_closing():
            self.paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()


class _Polled(_Ops):
    """A plain socket the server accepted itself, read by the server's
    :class:`Poller` (no transport): writes go straight to the socket, what
    the kernel refuses waits in ``out`` (the wire's ``write_buffer_size``)."""

    __slots__ = ("closing", "out", "polled", "poller", "sock", "writing")

    #: What ``Server.flush`` and ``_write_ping`` look for on a transport connection.
    tls: None = None
    transport: None = None

    def __init__(self, server: Server, poller: Poller, sock: socket.socket) -> None:
        self.server = server
        self.poller = poller
        self.sock = sock
        self.hook_task = None
        self.out = bytearray()  # written by the wire, not yet taken by the kernel
        self.writing = False  # the loop watches the socket for room to send ``out``
        self.closing = False  # CloseTransport with a backlog: close once ``out`` is sent
        self.polled = -1  # the descriptor while in the poller's epoll

    # TransportOps
    def write(self, data: bytes) -> None:
        sock = self.sock
        if self.out:  # a backlog: after it
            self.out += data
            self.wire.write_buffer_size = len(self.out)
            return
        if sock.fileno() < 0:
            return  # closed: what the wire still says goes nowhere
        try:
            sent = sock.send(data)  # non-blocking: takes what the kernel has room for
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:  # reset, broken pipe: lost, as a transport reports it
            self.fail(error)
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self.wire.write_buffer_size = len(self.out)
            self.poller.send_later(self)

    def close(self) -> None:
        if self.out:
            # The backlog may not hang on a peer that stopped reading: the hub
            # hands the connection back after close_timeout if still open.
            self.closing = True
            self.poller.watch(self, False)  # as a closing transport: no more reading
            self.server.hub.closing(self.wire, self.server.now())
        else:
            self.shut(None)

    def abort(self) -> None:
        self.out.clear()
        if self.sock.fileno() >= 0:
            reset_socket(self.sock)  # an RST
        self.shut(None)

    def sync_reading(self, paused: bool) -> None:
        if self.sock.fileno() >= 0 and not self.closing:
            self.poller.watch(self, not paused)

    # The socket's side
    def eof(self) -> None:
        """The peer sent FIN: the wire hears it; no more reading; the socket
        closes once the backlog is sent (as asyncio's transport does)."""
        self.closing = True  # before the flush: its sync_reading must not watch it again
        self.poller.watch(self, False)
        server = self.server
        self.wire.receive_eof(server.now())
        server.flush(self.wire)
        if not self.out:
            self.shut(None)

    def fail(self, error: OSError) -> None:
        """A read or write failed (reset, broken pipe): the connection is lost."""
        self.out.clear()
        self.shut(error)

    def shut(self, error: OSError | None) -> None:
        """Close the socket (out of the poller first), once; the wire hears
        of it from the loop's next turn, as from a transport's
        ``connection_lost``, never inside the flush that closed it."""
        sock = self.sock
        if sock.fileno() >= 0:
            self.poller.forget(self)
            sock.close()
            self.server._loop.call_soon(self._lost, error)

    def _lost(self, error: OSError | None) -> None:
        server = self.server
        self.wire.transport_lost(server.now(), None if error is None else repr(error))
        server.flush(self.wire)
        server._forget(self)


class Server(ServerBase):
    """A running asyncio server: the hub, the listening sockets, the timer."""

    def __init__(
        self,
        handler: Handler,
        hub: Hub,
        process_request: AsyncProcessRequest | None = None,
        *,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock = _clock_of(self._loop)
        self._handler = handler
        #: A built-in handler (``serve``'s relay or echo) runs inline, taskless.
        self._answer = BUILT_IN.get(handler)
        self._process_request = process_request
        self.hub = hub
        self._tls_context = check_context(ssl)
        self._protocols: dict[ServerConnection, _Protocol | _Polled] = {}
        self._server: asyncio.Server | None = None
        #: The one reader of the plain sockets, and the listening sockets it
        #: is fed from (asyncio's server is not used then).
        self._poller: Poller | None = None
        self._listening: list[socket.socket] = []
        self._metrics_server: asyncio.Server | None = None
        self._unix_path: str | None = None
        self._remove_unix_path: Callable[[], None] = _nothing
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._armed_changes = -1
        self._drained = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- control

    def now(self) -> float:
        return self._clock()

    async def start(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        unix_path: str | os.PathLike[str] | None = None,
        metrics_port: int | None = None,
        backlog: int = 1024,
    ) -> None:
        """Listen on ``host:port`` or ``unix_path``, and on ``host:metrics_port``
        for ``/healthz`` and ``/metrics`` only (see ``_listen.py``)."""
        path = check_address(host, port, unix_path, metrics_port)
        tls = self._tls_context
        try:
            if tls is None and can_poll(self._loop):
                self._listen_polled(host, port, path, backlog)
            elif path is not None:
                sock, self._remove_unix_path = listen_unix(path, backlog)
                self._unix_path = path
                self._server = await self._loop.create_unix_server(
                    lambda: _Protocol(self, tls, False), sock=sock, backlog=backlog
                )
            else:
                assert host is not None  # checked
                assert port is not None
                self._server = await self._listen_tcp(host, port, "port", backlog, tls, False)
            if metrics_port is not None:
                assert host is not None  # checked
                self._metrics_server = await self._listen_tcp(
                    host, metrics_port, "metrics_port", backlog, None, True
                )
        except BaseException:
            await self._close_listeners()
            if self._poller is not None:
                self._poller.close()
                self._poller = None
            raise
        loop = self._loop

        def hop(handle: Callable[[LinkEvent], None]) -> Callable[[LinkEvent], None]:
            from ._redis import asyncio_deliver

            return asyncio_deliver(loop, handle)

        self._start_fleet(hop)

    async def _listen_tcp(
        self,
        host: str,
        port: int,
        name: str,
        backlog: int,
        tls: _ssl.SSLContext | None,
        plain_only: bool,
    ) -> asyncio.Server:
        try:
            return await self._loop.create_server(
                lambda: _Protocol(self, tls, plain_only),
                host,
                port,
                backlog=backlog,
                reuse_address=True,
            )
        except OSError as error:
            raise listen_error(error, tcp_where(host, port, name)) from error

    def _listen_polled(
        self, host: str | None, port: int | None, path: str | None, backlog: int
    ) -> None:
        """Listen with sockets of our own; what they accept goes to the poller."""
        if path is not None:
            sock, self._remove_unix_path = listen_unix(path, backlog)
            self._unix_path = path
            sock.setblocking(False)
            self._listening = [sock]
        else:
            assert host is not None  # checked
            assert port is not None
            try:
                self._listening = listen_tcp(host, port, backlog)
            except OSError as error:
                raise listen_error(error, tcp_where(host, port)) from error
        self._poller = Poller(self, self._loop)
        for sock in self._listening:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        """Take the waiting connections (a bounded batch) and hand each to
        the poller: its handshake is read there."""
        poller = self._poller
        if poller is None:
            return
        tcp = listening.family != socket.AF_UNIX
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # gone before it was taken: the next one
                continue
            except OSError as error:  # out of descriptors, or memory: wait, then again
                log.error("accept failed (%s); retrying in %.1f s", error, ACCEPT_RETRY)
                self._loop.remove_reader(listening.fileno())
                self._loop.call_later(ACCEPT_RETRY, self._resume_accepting, listening)
                return
            try:
                sock.setblocking(False)
                if tcp:  # as asyncio's transports do: a ping is one small segment
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # gone bad already: nothing to serve
                sock.close()
                continue
            polled = _Polled(self, poller, sock)
            polled.wire = self.hub.open(self.now(), peer_address(address), plain_only=False)
            polled.conn = Connection(self, polled.wire)
            self._accepted(polled)
            poller.watch(polled, True)

    def _resume_accepting(self, listening: socket.socket) -> None:
        if any(sock is listening for sock in self._listening):  # still listening
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    @property
    def connections(self) -> list[Connection]:
        """Connections whose socket is not yet closed."""
        return [protocol.conn for protocol in self._protocols.values()]

    @property
    def socket_reader(self) -> str:
        """Who reads a plain socket here, for the log."""
        if self._poller is not None:
            return "plain sockets read by one epoll poller"
        return "sockets read by asyncio transports"

    async def _close_listeners(self) -> None:
        for sock in self._listening:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listening = []
        for server in (self._server, self._metrics_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._server = self._metrics_server = None
        self._remove_unix_path()
        self._remove_unix_path = _nothing

    @property
    def sockets(self) -> list[socket.socket]:
        """The WebSocket listener's sockets."""
        if self._listening:
            return list(self._listening)
        return list(self._server.sockets) if self._server is not None else []

    @property
    def port(self) -> int:
        """The port of the first TCP listening socket (useful with port 0)."""
        if self._unix_path is not None:
            raise RuntimeError(f"this server listens on the unix socket {self._unix_path}")
        port: int = self.sockets[0].getsockname()[1]
        return port

    @property
    def metrics_port(self) -> int | None:
        """The metrics listener's port (None: there is none)."""
        if self._metrics_server is None:
            return None
        port: int = self._metrics_server.sockets[0].getsockname()[1]
        return port

    def begin_drain(self) -> None:
        """SIGTERM: new handshakes get 503, connections close with 1001, and
        what is left at the drain deadline is terminated."""
        if not self.hub.draining:
            self._drain_hub()
            self._arm()
            self._check_drained()

    async def serve_forever(self) -> None:
        """Serve until a drain finishes, then stop listening and return."""
        await self._drained.wait()
        await self.aclose()

    def close(self) -> None:
        """websockets' spelling of :meth:`begin_drain`; then ``await wait_closed()``."""
        self.begin_drain()

    async def wait_closed(self) -> None:
        """Wait until a drain has finished and the server is closed."""
        await self.serve_forever()

    async def drain(self) -> None:
        """Drain now and wait until it is finished."""
        self.begin_drain()
        await self.serve_forever()

    async def aclose(self) -> None:
        """Stop listening; cancel handlers still running; terminate what is
        still open (cause ``server_stopped``); release the timer."""
        await self._close_listeners()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stop_hub()
        poller = self._poller
        if poller is not None:
            for protocol in list(self._protocols.values()):
                if isinstance(protocol, _Polled):  # closing with a backlog still
                    protocol.abort()
            poller.close()
        self._stop_fleet()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.begin_drain()
        await self._drained.wait()
        await self.aclose()

    # ---------------------------------------------------------------- events

    def flush(self, wire: ServerConnection) -> None:
        """Write a wire's output and act on its actions; keep the timer armed."""
        protocol = self._protocols.get(wire)
        if protocol is None:
            return  # its socket is gone
        carry_out(wire, protocol, self)
        transport = protocol.transport
        if transport is not None:
            wire.write_buffer_size = transport.get_write_buffer_size()
        self._arm()

    def _reset(self, wire: ServerConnection) -> None:
        protocol = self._protocols.get(wire)
        if protocol is not None:
            protocol.abort()

    def _write_ping(self, wire: ServerConnection, frame: bytes) -> None:
        protocol = self._protocols.get(wire)
        if protocol is not None:
            transport = protocol.transport
            if transport is None:
                protocol.write(frame)  # polled: straight to the socket (or closed: nothing)
            else:
                if protocol.tls is not None:
                    frame = protocol.tls.encrypt(frame)
                transport.write(frame)
                wire.write_buffer_size = transport.get_write_buffer_size()

    def _accepted(self, protocol: _Protocol | _Polled) -> None:
        self._protocols[protocol.wire] = protocol
        self._arm()

    def _forget(self, protocol: _Protocol | _Polled) -> None:
        self._protocols.pop(protocol.wire, None)
        self._check_drained()

    def _start_handler(self, conn: Connection) -> None:
        self._spawn(run_handler(self._handler, conn))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task the server owns: ``aclose`` cancels it if still running."""
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- timer

    def _arm(self) -> None:
        """Keep ONE timer at the hub's next wake-up; move it only earlier."""
        changes = self.hub.changes
        if changes == self._armed_changes and self._timer is not None:
            return  # no deadline moved since the timer was armed
        self._armed_changes = changes
        wakeup = self.hub.next_wakeup()
        if wakeup is None:
            return
        if self._timer_at is not None and self._timer_at <= wakeup:
            return  # armed early enough; a spurious early fire just re-arms
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wakeup
        self._timer = self._loop.call_at(wakeup, self._on_timer)

    def _rearm(self) -> None:
        self._armed_changes = -1  # the fleet's wake-up is not in hub.changes
        self._arm()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run_timer()
        self._arm()
        self._check_drained()

    def _check_drained(self) -> None:
        if self.hub.drained and not self._protocols:
            self._drained.set()


def _clock_of(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The loop's clock, read on every pong: the standard loop's ``time()``
    is ``time.monotonic()`` behind a Python call, so that function itself;
    any other loop (uvloop) keeps its own."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def _nothing() -> None:
    pass


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
    **hub: Unpack[HubOptions],
) -> Serving:
    """Serve ``handler`` on ``host:port``, or on the unix socket
    ``unix_path``; over TLS with ``ssl``; ``/healthz`` and ``/metrics`` also
    on ``host:metrics_port`` (``config``, ``entropy``, ``broker``:
    :class:`HubOptions`; ``process_request``: the handshake hook). ``await``
    it for the running :class:`Server`, or ``async with`` it: leaving the
    block drains the server, then closes it."""
    check_address(host, port, unix_path, metrics_port)  # at the call, before anything is made
    check_handler(handler, driver="asyncio", coroutine=True)

    async def start() -> Server:
        driver = driver_hub(defer_handshake=process_request is not None, **hub)
        server = Server(handler, driver, process_request, ssl=ssl)
        await server.start(
            host, port, unix_path=unix_path, metrics_port=metrics_port, backlog=backlog
        )
        return server

    return Serving(start)


class Serving:
    """What :func:`serve` returns: awaitable (the running server) and an
    async context manager (drained and closed on exit)."""

    __slots__ = ("_server", "_start")

    def __init__(self, start: Callable[[], Awaitable[Server]]) -> None:
        self._start = start
        self._server: Server | None = None

    def __await__(self) -> Generator[object, None, Server]:
        return self._start().__await__()

    async def __aenter__(self) -> Server:
        self._server = await self._start()
        return self._server

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        await self._server.__aexit__(*exc_info)
