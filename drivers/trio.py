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
* ONE accept task per listener. On a plain socket listener it takes every
  waiting connection per wake-up (up to ``ACCEPT_BATCH``) and only hands
  each one to the poller: handshakes are read there, never in the accept
  loop. Other listeners (``trio.SSLListener``, memory listeners in tests)
  are accepted from one stream at a time.
* ONE poller task for every plain socket the server accepted itself
  (``_trio_poll.Poller``): an epoll of its own in which each socket is
  registered once; it waits until that epoll is readable, then reads every
  ready socket inline (read → ``wire.receive_data(data, now)`` → flush), in
  bounded batches. Such a connection has no reader task: a task waking per
  pong cost Trio most of a core at 20,000 connections. Where epoll is
  missing, and for TLS and any other stream (:func:`serve_stream`), each
  connection has ONE reader task of its own instead, with the same steps.
* Per connection: the handler's task once the upgrade is accepted, in the
  server-wide nursery, as is an async handshake hook; no connection has a
  nursery of its own, and none a timer or a liveness task. The built-in
  handlers (``relay_handler``, ``echo_handler``: ``wslifecycle serve``)
  need no task: the reader answers the messages it has just queued, as
  their ``async for`` would.
* No writer task while the kernel takes what is written. On a plain socket
  (the standard library socket under a ``trio.SocketStream``, see
  :func:`_stdlib_socket`) ``send`` writes straight to the non-blocking
  socket from the flush that produced the bytes, a fan-out included; only
  what the kernel refuses (its buffer is full) is kept, and a writer task
  waits for the socket to be writable and exists only while that backlog
  does. Streams that are not plain sockets (``trio.SSLStream``, memory
  streams) are written by such a task while there is output to send.

``now`` is ``trio.current_time()``, so the whole server runs on
``trio.testing.MockClock``; :func:`serve_listeners` takes any
``trio.abc.Listener`` and :func:`serve_stream` any ``trio.abc.Stream``
(``memory_stream_pair`` in tests). ``send`` never blocks. The wire's
``write_buffer_size`` is what the kernel has not taken yet (the backlog; on
the stream path, plus what is inside ``send_all``): the core terminates slow
consumers by it. While the wire says ``reading_paused`` the reader waits (a
polled socket leaves the poller's epoll until reading resumes).
``Terminate`` = RST (SO_LINGER 0 on the socket, or the one under a
``trio.SSLStream``; the socket is closed at once, which wakes its reader or
leaves the poller's epoll first, or the stream's reader and writer are
cancelled); a graceful close waits for the backlog, bounded by the hub
(``Hub.closing``). Cancellation always
reaches CLOSED: a connection whose task (or poller) is cancelled is
terminated in the core (cause ``server_stopped``) and its socket closed in
a ``finally``; once the server is drained, :func:`serve` cancels whatever
handler is left and returns.

Listeners: ``host:port`` or ``unix_path``, and ``host:metrics_port`` for
``/healthz`` and ``/metrics`` only. With ``ssl`` the WebSocket listeners are
wrapped in ``trio.SSLListener``: an accepted stream is served at once and
handshakes on its first read, so the handshake timeout covers TLS too
(``https_compatible``: no close_notify is sent or required, as HTTPS does).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
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
from ._tls import check_context, describe
from ._trio_client import Client, ClientStopped, connect
from ._trio_poll import AVAILABLE as _CAN_POLL
from ._trio_poll import Poller

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

    __slots__ = ("_closed", "_closed_event", "_waiter")

    def __init__(self, server: Server, wire: ServerConnection) -> None:
        super().__init__(server, wire)
        # The handler's task while it waits for a message: rescheduled
        # directly, so an idle connection holds no Event.
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False
        self._closed_event: trio.Event | None = None  # made on first wait_closed

    async def _arrival(self) -> None:
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_arrival)

    def _abort_arrival(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    async def wait_closed(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            self._closed_event = trio.Event()
        await self._closed_event.wait()

    def _mark_closed(self) -> None:
        self._closed = True
        if self._closed_event is not None:
            self._closed_event.set()
        self._wake()


#: One receive buffer for every connection: a reader fills it and copies out
#: what came before its next await, so reads never interleave (a fresh 64 KiB
#: bytes object per read, shrunk to an 8-byte pong, costs more than the pong).
_RECEIVE = memoryview(bytearray(RECEIVE_SIZE))


class _Transport:
    """The socket (or stream) side of one connection, and the transport
    operations that carry out its wire's output.

    ``sock`` is set on the socket path: the standard library socket under a
    plain ``trio.SocketStream`` (or accepted by the server's own accept
    loop), written synchronously. ``stream`` is set otherwise (TLS, memory
    streams): written by a task that lives only while there is output."""

    __slots__ = (
        "aborting",
        "closing",
        "conn",
        "error",
        "handler_done",
        "hook_scope",
        "in_flight",
        "out",
        "polled",
        "poller",
        "reading",
        "scope",
        "server",
        "sock",
        "stream",
        "wait_handler",
        "wire",
        "writer_done",
        "writer_scope",
        "writing",
    )

    def __init__(
        self,
        server: Server,
        wire: ServerConnection,
        sock: socket.socket | None,
        stream: trio.abc.Stream | None,
    ) -> None:
        self.server = server
        self.wire = wire
        self.sock = sock
        self.stream = stream
        self.conn = Connection(server, wire)
        self.out = bytearray()  # written by the wire, not yet taken by the kernel
        self.in_flight = 0  # stream path: bytes inside the current send_all
        self.writing = False  # a writer task runs (there is a backlog)
        self.closing = False  # CloseTransport: close once ``out`` is sent
        self.aborting = False  # Terminate, or the socket failed: drop now
        self.error: OSError | None = None  # a synchronous send failed
        self.reading: trio.Event | None = None  # set when a paused reader may go on
        self.writer_done: trio.Event | None = None  # the reader waits for the writer
        self.wait_handler = False  # serve_stream: wait for the handler too
        self.handler_done: trio.Event | None = None  # made when that handler starts
        # The stream path's reader and writer (the socket path closes the socket instead).
        self.scope: trio.CancelScope | None = None if sock is not None else trio.CancelScope()
        self.writer_scope: trio.CancelScope | None = None
        self.hook_scope: trio.CancelScope | None = None  # an async handshake hook
        # The server's poller reads the socket, if it was accepted by the
        # server's own accept loop; ``polled`` is its descriptor while in the
        # poller's epoll, else -1.
        self.poller: Poller | None = None
        self.polled = -1

    # TransportOps
    def write(self, data: bytes) -> None:
        if self.aborting:
            return
        sock = self.sock
        if sock is None or self.out:  # a stream, or a backlog: queue after it
            self.out += data
            self._start_writer()
            return
        try:
            sent = sock.send(data)  # non-blocking: takes what the kernel has room for
        except BlockingIOError:
            sent = 0
        except OSError as error:  # reset, broken pipe: the flush that called us ends it
            self.error = error
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self._start_writer()

    def _start_writer(self) -> None:
        if not self.writing:
            self.writing = True
            writer = self._send_backlog if self.sock is not None else self._send_stream
            self.server._nursery.start_soon(writer, name=_WRITER)

    async def _send_backlog(self) -> None:
        """Socket path: the kernel's buffer was full; send the rest as it
        drains, then close if the wire asked to. Lives only while there is a
        backlog."""
        sock = self.sock
        assert sock is not None
        out = self.out
        try:
            while out:
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent = sock.send(out)
                except BlockingIOError:
                    continue
                except OSError as error:
                    self.server._lost(self, error)
                    return
                del out[:sent]  # cheap: a bytearray drops its head in place
                self.wire.write_buffer_size = len(out)
            if self.closing:
                self._shut()
        except trio.ClosedResourceError:
            pass  # aborted: the socket was closed under the wait
        finally:
            self._writer_ended()

    async def _send_stream(self) -> None:
        """Stream path: send what the wire wrote, then close if it asked to.
        Lives only while there is output."""
        stream = self.stream
        assert stream is not None
        out = self.out
        try:
            with trio.CancelScope() as self.writer_scope:
                while out:
                    data = bytes(out)
                    out.clear()
                    self.in_flight = len(data)
                    try:
                        await stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                        self.server._lost(self, error)
                        return
                    finally:
                        self.in_flight = 0
                        self.wire.write_buffer_size = len(out)
                if self.closing:
                    self._shut()
        finally:
            self.writer_scope = None
            self._writer_ended()

    def _writer_ended(self) -> None:
        self.writing = False
        if self.writer_done is not None:
            self.writer_done.set()
        poller = self.poller
        if poller is not None:
            sock = self.sock
            assert sock is not None
            if sock.fileno() < 0:  # closed while the backlog was sent: ends now
                poller.writer_ended(self)

    def _shut(self) -> None:
        """End the connection's I/O now: close the socket (its reader wakes
        with ClosedResourceError), or cancel the stream's reader and writer
        (the reader's ``finally`` closes the stream)."""
        sock = self.sock
        if sock is not None:
            if sock.fileno() >= 0:
                if self.poller is not None:
                    self.poller.closing(self)  # out of its epoll before the close
                trio.lowlevel.notify_closing(sock)
                sock.close()
            if self.reading is not None:
                self.reading.set()  # a reader paused by the wire: it ends too
        else:
            assert self.scope is not None
            self.scope.cancel()
            if self.writer_scope is not None:
                self.writer_scope.cancel()

    def backlog(self) -> int:
        return len(self.out) + self.in_flight

    def close(self) -> None:
        self.closing = True
        if self.writing and not self.aborting:
            # The last write may not hang on a peer that stopped reading: the
            # hub hands the connection back after close_timeout if still open.
            self.server.hub.closing(self.wire, trio.current_time())
        else:
            self._shut()

    def abort(self) -> None:
        self.aborting = True
        self.out.clear()
        sock = self.sock
        reset_socket(sock if sock is not None else _socket_of(self.stream))  # an RST
        self._shut()

    def handshake(self, request: HandshakeRequest) -> None:
        server = self.server
        hook = server._process_request
        assert hook is not None  # only a server with a hook defers handshakes
        answer, pending = call_hook(hook, request)
        if pending is None:
            answer_handshake(server, self.wire, answer)
        else:
            self.hook_scope = trio.CancelScope()
            server._nursery.start_soon(self._await_hook, pending, self.hook_scope)

    async def _await_hook(
        self, pending: Awaitable[Accept | Reject | None], scope: trio.CancelScope
    ) -> None:
        with scope:
            answer = await await_hook(pending)
            self.hook_scope = None
            answer_handshake(self.server, self.wire, answer)

    def accepted(self) -> None:
        server = self.server
        if server._answer is not None:
            return  # a built-in handler: the reader answers messages itself
        if self.wait_handler:
            self.handler_done = trio.Event()
            server._nursery.start_soon(self._run_handler, self.handler_done, name=_HANDLER)
        else:
            server._nursery.start_soon(run_handler, server._handler, self.conn, name=_HANDLER)

    async def _run_handler(self, done: trio.Event) -> None:
        try:
            await run_handler(self.server._handler, self.conn)
        finally:
            done.set()

    def messages_waiting(self) -> None:
        self.conn._wake()

    def sync_reading(self, paused: bool) -> None:
        if self.poller is not None:
            self.poller.sync(self, paused)
        elif not paused and self.reading is not None:
            self.reading.set()  # a paused reader reads the peer's close frame

    def closed(self) -> None:
        if self.hook_scope is not None:  # the handshake timed out under the hook
            self.hook_scope.cancel()
            self.hook_scope = None
        self.conn._mark_closed()


def _stdlib_socket(sock: trio.socket.SocketType) -> socket.socket | None:
    """The standard library socket inside a Trio socket, if it can be reached.

    Trio's socket object wraps exactly one standard library socket (made
    non-blocking by it), and closing either closes that one descriptor. This
    driver reads, writes and closes that same object (closing with
    ``notify_closing`` first, as Trio's own ``close`` does), so there is one
    owner of one descriptor. Not ``dup()``: a second descriptor per
    connection halves how many connections fit under ``ulimit -n``. Not
    ``socket.socket(fileno=...)``: two objects would own one descriptor, and
    the second close could close a descriptor reused meanwhile. The
    attribute is Trio's private name: without it (another Trio), the
    stream path serves the connection, only slower."""
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


def _plain_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The socket under a plain ``trio.SocketStream`` (None for TLS, memory...)."""
    return _stdlib_socket(stream.socket) if isinstance(stream, trio.SocketStream) else None


def _socket_of(stream: trio.abc.Stream | None) -> trio.socket.SocketType | None:
    """The socket under ``stream`` (under its TLS too), if it has one."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _listener_socket(listener: trio.abc.Listener[trio.abc.Stream]) -> trio.socket.SocketType | None:
    """The socket a listener accepts on (under its TLS too), if it has one."""
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    return listener.socket if isinstance(listener, trio.SocketListener) else None


def _tune(sock: socket.socket) -> None:
    """What ``trio.SocketStream`` sets on a socket: no Nagle delay, and at
    most 16 KiB unsent in the kernel (so ``write_buffer_size``, what the
    kernel has not taken, is what the peer has not read, give or take)."""
    if sock.family != socket.AF_UNIX:
        with contextlib.suppress(OSError):  # reset already: the reader finds out
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2**14)


#: Task names (a name per task is a string per connection otherwise).
_CONNECTION = "wslifecycle connection"
_HANDLER = "wslifecycle handler"
_WRITER = "wslifecycle writer"
_POLLER = "wslifecycle poller"


#: Connections taken from the listening socket per wake-up, at most.
ACCEPT_BATCH = 64
#: accept() failures that mean "out of descriptors or memory": wait, retry
#: (as ``trio.serve_listeners`` does).
_ACCEPT_CAPACITY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: accept() failures that concern only the connection being accepted.
_ACCEPT_IGNORABLE = {
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.ENETDOWN,
    errno.ENOPROTOOPT,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.EOPNOTSUPP,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
}


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
        self._nursery_: trio.Nursery | None = None  # set by serve_listeners
        #: A built-in handler runs in the reader, not in a task of its own.
        self._answer = BUILT_IN.get(handler)
        self._armed_changes = -1  # hub.changes when the ticker's deadline was last checked
        #: The one reader of the plain sockets accepted here (made with the
        #: first plain socket listener, where epoll exists).
        self._poller: Poller | None = None

    @property
    def _nursery(self) -> trio.Nursery:
        """The server-wide nursery: connections, handlers, hooks, backlogs."""
        nursery = self._nursery_
        if nursery is None:
            raise RuntimeError("this server is not serving (start it with serve_listeners)")
        return nursery

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
        """Write a wire's output and act on its actions; keep the ticker's
        deadline at the hub's next wake-up."""
        transport = self._transports.get(wire)
        if transport is None:
            return  # its stream is closed: nothing more to write or deliver
        carry_out(wire, transport, self)
        if self._written(transport):
            self._arm()

    def _reset(self, wire: ServerConnection) -> None:
        transport = self._transports.get(wire)
        if transport is not None:  # still flushing: drop it
            transport.abort()

    def _write_ping(self, wire: ServerConnection, frame: bytes) -> None:
        """The timer's fast lane: the ping straight to the transport (which
        queues it behind a backlog, if any); no actions to act on."""
        transport = self._transports.get(wire)
        if transport is None:
            return
        transport.write(frame)
        self._written(transport)

    def _written(self, transport: _Transport) -> bool:
        """After writes: a failed send loses the connection (False); else the
        wire's ``write_buffer_size`` is the backlog the kernel refused."""
        error = transport.error
        if error is not None:
            transport.error = None
            self._lost(transport, error)
            return False
        transport.wire.write_buffer_size = transport.backlog()
        return True

    def _arm(self) -> None:
        """Move the ticker's deadline earlier if the hub's wake-up moved earlier."""
        timer = self._timer
        if timer is None:
            return  # the ticker is ticking: it re-reads the wake-up next
        changes = self.hub.changes
        if changes == self._armed_changes:
            return  # no deadline moved since the last look (a pong, a message)
        self._armed_changes = changes
        wakeup = self.hub.next_wakeup()
        if wakeup is not None and wakeup < timer.deadline:
            timer.deadline = wakeup

    def _rearm(self) -> None:
        self._armed_changes = -1  # the fleet's wake-up is not in hub.changes
        self._arm()

    async def _tick_forever(self) -> None:
        """The one timer of every connection."""
        hub = self.hub
        while True:
            self._armed_changes = hub.changes
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

    # -------------------------------------------------------------- accepting

    async def _accept(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        plain_only: bool,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listener`` until cancelled, then close it."""
        async with listener:
            listening = (
                _stdlib_socket(listener.socket)
                if isinstance(listener, trio.SocketListener)
                else None
            )
            if listening is not None and self._poller is None and _CAN_POLL:
                self._poller = Poller(self)
                self._nursery.start_soon(self._poller.run, name=_POLLER)
            task_status.started()
            if listening is not None:
                await self._accept_sockets(listening, plain_only)
            else:
                await self._accept_streams(listener, plain_only)

    async def _accept_sockets(self, listening: socket.socket, plain_only: bool) -> None:
        """A plain socket listener: take every waiting connection per wake-up
        and hand it to the poller (or, without one, start its one task); its
        handshake is read there, not here. Accepted after the poller stopped
        (the server is stopping too): a task of its own ends it."""
        nursery = self._nursery
        serve = self._serve_socket
        poller = self._poller
        while True:
            await trio.lowlevel.wait_readable(listening)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, address = listening.accept()
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno in _ACCEPT_IGNORABLE:
                        continue
                    if error.errno not in _ACCEPT_CAPACITY:
                        raise
                    log.error("accept failed (%s); retrying in 0.1 s", error)
                    await trio.sleep(0.1)
                    break
                if poller is not None and not poller.stopped:
                    self._poll_socket(poller, sock, address, plain_only)
                else:
                    nursery.start_soon(serve, sock, address, plain_only, name=_CONNECTION)

    async def _accept_streams(
        self, listener: trio.abc.Listener[trio.abc.Stream], plain_only: bool
    ) -> None:
        """Any other listener (TLS, memory): its streams, one at a time."""
        nursery = self._nursery
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                if error.errno not in _ACCEPT_CAPACITY:
                    raise
                log.error("accept failed (%s); retrying in 0.1 s", error)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._serve_stream, stream, plain_only, name=_CONNECTION)

    # ------------------------------------------------------------ connections

    def _accepted(
        self, sock: socket.socket, address: object, plain_only: bool
    ) -> _Transport | None:
        """A socket from the server's own accept loop, made non-blocking and
        tuned, with its wire; None if its descriptor has gone bad already."""
        try:
            sock.setblocking(False)
            _tune(sock)
        except OSError:  # nothing to serve
            sock.close()
            return None
        return self._open(sock, None, peer_address(address), plain_only)

    async def _serve_socket(self, sock: socket.socket, address: object, plain_only: bool) -> None:
        """The one task of a connection from the server's own accept loop."""
        transport = self._accepted(sock, address, plain_only)
        if transport is not None:
            await self._run_socket(transport, sock)

    def _poll_socket(
        self, poller: Poller, sock: socket.socket, address: object, plain_only: bool
    ) -> None:
        """A connection from the server's own accept loop, read by the poller:
        no task of its own."""
        transport = self._accepted(sock, address, plain_only)
        if transport is not None:
            poller.add(transport)

    async def _run_socket(self, transport: _Transport, sock: socket.socket) -> None:
        """Read until the connection ends (then let a backlog finish);
        whatever happens, the wire reaches CLOSED and the socket is closed.
        One flat coroutine: an idle connection's memory is mostly the
        frames it waits in."""
        wire = transport.wire
        recv_into = sock.recv_into
        answer = self._answer
        ready = True  # a new connection's request is usually there already
        try:
            while not wire.ended and sock.fileno() >= 0:
                if wire.reading_paused:
                    await self._reading_resumed(transport)
                    continue
                if not ready:
                    await trio.lowlevel.wait_readable(sock)
                ready = False
                try:
                    size = recv_into(_RECEIVE)
                except BlockingIOError:
                    continue
                except OSError as error:
                    self._lost(transport, error)
                    break
                if size:
                    if not wire.receive_data(_RECEIVE[:size].tobytes(), trio.current_time()):
                        continue  # a lone pong: nothing to write or act on
                else:
                    wire.receive_eof(trio.current_time())
                if answer is not None and wire.messages_waiting:
                    answer_inline(transport.conn, answer)  # flushes
                else:
                    self.flush(wire)
            else:
                await self._writer_finished(transport)
        except trio.ClosedResourceError:
            pass  # closed under the wait: closed or terminated
        finally:
            # Only a cancellation (or a bug) gets here with the wire still open.
            wire.terminate(trio.current_time(), TerminationCause.SERVER_STOPPED)
            self.flush(wire)
            transport._shut()
            self._transports.pop(wire, None)
            self._check_drained()

    async def _serve_stream(
        self, stream: trio.abc.Stream, plain_only: bool = False, *, wait_handler: bool = False
    ) -> None:
        sock = _plain_socket(stream)
        served = None if sock is not None else stream
        transport = self._open(sock, served, _peer(stream), plain_only)
        transport.wait_handler = wait_handler
        if sock is not None:
            await self._run_socket(transport, sock)
        else:
            await self._run_stream(transport)
        if transport.handler_done is not None:
            await transport.handler_done.wait()

    def _open(
        self,
        sock: socket.socket | None,
        stream: trio.abc.Stream | None,
        peer: Address | None,
        plain_only: bool,
    ) -> _Transport:
        wire = self.hub.open(trio.current_time(), peer, plain_only=plain_only)
        transport = _Transport(self, wire, sock, stream)
        self._transports[wire] = transport
        self._arm()
        return transport

    async def _run_stream(self, transport: _Transport) -> None:
        """Read until the connection ends (then let the writer finish);
        whatever happens, the wire reaches CLOSED and the stream is closed."""
        stream = transport.stream
        assert transport.scope is not None
        assert stream is not None
        try:
            with transport.scope:
                await self._read_stream(transport, stream)
        finally:
            # Only a cancellation (or a bug) gets here with the wire still open.
            transport.wire.terminate(trio.current_time(), TerminationCause.SERVER_STOPPED)
            self.flush(transport.wire)
            try:
                await trio.aclose_forcefully(stream)
            finally:  # under cancellation, the await above raises
                self._transports.pop(transport.wire, None)
                self._check_drained()

    async def _read_stream(self, transport: _Transport, stream: trio.abc.Stream) -> None:
        wire = transport.wire
        while not wire.ended:
            if wire.reading_paused:
                await self._reading_resumed(transport)
                continue
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._lost(transport, error)
                return
            if data:
                wire.receive_data(bytes(data), trio.current_time())  # bytes: no copy
            else:
                wire.receive_eof(trio.current_time())
            answer = self._answer
            if answer is not None and wire.messages_waiting:
                answer_inline(transport.conn, answer)  # flushes
            else:
                self.flush(wire)
        await self._writer_finished(transport)

    @staticmethod
    async def _reading_resumed(transport: _Transport) -> None:
        transport.reading = trio.Event()
        await transport.reading.wait()
        transport.reading = None

    @staticmethod
    async def _writer_finished(transport: _Transport) -> None:
        """The wire has ended: a backlog still being sent is sent (the hub
        bounds it) before the socket closes."""
        if transport.writing:
            transport.writer_done = trio.Event()
            await transport.writer_done.wait()

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
        transport.aborting = True  # nothing more can be written
        transport.out.clear()
        self.flush(wire)
        transport._shut()


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
    await server._serve_stream(stream, plain_only, wait_handler=True)


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
    server._nursery_ = nursery
    nursery.start_soon(server._tick_forever)
    for serving, plain_only in ((listeners, False), (metrics_listeners, True)):
        for listener in serving:
            await nursery.start(server._accept, listener, plain_only)
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
