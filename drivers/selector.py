"""The threaded-selector driver: one I/O thread, a bounded pool of handler threads.

Threads:

* ONE I/O thread multiplexes the listening socket, every client socket and
  the heartbeat with :class:`selectors.DefaultSelector`. Its ``select``
  timeout is the time to ``hub.next_wakeup()``: one wake-up for the earliest
  deadline of all connections, never a timer per connection. A socketpair
  wakes it when another thread has produced output or asked for something
  (a drain, a resumed read, a close). It alone touches sockets and the
  selector: sockets are non-blocking, each connection has an outbound
  bytearray, ``EVENT_WRITE`` is selected only while that is non-empty, and
  ``wire.write_buffer_size`` is its length after every flush.
* A BOUNDED pool of ``workers`` handler threads, started with the server,
  runs handler code with a blocking API. Idle connections cost no thread.

The core is not thread-safe: one :class:`threading.Lock` guards the hub and
every wire. The I/O thread reads ready sockets without it, then takes it once
per batch of ready events (feed input, run due deadlines, turn wire output
into socket writes); worker threads take it for each connection call and for
each message they take. Nobody holds it while blocking on I/O or running
handler code. The connection methods are safe from any thread but the I/O
thread itself.

Handlers run per burst, not once per connection (unlike the asyncio driver,
where a handler task lives as long as its connection)::

    def handler(conn: Connection) -> None:
        for message in conn:          # the messages queued so far
            conn.send(message)
        # the queue is empty; the connection stays open

    server = serve(handler, "127.0.0.1", 8765, config=Config(...), workers=8)
    server.wait_drained()             # another thread calls server.begin_drain()
    server.close()

* ``handler(conn)`` is submitted to the pool when a message is queued for a
  connection with no run in progress; ``for message in conn`` yields the
  queued messages and ends when the queue is empty; the handler runs again
  for the next burst. At most one run per connection at a time, so messages
  are handled in order. A connection with no message queued holds no thread.
* Returning is normal: it ends the burst, not the connection (close it with
  ``conn.close()``). Messages still queued when a run returns (they arrived
  after its iteration ended, or it broke out early) start the next run at
  once; but if the run read none at all they are dropped (logged), so a
  handler that ignores its messages cannot spin a worker.
* A handler that raises: ``handler failed`` is logged with the traceback and
  the connection closes with 1011; one that gets
  :class:`~wslifecycle.ConnectionClosed` ends quietly. Either way the
  messages still queued are dropped: nobody can answer them.

Listeners: ``host:port`` or ``unix_path``, and ``host:metrics_port`` for
``/healthz`` and ``/metrics`` only. With ``ssl``, TLS runs in the I/O thread
(``_tls.TlsSession``, memory buffers): raw bytes → the session → plaintext
to the wire, the wire's output → the session → the socket.

Backpressure, teardown and drain are the core's; the driver only carries
them out (while the wire says ``reading_paused`` the socket is not selected
for reading). ``begin_drain`` is thread-safe and takes no lock (a signal
handler may call it); the I/O thread drains, and once every connection is
CLOSED and its socket closed, stops listening and ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, Unpack

from wslifecycle import ConnectionClosed, State
from wslifecycle.fleet.link import LinkEvent
from wslifecycle.handshake import HandshakeRequest, ProcessRequest
from wslifecycle.hub import Hub
from wslifecycle.wire import ServerConnection

from ._common import (
    ConnectionBase,
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
from ._listen import check_address, listen_error, listen_unix, tcp_where
from ._selector_client import Client, ClientStopped, connect
from ._tls import TlsSession, check_context, feed_wire

__all__ = [
    "Client",
    "ClientStopped",
    "Connection",
    "Handler",
    "Server",
    "connect",
    "echo_handler",
    "relay_handler",
    "serve",
]

T = TypeVar("T")
Handler = Callable[["Connection"], None]

#: Handler threads by default (as many as concurrent.futures would start).
DEFAULT_WORKERS = min(32, (os.cpu_count() or 1) + 4)
RECV_SIZE = 65536
#: The I/O thread reads every socket into this one buffer and copies out what
#: arrived (``sock.recv(n)`` would allocate and shrink n bytes on every read).
_RECEIVE = memoryview(bytearray(RECV_SIZE))
#: Accepts per batch, so a connection storm cannot starve the other sockets.
ACCEPT_BATCH = 64
#: Out of descriptors or memory: stop accepting for this long (seconds).
ACCEPT_RETRY_DELAY = 1.0
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
#: What an accept gives the batch: the socket, its peer, whether it came
#: from the metrics listener.
_Accepted = tuple[socket.socket, Any, bool]


class Connection(ConnectionBase):
    """A WebSocket connection as a handler sees it; safe from any thread
    except the server's I/O thread."""

    __slots__ = ("_closed", "_consumed", "_running")

    _server: Server

    def __init__(self, server: Server, wire: ServerConnection) -> None:
        super().__init__(server, wire)
        # Guarded by the server's lock:
        self._consumed = 0  # messages taken by handler runs so far
        self._running = False  # a handler run is queued or in progress
        self._closed = threading.Event()

    def send(self, data: str | bytes, *, critical: bool = False) -> int | None:
        with self._server._lock:
            return super().send(data, critical=critical)

    def subscribe(
        self,
        channel: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        presence: bool = False,
    ) -> None:
        with self._server._lock:
            super().subscribe(channel, since=since, epoch=epoch, presence=presence)

    def unsubscribe(self, channel: str) -> None:
        with self._server._lock:
            super().unsubscribe(channel)

    def relay(self, message: str | bytes) -> None:
        with self._server._lock:
            super().relay(message)

    def close(self, code: int = 1000, reason: str = "", *, timeout: float | None = None) -> bool:
        """Close with ``code`` and wait until the connection is CLOSED (at most
        ``timeout`` seconds; by default the close timeout plus one second, by
        when the core has terminated it). Returns whether it is CLOSED."""
        server = self._server
        with server._lock:
            if self.state is not State.CLOSED:
                self.wire.close(server.now(), code, reason)
                server.flush(self.wire)
        if timeout is None:
            timeout = server.hub.config.close_timeout + 1.0
        return self._closed.wait(timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection is CLOSED; whether it is."""
        return self._closed.wait(timeout)

    def __iter__(self) -> Connection:
        return self

    def __next__(self) -> str | bytes:
        """The next queued message; StopIteration once the queue is empty."""
        with self._server._lock:
            message = self._take()
            if message is None:
                raise StopIteration
            self._consumed += 1
            return message


class _Transport:
    """The socket side of one connection, and the transport operations that
    carry out its wire's output. Only the I/O thread touches it."""

    __slots__ = (
        "closing",
        "conn",
        "events",
        "lingering",
        "outbound",
        "peer",
        "server",
        "sock",
        "tls",
    )

    def __init__(
        self,
        server: Server,
        conn: Connection,
        sock: socket.socket,
        peer: Any,
        tls: TlsSession | None,
    ) -> None:
        self.server = server
        self.conn = conn
        self.sock: socket.socket | None = sock  # None once closed
        self.peer = peer  # (host, port) over TCP; "" over a unix socket
        self.tls = tls
        self.outbound = bytearray()
        self.events = 0  # what the selector watches for; 0 = not registered
        self.closing = False  # close the socket once ``outbound`` is written
        self.lingering = False  # the hub bounds how long that may take

    # TransportOps
    def write(self, data: bytes) -> None:
        if self.sock is not None:
            if self.tls is not None:
                data = self.tls.encrypt(data)
            self.outbound += data

    def close(self) -> None:
        if not self.closing and self.tls is not None and self.sock is not None:
            self.outbound += self.tls.close()  # close_notify, best effort
        self.closing = True

    def abort(self) -> None:
        self.server._drop(self, reset=True)

    def handshake(self, request: HandshakeRequest) -> None:
        # A worker runs the hook: it may block (a database, a token service).
        self.server._workers.submit(partial(self.server._run_hook, self.conn, request))

    def accepted(self) -> None:
        pass  # handlers run per burst of messages, not per connection

    def messages_waiting(self) -> None:
        conn = self.conn
        if not conn._running and not self.server._stopping:
            conn._running = True
            self.server._workers.submit(conn)

    def sync_reading(self, paused: bool) -> None:
        pass  # the flush that follows selects the socket by the wire's reading_paused

    def closed(self) -> None:
        self.conn._closed.set()


class _Workers:
    """A fixed pool of handler threads, started at once (so the thread count
    is constant: nothing to leak, nothing to grow)."""

    def __init__(self, count: int, run: Callable[[Connection], None]) -> None:
        if count < 1:
            raise ValueError(f"workers must be at least 1, got {count}")
        self._queue: queue.SimpleQueue[Connection | Callable[[], None] | None] = queue.SimpleQueue()
        self._run = run
        self.threads = [
            threading.Thread(target=self._work, name=f"wslifecycle-worker-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, job: Connection | Callable[[], None]) -> None:
        """A handler run for a connection, or any other call (a handshake hook)."""
        self._queue.put(job)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if isinstance(job, Connection):
                self._run(job)
            else:
                job()

    def shutdown(self, timeout: float) -> None:
        """Let queued runs finish, then stop; threads still in user code
        after ``timeout`` seconds are left behind (they are daemons)."""
        for _ in self.threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class Server(ServerBase):
    """A running selector server: the hub, the I/O thread, the handler pool."""

    def __init__(
        self,
        handler: Handler,
        hub: Hub,
        workers: int = DEFAULT_WORKERS,
        process_request: ProcessRequest | None = None,
        *,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self._process_request = process_request
        self.hub = hub
        self._tls_context = check_context(ssl)
        self._workers = _Workers(workers, self._run_handler)  # checked before sockets exist
        self._lock = threading.Lock()
        # Guarded by the lock:
        self._transports: dict[ServerConnection, _Transport] = {}
        self._pending: dict[_Transport, None] = {}  # flush these in the next batch
        self._wake_pending = False  # a wake-up is on its way (or the I/O thread is awake)
        self._stopping = False  # no more handler runs
        # Set by any thread, read by the I/O thread:
        self._drain_requested = False
        self._stop_requested = False
        # The I/O thread's own:
        self._selector = selectors.DefaultSelector()
        # Listening socket → whether it is the metrics listener (plain HTTP only).
        self._listeners: dict[socket.socket, bool] = {}
        self._unix_path: str | None = None
        self._remove_unix_path: Callable[[], None] = _nothing
        self._wake_recv, self._wake_send = socket.socketpair()
        self._next_wakeup: float | None = None
        self._accept_resume_at: float | None = None
        self._drained = False
        self._finished = threading.Event()
        self._io_thread = threading.Thread(target=self._run, name="wslifecycle-io", daemon=True)

    # ----------------------------------------------------------------- control

    def now(self) -> float:
        return time.monotonic()

    def start(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        unix_path: str | os.PathLike[str] | None = None,
        metrics_port: int | None = None,
        backlog: int = 1024,
    ) -> None:
        """Listen on ``host:port`` or ``unix_path``, and on ``host:metrics_port``
        for ``/healthz`` and ``/metrics`` only (see ``_listen.py``); start the
        threads."""
        try:
            path = check_address(host, port, unix_path, metrics_port)
            if path is not None:
                sock, self._remove_unix_path = listen_unix(path, backlog)
                self._unix_path = path
                self._listeners[sock] = False
            else:
                assert host is not None  # checked
                assert port is not None
                self._listeners[_listen_tcp(host, port, "port", backlog)] = False
            if metrics_port is not None:
                assert host is not None  # checked
                self._listeners[_listen_tcp(host, metrics_port, "metrics_port", backlog)] = True
        except BaseException:
            for listener in self._listeners:
                listener.close()
            self._remove_unix_path()
            self._selector.close()
            self._wake_recv.close()
            self._wake_send.close()
            raise
        for sock in (self._wake_recv, self._wake_send):
            sock.setblocking(False)
        for listener in self._listeners:
            listener.setblocking(False)
            self._selector.register(listener, _READ)
        self._selector.register(self._wake_recv, _READ)
        self._workers.start()
        self._io_thread.start()
        lock = self._lock

        def hop(handle: Callable[[LinkEvent], None]) -> Callable[[LinkEvent], None]:
            from ._redis import locked_deliver  # the adapter's thread, holding the hub's lock

            return locked_deliver(lock, handle, _nothing)

        with lock:
            self._start_fleet(hop)

    @property
    def sockets(self) -> list[socket.socket]:
        """The WebSocket listener's socket."""
        return [sock for sock, plain_only in self._listeners.items() if not plain_only]

    @property
    def port(self) -> int:
        """The listening TCP port (useful with port 0)."""
        if self._unix_path is not None:
            raise RuntimeError(f"this server listens on the unix socket {self._unix_path}")
        port: int = self.sockets[0].getsockname()[1]
        return port

    @property
    def metrics_port(self) -> int | None:
        """The metrics listener's port (None: there is none)."""
        for sock, plain_only in self._listeners.items():
            if plain_only:
                port: int = sock.getsockname()[1]
                return port
        return None

    @property
    def threads(self) -> list[threading.Thread]:
        """The server's threads: the I/O thread, then the workers."""
        return [self._io_thread, *self._workers.threads]

    def begin_drain(self) -> None:
        """SIGTERM: new handshakes get 503, connections close with 1001, and
        what is left at the drain deadline is terminated. Thread-safe, takes
        no lock (so a signal handler may call it); the I/O thread does it."""
        self._drain_requested = True
        self._wake()

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait until the I/O thread has ended; whether it ended by draining
        (False: still running after ``timeout``, or closed or failed)."""
        return self._finished.wait(timeout) and self._drained

    def close(self, timeout: float = 5.0) -> None:
        """Stop: end the I/O thread (connections still open are terminated),
        then the workers once their runs finish (at most ``timeout`` s)."""
        self._stop_requested = True
        self._wake()
        if self._io_thread.is_alive():
            self._io_thread.join()
        self._workers.shutdown(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.begin_drain()
        config = self.hub.config
        self.wait_drained(config.drain_timeout + config.close_timeout)
        self.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the hub's lock held and return its result: how
        another thread reads the hub, its metrics or a wire. The lock is not
        reentrant: ``fn`` must not call connection methods."""
        with self._lock:
            return fn()

    def publish(self, channel: str, data: object) -> int:
        with self._lock:
            return super().publish(channel, data)

    # --------------------------------------------- called with the lock held

    def flush(self, wire: ServerConnection) -> None:
        """``wire`` may have output: the I/O thread flushes it in its next batch."""
        transport = self._transports.get(wire)
        if transport is None or transport.sock is None:
            return
        self._pending[transport] = None
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def _reset(self, wire: ServerConnection) -> None:
        transport = self._transports.get(wire)
        if transport is not None:
            self._drop(transport, reset=True)

    def _write_ping(self, wire: ServerConnection, frame: bytes) -> None:
        """The timer's fast lane, on the I/O thread: send the ping at once
        when nothing is queued before it; otherwise queue it and flush."""
        transport = self._transports.get(wire)
        if transport is None or transport.sock is None:
            return
        if transport.outbound or transport.tls is not None or transport.closing:
            wire.queue_frame(frame)  # behind what waits, or encrypted: the general path
            self._pending[transport] = None
            return
        try:
            sent = transport.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the peer is gone: the general path reports it
            sent = 0
        if sent < len(frame):
            transport.outbound += frame[sent:]
            self._pending[transport] = None  # write interest, and the error if any

    # ---------------------------------------------------------------- workers

    def _run_hook(self, conn: Connection, request: HandshakeRequest) -> None:
        """The handshake hook, on a worker; its answer goes to the wire (and
        is dropped if the handshake timed out meanwhile)."""
        hook = self._process_request
        assert hook is not None  # only a server with a hook defers handshakes
        answer: object
        try:
            answer = hook(request)
        except Exception as error:
            answer = error
        with self._lock:
            answer_handshake(self, conn.wire, answer)

    def _run_handler(self, conn: Connection) -> None:
        """One run of the handler for one burst of ``conn``'s messages."""
        wire = conn.wire
        consumed = conn._consumed  # only runs take messages, one run at a time
        failed = False
        try:
            self._handler(conn)
        except ConnectionClosed:
            failed = True  # the connection ended under the handler: nothing to report
        except Exception as error:
            failed = True
            log.exception("handler failed connection=%s", conn.id)
            with self._lock:
                wire.handler_failed(self.now(), f"{type(error).__name__}: {error}")
                self.flush(wire)
        with self._lock:
            if wire.messages_waiting and (failed or conn._consumed == consumed):
                if not failed:
                    log.warning(
                        "handler returned without reading connection=%s dropped=%d",
                        conn.id,
                        wire.messages_waiting,
                    )
                wire.drop_messages(self.now())
                self.flush(wire)  # reading resumes
            if wire.messages_waiting and not self._stopping:
                self._workers.submit(conn)  # messages arrived after the iteration ended
            else:
                conn._running = False

    # -------------------------------------------------------------- I/O thread

    def _wake(self) -> None:
        # Full: a wake-up is pending anyway. Closed: the I/O thread has ended.
        with contextlib.suppress(OSError):
            self._wake_send.send(b"\0")

    def _run(self) -> None:
        try:
            while self._serve_batch():
                pass
        except BaseException:
            log.exception("selector I/O thread failed")
            raise
        finally:
            self._shut_down()
            self._finished.set()

    def _select_timeout(self) -> float | None:
        wakeup = self._next_wakeup
        resume = self._accept_resume_at
        if resume is not None:
            wakeup = resume if wakeup is None else min(wakeup, resume)
        if wakeup is None:
            return None
        return max(0.0, wakeup - time.monotonic())

    def _serve_batch(self) -> bool:
        """Wait for sockets or the next wake-up, then handle one batch.
        Returns False once the server is done."""
        ready = self._selector.select(self._select_timeout())
        accepted: list[_Accepted] = []
        inputs: list[tuple[_Transport, bytes]] = []
        writable: list[_Transport] = []
        # Socket reads need no lock: only this thread touches sockets.
        for key, mask in ready:
            transport = key.data
            if transport is not None:
                assert isinstance(transport, _Transport)
                if mask & _READ and (data := self._recv(transport)) is not None:
                    inputs.append((transport, data))
                if mask & _WRITE:
                    writable.append(transport)
            elif key.fileobj is self._wake_recv:
                self._clear_wakeups()
            elif self._accept_resume_at is None:  # not paused earlier in this batch
                assert isinstance(key.fileobj, socket.socket)
                self._accept_some(key.fileobj, accepted)
        self._resume_accepting()
        with self._lock:
            return self._handle_batch(accepted, inputs, writable)

    def _handle_batch(
        self,
        accepted: list[_Accepted],
        inputs: list[tuple[_Transport, bytes]],
        writable: list[_Transport],
    ) -> bool:
        now = self.now()
        hub = self.hub
        self._wake_pending = True  # awake: what is touched now needs no wake-up byte
        for sock, peer, plain_only in accepted:
            self._open(sock, peer, plain_only, now)
        pending = self._pending
        # Input first: a pong that arrived is credited before its deadline runs.
        for transport, data in inputs:
            if transport.sock is None:
                continue  # dropped earlier in this batch
            wire = transport.conn.wire
            if not data:  # EOF or a socket error: nothing more is written
                wire.receive_eof(now)
                transport.outbound.clear()
            elif transport.tls is None:
                if not wire.receive_data(data, now):
                    continue  # a lone pong: nothing to write or act on
            else:  # the session's records go before the wire's output
                transport.outbound += feed_wire(transport.tls, wire, data, now)
            pending[transport] = None
        pending.update(dict.fromkeys(writable))
        if self._drain_requested and not hub.draining:
            self._drain_hub()
        wakeup = hub.next_wakeup()
        if wakeup is not None and wakeup <= now:
            self._run_timer()
        self._pending = {}
        self._wake_pending = False
        for transport in pending:
            self._flush(transport, now)
        self._next_wakeup = hub.next_wakeup()
        if hub.drained and not self._transports:
            self._drained = True
            return False
        return not self._stop_requested

    def _accept_some(self, listener: socket.socket, accepted: list[_Accepted]) -> None:
        plain_only = self._listeners[listener]
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _ACCEPT_RESOURCE_ERRORS:
                    # Level-triggered: a full descriptor table would spin.
                    # Every listener shares that table: all of them pause.
                    log.warning("accept paused for %.1f s: %s", ACCEPT_RETRY_DELAY, error)
                    for each in self._listeners:
                        self._selector.unregister(each)
                    self._accept_resume_at = time.monotonic() + ACCEPT_RETRY_DELAY
                else:
                    log.warning("accept failed: %s", error)  # e.g. ECONNABORTED
                return
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            accepted.append((sock, peer, plain_only))

    def _resume_accepting(self) -> None:
        resume = self._accept_resume_at
        if resume is not None and time.monotonic() >= resume:
            self._accept_resume_at = None
            for listener in self._listeners:
                self._selector.register(listener, _READ)

    def _clear_wakeups(self) -> None:
        try:
            while self._wake_recv.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    @staticmethod
    def _recv(transport: _Transport) -> bytes | None:
        """Bytes read; b"" for EOF or a socket error; None for nothing yet."""
        assert transport.sock is not None
        try:
            size = transport.sock.recv_into(_RECEIVE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # ECONNRESET and friends: the transport is lost
            return b""
        return _RECEIVE[:size].tobytes()

    def _open(self, sock: socket.socket, peer: Any, plain_only: bool, now: float) -> None:
        # Opened at the TCP accept: the handshake deadline covers TLS too.
        wire = self.hub.open(now, peer_address(peer), plain_only=plain_only)
        context = None if plain_only else self._tls_context
        tls = TlsSession(context) if context is not None else None
        transport = _Transport(self, Connection(self, wire), sock, peer, tls)
        self._transports[wire] = transport
        self._selector.register(sock, _READ, transport)
        transport.events = _READ

    def _flush(self, transport: _Transport, now: float) -> None:
        """Carry out the wire's output, write what it can, adjust the selector."""
        wire = transport.conn.wire
        carry_out(wire, transport, self)
        sock = transport.sock
        if sock is None:
            return  # closed earlier, or terminated by these actions
        out = transport.outbound
        if out:
            try:
                del out[: sock.send(out)]  # the rest waits for EVENT_WRITE
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as error:  # the peer is gone
                out.clear()
                wire.transport_lost(now, f"{type(error).__name__}: {error}")
                carry_out(wire, transport, self)
        wire.write_buffer_size = len(out)
        if transport.closing:
            if not out:
                self._drop(transport, reset=False)
                return
            if not transport.lingering:  # a peer that stopped reading: bounded
                transport.lingering = True
                self.hub.closing(wire, now)
        reading = not (transport.closing or wire.reading_paused)
        wanted = (_READ if reading else 0) | (_WRITE if out else 0)
        if wanted != transport.events:
            if not transport.events:
                self._selector.register(sock, wanted, transport)
            elif not wanted:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, wanted, transport)
            transport.events = wanted

    def _rearm(self) -> None:
        """Called with the lock held: the I/O thread recomputes its wake-up."""
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def _drop(self, transport: _Transport, *, reset: bool) -> None:
        """Close the socket; with ``reset`` an RST (linger 0), not a FIN."""
        sock = transport.sock
        if sock is None:
            return
        transport.sock = None
        if transport.events:
            self._selector.unregister(sock)
            transport.events = 0
        if reset:
            reset_socket(sock)
        sock.close()
        transport.outbound.clear()
        del self._transports[transport.conn.wire]
        transport.conn._closed.set()

    def _shut_down(self) -> None:
        """The I/O thread ends: terminate what is still open, stop listening."""
        with self._lock:
            self._stopping = True
            self._stop_hub()
            for transport in list(self._transports.values()):
                carry_out(transport.conn.wire, transport, self)  # the terminate: an RST
                self._drop(transport, reset=True)
        self._stop_fleet()  # not under the lock: the adapter's threads may wait on it
        for listener in self._listeners:
            listener.close()
        self._remove_unix_path()
        self._selector.close()
        self._wake_recv.close()
        self._wake_send.close()


def _nothing() -> None:
    pass


def _listen_tcp(host: str, port: int, name: str, backlog: int) -> socket.socket:
    """A listening TCP socket; an error names serve() and the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as error:
        raise listen_error(error, tcp_where(host, port, name)) from error


def serve(
    handler: Handler,
    host: str | None = None,
    port: int | None = None,
    *,
    unix_path: str | os.PathLike[str] | None = None,
    ssl: _ssl.SSLContext | None = None,
    metrics_port: int | None = None,
    workers: int = DEFAULT_WORKERS,
    backlog: int = 1024,
    process_request: ProcessRequest | None = None,
    **hub: Unpack[HubOptions],
) -> Server:
    """Start serving ``handler`` on ``host:port``, or on the unix socket
    ``unix_path``, with ``workers`` handler threads; over TLS with ``ssl``;
    ``/healthz`` and ``/metrics`` also on ``host:metrics_port`` (``config``,
    ``entropy``, ``broker``: :class:`HubOptions`; ``process_request``: the
    handshake hook, run on a handler thread). Returns the running server,
    its I/O thread started."""
    check_address(host, port, unix_path, metrics_port)  # before anything is made
    check_handler(handler, driver="selector", coroutine=False)
    driver = driver_hub(defer_handshake=process_request is not None, **hub)
    server = Server(handler, driver, workers, process_request, ssl=ssl)
    server.start(host, port, unix_path=unix_path, metrics_port=metrics_port, backlog=backlog)
    return server


def relay_handler(conn: Connection) -> None:
    """The handler of ``wslifecycle serve``: the JSON pub/sub relay."""
    for message in conn:
        conn.relay(message)


def echo_handler(conn: Connection) -> None:
    """Echo every message back (the mode the Autobahn cases run against)."""
    for message in conn:
        conn.send(message, critical=True)
