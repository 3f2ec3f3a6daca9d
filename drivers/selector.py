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
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar, Unpack

from wslifecycle import ConnectionClosed, State
from wslifecycle.handshake import HandshakeRequest, ProcessRequest
from wslifecycle.hub import Hub
from wslifecycle.wire import ServerConnection

from ._common import (
    ConnectionBase,
    HubOptions,
    ServerBase,
    answer_handshake,
    carry_out,
    driver_hub,
    log,
    peer_address,
    reset_socket,
)

__all__ = ["Connection", "Handler", "Server", "echo_handler", "relay_handler", "serve"]

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

    def subscribe(self, channel: str) -> None:
        with self._server._lock:
            super().subscribe(channel)

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
        "server",
        "sock",
    )

    def __init__(self, server: Server, conn: Connection, sock: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.sock: socket.socket | None = sock  # None once closed
        self.outbound = bytearray()
        self.events = 0  # what the selector watches for; 0 = not registered
        self.closing = False  # close the socket once ``outbound`` is written
        self.lingering = False  # the hub bounds how long that may take

    # TransportOps
    def write(self, data: bytes) -> None:
        if self.sock is not None:
            self.outbound += data

    def close(self) -> None:
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
    ) -> None:
        self._handler = handler
        self._process_request = process_request
        self.hub = hub
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
        self._listener: socket.socket | None = None
        self._wake_recv, self._wake_send = socket.socketpair()
        self._next_wakeup: float | None = None
        self._accept_resume_at: float | None = None
        self._drained = False
        self._finished = threading.Event()
        self._io_thread = threading.Thread(target=self._run, name="wslifecycle-io", daemon=True)
        self._workers = _Workers(workers, self._run_handler)

    # ----------------------------------------------------------------- control

    def now(self) -> float:
        return time.monotonic()

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
            answer_handshake(conn.wire, self.now(), answer)
            self.flush(conn.wire)

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
        accepted: list[tuple[socket.socket, object]] = []
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
                self._clear_wakeups()
        self._resume_accepting()
        with self._lock:
            return self._handle_batch(accepted, inputs, writable)

    def _handle_batch(
        self,
        accepted: list[tuple[socket.socket, object]],
        inputs: list[tuple[_Transport, bytes]],
        writable: list[_Transport],
    ) -> bool:
        now = self.now()
        hub = self.hub
        self._wake_pending = True  # awake: what is touched now needs no wake-up byte
        for sock, address in accepted:
            self._open(sock, address, now)
        pending = self._pending
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

    def _accept_some(self, accepted: list[tuple[socket.socket, object]]) -> None:
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
            accepted.append((sock, address))

    def _resume_accepting(self) -> None:
        resume = self._accept_resume_at
        if resume is not None and time.monotonic() >= resume and self._listener is not None:
            self._accept_resume_at = None
            self._selector.register(self._listener, _READ)

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

    def _open(self, sock: socket.socket, address: object, now: float) -> None:
        wire = self.hub.open(now, peer_address(address))
        transport = _Transport(self, Connection(self, wire), sock)
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
    workers: int = DEFAULT_WORKERS,
    backlog: int = 1024,
    process_request: ProcessRequest | None = None,
    **hub: Unpack[HubOptions],
) -> Server:
    """Start serving ``handler`` on ``host:port`` with ``workers`` handler
    threads (``config``, ``entropy``, ``broker``: :class:`HubOptions`;
    ``process_request``: the handshake hook, run on a handler thread);
    returns the running server, its I/O thread started."""
    driver = driver_hub(defer_handshake=process_request is not None, **hub)
    server = Server(handler, driver, workers, process_request)
    server.start(host, port, backlog=backlog)
    return server


def relay_handler(conn: Connection) -> None:
    """The handler of ``wslifecycle serve``: the JSON pub/sub relay."""
    for message in conn:
        conn.relay(message)


def echo_handler(conn: Connection) -> None:
    """Echo every message back (the mode the Autobahn cases run against)."""
    for message in conn:
        conn.send(message, critical=True)
