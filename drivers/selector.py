"""The threaded-selector driver: one I/O thread, a bounded pool of handler threads.

Threads:

* ONE I/O thread multiplexes the listening socket, every client socket and
  the heartbeat with :class:`selectors.DefaultSelector`. Its ``select``
  timeout is the time to ``hub.next_deadline()``: one wake-up for the earliest
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
into socket writes); worker threads take it for each ``send``, ``close``,
``subscribe``, ``publish`` and for each message they take from the queue.
Nobody holds it while blocking on I/O or running handler code. The
connection methods are safe from any thread but the I/O thread itself.

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
  the connection closes with 1011 (``handler_failed``); one that gets
  :class:`~wslifecycle.ConnectionClosed` ends quietly. Either way the
  messages still queued are dropped: nobody can answer them.
* Inbound backpressure: past ``QUEUE_HIGH_WATER`` queued messages the socket
  is no longer selected for reading and ``lifecycle.reading_paused`` is set
  (unread pongs then blame nobody); reading resumes at ``QUEUE_LOW_WATER``.

Teardown is the core's; the driver only carries it out. ``Terminate`` is an
RST (``SO_LINGER`` (1, 0), then close). ``CloseTransport`` closes once the
outbound buffer is written (after EOF or a failed write nothing more is).
``begin_drain`` (thread-safe, also from a signal handler) asks the I/O thread
to drain: handshakes get 503, connections close with 1001, stragglers are
terminated at the drain deadline; once every connection is CLOSED and its
socket closed, the I/O thread stops listening and ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

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

__all__ = ["Connection", "Handler", "Server", "echo_handler", "relay_handler", "serve"]

T = TypeVar("T")
Handler = Callable[["Connection"], None]

#: Messages queued for a handler before reading from its socket pauses.
QUEUE_HIGH_WATER = 64
QUEUE_LOW_WATER = 16
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
_RST = struct.pack("ii", 1, 0)


class Connection(ConnectionBase):
    """A WebSocket connection as a handler sees it; safe from any thread
    except the server's I/O thread.

    ``send`` never blocks: above the write-buffer guard a non-critical send is
    skipped and returns None. Once the connection is closing, ``send``,
    ``subscribe`` and ``publish`` raise :class:`~wslifecycle.ConnectionClosed`.
    """

    __slots__ = (
        "_closed",
        "_consumed",
        "_messages",
        "_paused",
        "_running",
        "_server",
        "_transport",
    )

    def __init__(self, server: Server, wire: ServerConnection) -> None:
        self._server = server
        self.wire = wire
        self._transport: _Transport | None = None
        # Guarded by the server's lock:
        self._messages: deque[str | bytes] = deque()
        self._consumed = 0  # messages taken by handler runs so far
        self._running = False  # a handler run is queued or in progress
        self._paused = False  # reading paused: the handler is behind
        self._closed = threading.Event()

    # ------------------------------------------------------------ handler API

    def send(self, data: str | bytes, *, critical: bool = False) -> int | None:
        """Send a message; its sequence number, or None if skipped (slow peer)."""
        server = self._server
        with server._lock:
            seq = self.wire.send(data, time.monotonic(), critical=critical)
            server._touch(self)
        return seq

    def close(self, code: int = 1000, reason: str = "", *, timeout: float | None = None) -> bool:
        """Close with ``code`` and wait until the connection is CLOSED (at most
        ``timeout`` seconds; by default the close timeout plus one second, by
        when the core has terminated it). Returns whether it is CLOSED."""
        server = self._server
        with server._lock:
            if self.wire.lifecycle.state is not State.CLOSED:
                self.wire.close(time.monotonic(), code, reason)
                server._touch(self)
        if timeout is None:
            timeout = server.hub.config.close_timeout + 1.0
        return self._closed.wait(timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the connection is CLOSED; whether it is."""
        return self._closed.wait(timeout)

    def subscribe(self, channel: str) -> None:
        with self._server._lock:
            self._server.hub.subscribe(self.wire, channel)

    def unsubscribe(self, channel: str) -> None:
        with self._server._lock:
            self._server.hub.unsubscribe(self.wire, channel)

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel``; how many got it."""
        return self._server.publish(channel, data)

    def __iter__(self) -> Connection:
        return self

    def __next__(self) -> str | bytes:
        """The next queued message; StopIteration once the queue is empty."""
        server = self._server
        with server._lock:
            messages = self._messages
            if not messages:
                raise StopIteration
            self._consumed += 1
            if self._paused and len(messages) <= QUEUE_LOW_WATER:
                server._resume_reading(self)
            return messages.popleft()


class _Transport:
    """The socket side of one connection, and the :class:`TransportOps` that
    carry out its wire's events. Only the I/O thread touches it."""

    __slots__ = (
        "closing",
        "conn",
        "events",
        "lingering",
        "outbound",
        "peer_port",
        "server",
        "sock",
    )

    def __init__(self, server: Server, conn: Connection, sock: socket.socket, port: int) -> None:
        self.server = server
        self.conn = conn
        self.sock: socket.socket | None = sock  # None once closed
        self.peer_port = port
        self.outbound = bytearray()
        self.events = 0  # what the selector watches for; 0 = not registered
        self.closing = False  # close the socket once ``outbound`` is written
        self.lingering = False  # the hub bounds how long that may take

    def write(self, data: bytes) -> None:
        if self.sock is not None:
            self.outbound += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.server._drop(self, reset=True)

    def accepted(self) -> None:
        pass  # handlers run per burst of messages, not per connection

    def deliver(self, data: str | bytes) -> None:
        self.server._deliver(self.conn, data)

    def resume_reading(self) -> None:
        conn = self.conn  # in the I/O thread: the flush that follows re-registers
        if conn._paused:
            conn._paused = False
            conn.wire.lifecycle.reading_paused = False

    def closed(self) -> None:
        self.conn._closed.set()


class _Workers:
    """A fixed pool of handler threads, started at once (so the thread count
    is constant: nothing to leak, nothing to grow)."""

    def __init__(self, count: int, run: Callable[[Connection], None]) -> None:
        if count < 1:
            raise ValueError(f"workers must be at least 1, got {count}")
        self._queue: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._run = run
        self.threads = [
            threading.Thread(target=self._work, name=f"wslifecycle-worker-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, conn: Connection) -> None:
        self._queue.put(conn)

    def _work(self) -> None:
        while (conn := self._queue.get()) is not None:
            self._run(conn)

    def shutdown(self, timeout: float) -> None:
        """Let queued runs finish, then stop; threads still in user code
        after ``timeout`` seconds are left behind (they are daemons)."""
        for _ in self.threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class Server:
    """A running selector server: the hub, the I/O thread, the handler pool."""

    def __init__(
        self,
        handler: Handler,
        config: Config,
        *,
        entropy: Entropy | None = None,
        broker: Broker[ServerConnection] | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self._handler = handler
        self.hub = driver_hub(config, entropy, broker)
        self._lock = threading.Lock()
        # Guarded by the lock:
        self._transports: dict[_Transport, None] = {}
        self._pending: dict[_Transport, None] = {}  # flush these in the next batch
        self._wake_pending = False
        self._stopping = False  # no more handler runs
        # Set by any thread, read by the I/O thread:
        self._drain_requested = False
        self._stop_requested = False
        # The I/O thread's own:
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_recv, self._wake_send = socket.socketpair()
        self._next_deadline: float | None = None
        self._accept_resume_at: float | None = None
        self._drained = False
        self._finished = threading.Event()
        self._io_thread = threading.Thread(target=self._run, name="wslifecycle-io", daemon=True)
        self._workers = _Workers(workers, self._run_handler)

    # ----------------------------------------------------------------- control

    def start(self, host: str, port: int, *, backlog: int = 1024) -> None:
        try:
            listener = socket.create_server((host, port), backlog=backlog)
        except OSError:
            self._selector.close()
            self._wake_recv.close()
            self._wake_send.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        for sock in (self._wake_recv, self._wake_send):
            sock.setblocking(False)
        self._selector.register(listener, _READ)
        self._selector.register(self._wake_recv, _READ)
        self._workers.start()
        self._io_thread.start()

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._listener] if self._listener is not None else []

    @property
    def port(self) -> int:
        """The listening port (useful with port 0)."""
        assert self._listener is not None
        port: int = self._listener.getsockname()[1]
        return port

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
        """Stop: end the I/O thread (connections still open are dropped),
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
        """Relay-format ``data`` to every member of ``channel``; how many got it."""
        with self._lock:
            receivers = publish(self.hub, channel, data, time.monotonic())
            for wire in receivers:
                self._touch(wire.context)
        return len(receivers)

    # --------------------------------------------- called with the lock held

    def _touch(self, conn: Connection) -> None:
        """``conn``'s wire may have output: the I/O thread flushes it."""
        transport = conn._transport
        if transport is None or transport.sock is None:
            return
        self._pending[transport] = None
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def _deliver(self, conn: Connection, data: str | bytes) -> None:
        messages = conn._messages
        messages.append(data)
        if not conn._paused and len(messages) >= QUEUE_HIGH_WATER and conn.state is State.ACTIVE:
            # The handler is behind: stop reading (the flush unregisters the
            # socket). The lifecycle is told, so unread pongs blame nobody.
            conn._paused = True
            conn.wire.lifecycle.reading_paused = True
        if not conn._running and not self._stopping:
            conn._running = True
            self._workers.submit(conn)

    def _resume_reading(self, conn: Connection) -> None:
        conn._paused = False
        conn.wire.lifecycle.reading_paused = False
        self._touch(conn)  # the flush registers the socket for reading again

    # ---------------------------------------------------------------- workers

    def _run_handler(self, conn: Connection) -> None:
        """One run of the handler for one burst of ``conn``'s messages."""
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
                lifecycle = conn.wire.lifecycle
                if lifecycle.state is not State.CLOSED:
                    now = time.monotonic()
                    lifecycle.handler_failed(now, f"{type(error).__name__}: {error}")
                    conn.wire.pump(now)
                    self._touch(conn)
        with self._lock:
            messages = conn._messages
            if messages and (failed or conn._consumed == consumed):
                if not failed:
                    log.warning(
                        "handler returned without reading connection=%s dropped=%d",
                        conn.id,
                        len(messages),
                    )
                messages.clear()
                if conn._paused:
                    self._resume_reading(conn)
            if messages and not self._stopping:
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
        deadline = self._next_deadline
        resume = self._accept_resume_at
        if resume is not None:
            deadline = resume if deadline is None else min(deadline, resume)
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _serve_batch(self) -> bool:
        """Wait for sockets or the earliest deadline, then handle one batch.
        Returns False once the server is done."""
        ready = self._selector.select(self._select_timeout())
        accepted: list[tuple[socket.socket, int]] = []
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
            elif key.fileobj is self._listener:
                self._accept_some(accepted)
            else:
                self._drain_wakeups()
        self._resume_accepting()
        with self._lock:
            return self._handle_batch(accepted, inputs, writable)

    def _handle_batch(
        self,
        accepted: list[tuple[socket.socket, int]],
        inputs: list[tuple[_Transport, bytes]],
        writable: list[_Transport],
    ) -> bool:
        now = time.monotonic()
        hub = self.hub
        for sock, port in accepted:
            self._open(sock, port, now)
        touched: dict[_Transport, None] = {}
        # Input first: a pong that arrived is credited before its deadline runs.
        for transport, data in inputs:
            if transport.sock is None:
                continue  # dropped earlier in this batch
            wire = transport.conn.wire
            if data:
                wire.receive_data(data, now)
            else:  # EOF or a socket error: nothing more is written
                wire.receive_eof(now)
                transport.outbound.clear()
            touched[transport] = None
        touched.update(dict.fromkeys(writable))
        touched.update(self._pending)
        self._pending.clear()
        self._wake_pending = False
        if self._drain_requested and not hub.draining:
            log.info("drain begins connections=%d", len(self._transports))
            touched.update((wire.context._transport, None) for wire in hub.begin_drain(now))
        deadline = hub.next_deadline()
        if deadline is not None and deadline <= now:
            touched.update((wire.context._transport, None) for wire in hub.tick(now, TICK_BATCH))
            for alert in hub.take_alerts():
                log_alert(alert)
            for wire in hub.expired_closes(now):
                late: _Transport = wire.context._transport
                if late.sock is not None:
                    self._drop(late, reset=True)
        for transport in touched:
            self._flush(transport, now)
        self._next_deadline = hub.next_deadline()
        if hub.draining and hub.drained and not self._transports:
            self._drained = True
            return False
        return not self._stop_requested

    def _accept_some(self, accepted: list[tuple[socket.socket, int]]) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _ACCEPT_RESOURCE_ERRORS:
                    # Level-triggered: a full descriptor table would spin.
                    log.warning("accept paused for %.1f s: %s", ACCEPT_RETRY_DELAY, error)
                    self._selector.unregister(listener)
                    self._accept_resume_at = time.monotonic() + ACCEPT_RETRY_DELAY
                else:
                    log.warning("accept failed: %s", error)  # e.g. ECONNABORTED
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            accepted.append((sock, address[1]))

    def _resume_accepting(self) -> None:
        resume = self._accept_resume_at
        if resume is not None and time.monotonic() >= resume and self._listener is not None:
            self._accept_resume_at = None
            self._selector.register(self._listener, _READ)

    def _drain_wakeups(self) -> None:
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

    def _open(self, sock: socket.socket, port: int, now: float) -> None:
        wire = self.hub.open(now)
        conn = Connection(self, wire)
        transport = _Transport(self, conn, sock, port)
        conn._transport = transport
        wire.context = conn
        self._transports[transport] = None
        self._selector.register(sock, _READ, transport)
        transport.events = _READ

    def _flush(self, transport: _Transport, now: float) -> None:
        """Carry out the wire's events, write what it can, adjust the selector."""
        wire = transport.conn.wire
        drain_wire(wire, transport)
        sock = transport.sock
        if sock is None:
            return  # closed earlier, or terminated by these events
        out = transport.outbound
        if out:
            try:
                del out[: sock.send(out)]  # the rest waits for EVENT_WRITE
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # the peer is gone: the wire learns it as EOF
                out.clear()
                wire.receive_eof(now)
                drain_wire(wire, transport)
        wire.write_buffer_size = len(out)
        if transport.closing:
            if not out:
                self._drop(transport, reset=False)
                return
            if not transport.lingering:  # a peer that stopped reading: bounded
                transport.lingering = True
                self.hub.closing(wire, now)
        wanted = (0 if transport.closing or transport.conn._paused else _READ) | (
            _WRITE if out else 0
        )
        if wanted != transport.events:
            if not transport.events:
                self._selector.register(sock, wanted, transport)
            elif not wanted:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, wanted, transport)
            transport.events = wanted

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
            with contextlib.suppress(OSError):  # already reset by the peer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        sock.close()
        transport.outbound.clear()
        del self._transports[transport]
        transport.conn._closed.set()

    def _shut_down(self) -> None:
        """The I/O thread ends: drop what is still open, stop listening."""
        with self._lock:
            self._stopping = True
            now = time.monotonic()
            for transport in list(self._transports):
                wire = transport.conn.wire
                wire.receive_eof(now)  # releases its channels; CLOSED
                drain_wire(wire, transport)
                self._drop(transport, reset=True)
        if self._listener is not None:
            self._listener.close()
        self._selector.close()
        self._wake_recv.close()
        self._wake_send.close()


def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    config: Config | None = None,
    entropy: Entropy | None = None,
    broker: Broker[ServerConnection] | None = None,
    workers: int = DEFAULT_WORKERS,
    backlog: int = 1024,
) -> Server:
    """Start serving ``handler`` on ``host:port`` with ``workers`` handler
    threads; returns the running server (its I/O thread started)."""
    server = Server(handler, config or Config(), entropy=entropy, broker=broker, workers=workers)
    server.start(host, port, backlog=backlog)
    return server


def relay_handler(conn: Connection) -> None:
    """The handler of ``wslifecycle serve``: the JSON pub/sub relay."""
    server = conn._server
    for message in conn:
        with server._lock:
            receivers = handle_relay_message(server.hub, conn.wire, message, time.monotonic())
            server._touch(conn)
            for wire in receivers:
                server._touch(wire.context)


def echo_handler(conn: Connection) -> None:
    """Echo every message back (the mode the Autobahn cases run against)."""
    for message in conn:
        conn.send(message, critical=True)
