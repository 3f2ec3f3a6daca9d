"""The blocking client, for scripts and threads: ``wslifecycle.drivers.selector.connect``.

    with connect("wss://example.com/feed", heartbeat_interval=20) as client:
        client.subscribe("news")
        for message in client:              # across reconnects
            ...

``connect`` returns once the first connection is up. ONE background thread
does all the I/O with a :class:`selectors.DefaultSelector`: the dial (a
non-blocking connect, TLS by ``_tls.TlsSession`` over memory buffers), the
socket, and the session's one timer (the ``select`` timeout is the time to
the scheduler's next wake-up), the backoff between connections. A
socketpair wakes it when another thread has output for it or closes.

The session is not thread-safe: one reentrant lock guards it. The I/O
thread holds it while it feeds input, runs the timer and turns the wire's
output into socket writes, never while it waits in ``select``; the
application's calls take it for each call. The callbacks run with it held
(``on_connect`` and ``on_reconnect`` on the I/O thread, ``on_drift`` on
the thread that reads the drift notice): they may call the client, and must
not block. ``close()`` ends the thread and closes the socket before it
returns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from typing import Any, Unpack

from wslifecycle.client import ClientConnection, Retry, Stop

from ._client import ClientCore, ClientOptions, ClientStopped
from ._common import reset_socket
from ._tls import TlsSession, describe

__all__ = ["Client", "ClientStopped", "connect"]

log = logging.getLogger("wslifecycle.client")

RECV_SIZE = 65536
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Closed(Exception):
    """close() was called while the I/O thread waited."""


class _Connection:
    """One connection's socket, its TLS and what waits to be written. Only
    the I/O thread touches it (with the lock held)."""

    def __init__(
        self,
        sock: socket.socket,
        tls: TlsSession | None,
        selector: selectors.BaseSelector,
        close_timeout: float,
    ) -> None:
        self.sock: socket.socket | None = sock  # None once closed
        self.tls = tls
        self.selector = selector
        self.events = 0  # what the selector watches the socket for; 0: not registered
        self.out = bytearray()
        self.closing_at: float | None = None  # CloseTransport came: give up writing then
        self.close_timeout = close_timeout

    # ClientOps
    def write(self, data: bytes) -> None:
        if self.sock is not None:
            self.out += self.tls.encrypt(data) if self.tls is not None else data

    def close(self) -> None:
        if self.closing_at is None:
            if self.tls is not None and self.sock is not None:
                self.out += self.tls.close()  # close_notify, best effort
            self.closing_at = time.monotonic() + self.close_timeout

    def abort(self) -> None:
        self.drop(reset=True)

    def watch(self, wanted: int) -> None:
        """Select the socket for ``wanted`` events (0: not at all)."""
        sock = self.sock
        if sock is None or wanted == self.events:
            return
        if not self.events:
            self.selector.register(sock, wanted)
        elif not wanted:
            self.selector.unregister(sock)
        else:
            self.selector.modify(sock, wanted)
        self.events = wanted

    def drop(self, *, reset: bool) -> None:
        """Close the socket; with ``reset`` an RST (linger 0), not a FIN."""
        sock = self.sock
        if sock is not None:
            self.watch(0)  # before the close: the selector keeps closed sockets' keys
            self.sock = None
            self.out.clear()
            if reset:
                reset_socket(sock)
            sock.close()


class Client:
    """A client across its reconnects (see :func:`connect`). Its methods
    are safe from any thread."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._selector = selectors.DefaultSelector()
        self._wake_recv, self._wake_send = socket.socketpair()
        for sock in (self._wake_recv, self._wake_send):
            sock.setblocking(False)
        self._selector.register(self._wake_recv, _READ)
        self._connection: _Connection | None = None
        self._finished = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="wslifecycle-client", daemon=True)

    # ------------------------------------------------------------- what it is

    @property
    def connected(self) -> bool:
        """True while a connection is up (``send`` works)."""
        with self._lock:
            return self._core.session.connected

    @property
    def latency(self) -> float | None:
        """The last pong's round-trip time in seconds (None before the first)."""
        with self._lock:
            return self._core.latency

    @property
    def connections(self) -> int:
        """Connections made so far (upgrades that succeeded)."""
        with self._lock:
            return self._core.session.connections

    @property
    def stopped(self) -> Stop | None:
        """Why the client will not reconnect (None while it may)."""
        with self._lock:
            return self._core.stopped

    # -------------------------------------------------------- the application

    def send(self, data: str | bytes) -> None:
        """Send a message on the current connection; raises
        :class:`~wslifecycle.ConnectionClosed` while not connected."""
        with self._lock:
            self._core.session.send(data, time.monotonic())
        self._wake()

    def subscribe(self, channel: str, *, presence: bool = False) -> None:
        """Follow ``channel`` (relay protocol) on this and every later
        connection, resumed with ``since`` after a reconnect."""
        with self._lock:
            self._core.session.subscribe(channel, time.monotonic(), presence=presence)
        self._wake()

    def unsubscribe(self, channel: str) -> None:
        with self._lock:
            self._core.session.unsubscribe(channel, time.monotonic())
        self._wake()

    def publish(self, channel: str, data: object) -> None:
        """Publish JSON ``data`` on ``channel``; raises ConnectionClosed
        while not connected."""
        with self._lock:
            self._core.session.publish(channel, data, time.monotonic())
        self._wake()

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message, waiting at most ``timeout`` seconds (None:
        until one comes). Raises TimeoutError when the time is up, and
        :class:`ClientStopped` once the client has stopped (closed, or the
        policy gave up) and every message was read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                wire = self._core.session.wire
                paused = wire is not None and wire.reading_paused
                message = self._core.take(time.monotonic())
                if message is not None:
                    if paused and wire is not None and not wire.reading_paused:
                        self._wake()  # the socket is read again
                    return message
                if self._finished:
                    raise self._core.stop_error() from self._failure
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message within {timeout} s")
                self._changed.wait(remaining)

    def __iter__(self) -> Client:
        return self

    def __next__(self) -> str | bytes:
        """The next message; StopIteration once the client has stopped."""
        try:
            return self.recv()
        except ClientStopped:
            raise StopIteration from None

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (the closing handshake, bounded by ``close_timeout``) and
        stop reconnecting; returns once the I/O thread has ended and the
        socket is closed (called from a callback, it does not wait)."""
        with self._lock:
            self._core.close(time.monotonic(), code, reason)
        self._wake()
        if threading.current_thread() is not self._thread and self._thread.ident is not None:
            config = self._core.config
            self._thread.join(config.close_timeout + config.handshake_timeout + 1.0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ the I/O thread

    def _start(self) -> None:
        """Start the I/O thread and wait for the first connection; raise
        :class:`ClientStopped` if the client stops first."""
        self._thread.start()
        with self._changed:
            while not self._core.session.connections:  # made one (it may be gone already)
                if self._finished:
                    raise self._core.stop_error() from self._failure
                self._changed.wait()

    def _stop(self) -> Stop:
        stop = self._core.stopped
        assert stop is not None
        return stop

    def _wake(self) -> None:
        # Full: a wake-up is pending anyway. Closed: the I/O thread has ended.
        with contextlib.suppress(OSError):
            self._wake_send.send(b"\0")

    def _main(self) -> None:
        try:
            while True:
                step = self._attempt()
                if isinstance(step, Stop):
                    return
                try:
                    self._wait(None, 0, time.monotonic() + step.delay)
                except TimeoutError:
                    continue  # the backoff is over
                except _Closed:
                    return
        except BaseException as error:
            log.exception("client I/O thread failed")
            self._failure = error
        finally:
            with self._changed:
                connection = self._connection
                if connection is not None:  # only a failure leaves one
                    connection.drop(reset=True)
                self._core.finished(self._failure)
                self._finished = True
                self._changed.notify_all()
            self._selector.close()
            self._wake_recv.close()
            self._wake_send.close()

    def _closing(self) -> bool:
        with self._lock:
            return self._core.closing

    def _wait(self, sock: socket.socket | None, events: int, deadline: float) -> None:
        """Wait until ``sock`` is ready for ``events``: TimeoutError at
        ``deadline``, _Closed if close() comes first."""
        if sock is not None:
            self._selector.register(sock, events)
        try:
            while True:
                if self._closing():
                    raise _Closed
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                for key, _ in self._selector.select(remaining):
                    if key.fileobj is self._wake_recv:
                        self._clear_wakeups()
                    else:
                        return
        finally:
            if sock is not None:
                self._selector.unregister(sock)

    def _clear_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_recv.recv(4096):
                pass

    def _attempt(self) -> Retry | Stop:
        """One attempt: dial, run the connection to its end; what next."""
        core = self._core
        try:
            dialed = self._dial(time.monotonic() + core.config.handshake_timeout)
        except _Closed:
            with self._lock:
                return self._stop()
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            with self._changed:
                step = core.dial_failed(time.monotonic(), error)
                self._changed.notify_all()
                return step
        with self._changed:
            if core.closing:
                dialed.drop(reset=True)
                return self._stop()
            wire = core.connect(time.monotonic())
            self._connection = dialed
        self._run_connection(wire, dialed)
        with self._changed:
            self._connection = None
            step = core.ended(time.monotonic())
            self._changed.notify_all()
            return step

    def _dial(self, deadline: float) -> _Connection:
        """TCP (and TLS) to the target, before ``deadline``: each address in
        turn until one answers. A TLS failure or the deadline ends it."""
        core = self._core
        host, port = core.host, core.port
        error: OSError = OSError(f"{host}: no address")
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                self._connect(sock, address, deadline)
                if core.tls is None:
                    return _Connection(sock, None, self._selector, core.config.close_timeout)
                return self._handshake(sock, deadline)
            except (ssl.SSLError, TimeoutError):
                sock.close()
                raise
            except OSError as failed:
                sock.close()
                error = failed
            except BaseException:
                sock.close()
                raise
        raise error

    def _connect(self, sock: socket.socket, address: Any, deadline: float) -> None:
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code == errno.EINPROGRESS:
            self._wait(sock, _WRITE, deadline)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handshake(self, sock: socket.socket, deadline: float) -> _Connection:
        """The TLS handshake over memory buffers; raises ssl.SSLError if it fails."""
        core = self._core
        assert core.tls is not None
        tls = TlsSession(core.tls, server_hostname=core.host)
        out = bytearray(tls.start())
        while not tls.established:
            while out:
                self._wait(sock, _WRITE, deadline)
                del out[: sock.send(out)]
            self._wait(sock, _READ, deadline)
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionResetError("the server closed during the TLS handshake")
            plaintext, _ = tls.receive(data)  # raises ssl.SSLError
            out += tls.data_to_send()
            if plaintext:  # the server spoke first: not a WebSocket server
                raise ConnectionResetError("the server sent data before the upgrade request")
        connection = _Connection(sock, tls, self._selector, core.config.close_timeout)
        connection.out += out  # the handshake's last flight, if any
        return connection

    def _run_connection(self, wire: ClientConnection, connection: _Connection) -> None:
        """Serve one connection until its socket is closed."""
        with self._changed:
            self._flush(wire, connection, time.monotonic())
        while connection.sock is not None:
            data: bytes | None = None
            for key, mask in self._selector.select(self._prepare(wire, connection)):
                if key.fileobj is self._wake_recv:
                    self._clear_wakeups()
                    continue
                if mask & _READ:
                    data = self._recv(connection)
            with self._changed:
                now = time.monotonic()
                if data is not None and connection.sock is not None:
                    self._feed(wire, connection, data, now)
                wakeup = self._core.session.scheduler.next_wakeup()
                if wakeup is not None and wakeup <= now:
                    self._core.tick(now)
                self._flush(wire, connection, now)
                self._changed.notify_all()

    def _prepare(self, wire: ClientConnection, connection: _Connection) -> float | None:
        """Select the socket for what the wire wants; the ``select`` timeout
        (to the next wake-up, or the end of a lingering close)."""
        with self._lock:
            reading = connection.closing_at is None and not wire.reading_paused
            connection.watch((_READ if reading else 0) | (_WRITE if connection.out else 0))
            wakeup = self._core.session.scheduler.next_wakeup()
        closing_at = connection.closing_at
        if closing_at is not None:
            wakeup = closing_at if wakeup is None else min(wakeup, closing_at)
        return None if wakeup is None else max(0.0, wakeup - time.monotonic())

    @staticmethod
    def _recv(connection: _Connection) -> bytes | None:
        """Bytes read; b"" for EOF or a socket error; None for nothing yet."""
        sock = connection.sock
        assert sock is not None
        try:
            return sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # ECONNRESET and friends: the transport is lost
            return b""

    def _feed(
        self, wire: ClientConnection, connection: _Connection, data: bytes, now: float
    ) -> None:
        tls = connection.tls
        if not data:
            wire.receive_eof(now)
            return
        if tls is None:
            wire.receive_data(data, now)
            return
        try:
            plaintext, ended = tls.receive(data)
        except ssl.SSLError as error:  # the session is broken
            wire.transport_lost(now, f"TLS: {describe(error)}")
            return
        connection.out += tls.data_to_send()
        if plaintext:
            wire.receive_data(plaintext, now)
        if ended:
            wire.receive_eof(now)

    def _flush(self, wire: ClientConnection, connection: _Connection, now: float) -> None:
        """Carry out the wire's output and write what the socket takes."""
        self._core.carry_out(wire, connection, now)
        sock = connection.sock
        if sock is None:
            return  # aborted
        out = connection.out
        if out:
            try:
                del out[: sock.send(out)]  # the rest waits for EVENT_WRITE
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as error:  # the server is gone
                out.clear()
                wire.transport_lost(now, f"{type(error).__name__}: {error}")
                self._core.carry_out(wire, connection, now)
        wire.write_buffer_size = len(out)
        closing_at = connection.closing_at
        if closing_at is not None and (not out or now >= closing_at):
            connection.drop(reset=bool(out))  # a server that stopped reading: RST


def connect(url: str, **options: Unpack[ClientOptions]) -> Client:
    """A WebSocket client of ``url`` (``ws://`` or ``wss://``) that
    reconnects by its ``policy`` and resumes its subscriptions; returns
    once the first connection is up (retrying by the policy meanwhile).

    Raises :class:`ClientStopped` if the policy stops first (an HTTP 403, a
    1008, a certificate that does not verify). ``for message in client``
    and ``client.recv(timeout)`` read every message (str or bytes; relay
    frames as their JSON text) across reconnects; both end (StopIteration,
    ClientStopped) once the client is closed or has stopped
    (``client.stopped`` says why). Use it in a ``with`` block, or call
    ``client.close()``. A bad URL or option raises at the call."""
    client = Client(ClientCore(url, options))
    try:
        client._start()
    except BaseException:
        client.close()
        raise
    return client
