"""The driver side of the fleet's Redis link: :class:`RedisLink`.

It keeps the promises of :mod:`wslifecycle.fleet.link` for all three drivers
with redis-py's *sync* connections on two threads of its own (redis-py has
no Trio support, and one adapter then serves asyncio, the selector and Trio
alike):

* the **session thread** makes the connection attempts (both connections,
  ``PING``, ``SCRIPT LOAD``), owns the pub/sub connection (it polls that
  socket and a wake-up socketpair, pings Redis when the connection is idle)
  and delivers :class:`Connected`, :class:`Disconnected`, :class:`Listening`
  and :class:`Message`;
* the **command thread** owns the command connection, runs what was sent as
  one pipeline per batch and delivers :class:`Replies`.

Each thread delivers in order; a broken session ends with the command
thread's failed calls first, then the session thread's Disconnected (it
waits until the command thread gave the connection back).

Why raw redis-py connections and not ``Redis``/``Pipeline``/``PubSub``: those
reconnect by themselves (the pool's health check on every checkout, ``Retry``,
``PubSub`` resubscribing on connect), which would run calls on a new server
session or resubscribe behind the fleet's back. Here a connection that
breaks is never used again, and only :meth:`RedisLink.connect` opens new ones.

The driver wraps its handler with :func:`asyncio_deliver`,
:func:`trio_deliver` or :func:`locked_deliver` to get the ``deliver``
callable: events are delivered from this module's threads.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from wslifecycle.fleet.link import (
    Connected,
    Disconnected,
    LinkEvent,
    Listening,
    Message,
    RedisCall,
    RedisFailure,
    Replies,
    Reply,
    Script,
)

if TYPE_CHECKING:
    import asyncio

    from trio.lowlevel import TrioToken

__all__ = ["RedisLink", "asyncio_deliver", "locked_deliver", "trio_deliver"]

log = logging.getLogger("wslifecycle")

#: The answer to a call sent while no session is up.
UNAVAILABLE = "redis unavailable"

#: A pub/sub connection that heard nothing for this long (at most
#: ``command_timeout``) sends a PING: a hung Redis is noticed even when
#: nothing is published, and no later than this + ``command_timeout``.
IDLE_PING = 1.0

#: Pub/sub replies read in one round before listen requests get their turn.
READ_ROUND = 256


class _Wire(Protocol):
    """What this module uses of a redis-py ``Connection``.

    redis-py's connection methods are unannotated (``Any`` to mypy); the one
    cast to this protocol, in :meth:`RedisLink._new_connection`, gives them
    the types they have.
    """

    #: The connected socket (``None`` before connect, after disconnect).
    _sock: socket.socket | None

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def send_command(self, *args: str | bytes | int) -> None: ...
    def pack_commands(self, commands: list[tuple[str | bytes | int, ...]]) -> list[bytes]: ...
    def send_packed_command(self, command: list[bytes]) -> None: ...
    def can_read(self, timeout: float = 0) -> bool: ...
    def read_response(self) -> object: ...


class _State(enum.Enum):
    IDLE = "idle"  # no connection; connect() starts an attempt
    CONNECTING = "connecting"  # the session thread is making an attempt
    UP = "up"  # both connections answer; calls run
    BREAKING = "breaking"  # a connection broke; both are being closed


class _Refused(Exception):
    """Redis answered, but not as a connection attempt needs (a script's sha)."""


class RedisLink:
    """A :class:`wslifecycle.fleet.link.Link` over redis-py, on two threads.

    ``deliver`` is called from this link's threads, one event at a time per
    thread; wrap the driver's handler with :func:`asyncio_deliver`,
    :func:`trio_deliver` or :func:`locked_deliver`. The methods return at
    once and may be called from ``deliver`` itself.
    """

    def __init__(
        self,
        url: str,
        scripts: Sequence[Script],
        deliver: Callable[[LinkEvent], None],
        *,
        connect_timeout: float = 2.0,
        command_timeout: float = 2.0,
        name: str = "wslifecycle",
    ) -> None:
        self._scripts = tuple(scripts)
        self._deliver = deliver
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._idle_ping = min(IDLE_PING, command_timeout)
        # The pool only parses the URL (its connection class and arguments);
        # connections are made and closed here, never pooled.
        pool = redis.ConnectionPool.from_url(url)
        self._connection_class: Callable[..., Any] = pool.connection_class
        self._connection_kwargs: dict[str, Any] = {
            **pool.connection_kwargs,
            "decode_responses": False,
            "socket_timeout": command_timeout,
            "socket_connect_timeout": connect_timeout,
            "client_name": name,
            "protocol": 2,  # pub/sub replies are plain lists
            "health_check_interval": 0,
            "retry": Retry(NoBackoff(), 0),  # nothing is retried behind the fleet's back
        }
        kwargs = self._connection_kwargs
        self._where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = _State.IDLE
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._wake_recv: socket.socket | None = None
        self._wake_send: socket.socket | None = None
        #: Calls not yet taken by the command thread, each with whether it
        #: was sent while the session was up (else it is answered UNAVAILABLE).
        self._queue: list[tuple[RedisCall, bool]] = []
        #: The command connection while a session is up (the command thread's).
        self._command: _Wire | None = None
        #: Why the session is breaking (the first reason wins).
        self._reason: str | None = None
        #: (subscribe, unsubscribe) asked for and not yet sent.
        self._listens: list[tuple[list[str], list[str]]] = []
        #: The pub/sub connection while a session is up (the session thread's).
        self._subscriber: _Wire | None = None

    # ----------------------------------------------------------- the Link

    def connect(self) -> None:
        with self._lock:
            if self._closed or self._state is not _State.IDLE:
                return
            self._state = _State.CONNECTING
            self._start_locked()
            self._wake_locked()

    def send(self, calls: list[RedisCall]) -> None:
        if not calls:
            return
        with self._lock:
            if self._closed:
                return
            self._start_locked()
            up = self._state is _State.UP
            self._queue.extend((call, up) for call in calls)
            self._changed.notify_all()

    def listen(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        if not subscribe and not unsubscribe:
            return
        with self._lock:
            # Down, nothing is subscribed: the fleet asks again after Connected.
            if self._closed or self._state is not _State.UP:
                return
            self._listens.append((list(subscribe), list(unsubscribe)))
            self._wake_locked()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            self._changed.notify_all()
            self._wake_locked()
        if isinstance(self._deliver, _Hop):
            self._deliver.stop()  # an event already on its way to the loop is dropped there
        # A thread blocked in Redis I/O stops at its socket timeout; one that
        # is still running then (or the caller itself, closing from deliver)
        # delivers nothing more and closes its own connection when it ends.
        deadline = time.monotonic() + max(self._connect_timeout, self._command_timeout) + 0.5
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # ---------------------------------------------------------- machinery

    def _start_locked(self) -> None:
        if self._threads:
            return
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)
        self._threads = [
            threading.Thread(target=self._session_main, name="wslifecycle-redis-session"),
            threading.Thread(target=self._command_main, name="wslifecycle-redis-commands"),
        ]
        for thread in self._threads:
            thread.daemon = True  # an unclosed link does not hold the process
            thread.start()

    def _wake_locked(self) -> None:
        if self._wake_send is not None:
            # Full means a wake-up is already pending.
            with contextlib.suppress(BlockingIOError):
                self._wake_send.send(b"\0")

    def _emit(self, event: LinkEvent) -> None:
        if self._closed:
            return
        try:
            self._deliver(event)
        except Exception:
            log.exception("redis link: the handler of %s failed", type(event).__name__)

    def _describe(self, exc: BaseException) -> str:
        return f"redis at {self._where}: {_what_failed(exc)}"

    def _new_connection(self) -> _Wire:
        # redis-py's connection classes are untyped; see _Wire.
        return cast(_Wire, self._connection_class(**self._connection_kwargs))

    def _load_scripts(self, conn: _Wire) -> None:
        conn.send_packed_command(
            conn.pack_commands([("SCRIPT", "LOAD", script.source) for script in self._scripts])
        )
        errors: list[str] = []
        for script in self._scripts:
            try:
                sha = conn.read_response()
            except ResponseError as exc:  # read on: the other replies are on the wire
                errors.append(f"script {script.name}: {exc}")
                continue
            if not isinstance(sha, bytes) or sha.decode("ascii", "replace") != script.sha:
                errors.append(f"script {script.name} loaded as {sha!r}, expected {script.sha}")
        if errors:
            raise _Refused("; ".join(errors))

    # ---------------------------------------------------- command thread

    def _command_main(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (
                        self._closed
                        or self._queue
                        or (self._command is not None and self._state is not _State.UP)
                    ):
                        self._changed.wait()
                    if self._closed:
                        return
                    taken, self._queue = self._queue, []
                    conn = self._command
                    live = conn if self._state is _State.UP else None
                    reason = self._reason or UNAVAILABLE
                answers, broke = self._answer(taken, live, reason)
                if answers:
                    self._emit(Replies(answers))
                if conn is not None and (live is None or broke):
                    conn.disconnect()
                    with self._lock:
                        self._command = None
                        self._changed.notify_all()  # the session thread waits for this
                        self._wake_locked()
        finally:
            with self._lock:
                conn, self._command = self._command, None
                self._changed.notify_all()
            if conn is not None:
                conn.disconnect()

    def _answer(
        self, taken: list[tuple[RedisCall, bool]], live: _Wire | None, reason: str
    ) -> tuple[list[tuple[int, Reply]], bool]:
        """Answers to what was taken, in the order sent, and whether the
        command connection broke (the session is then breaking)."""
        batch = [call for call, up in taken if up]
        behind: list[tuple[RedisCall, bool]] = []
        broke = False
        results: list[Reply]
        if live is None:  # the session is breaking: these were never sent
            results = [RedisFailure(reason) for _ in batch]
        else:
            try:
                results = self._run(live, batch)
            except Exception as exc:  # broken, timed out, or a bug: a new session
                broke, reason = True, self._describe(exc)
                results = [RedisFailure(reason, lost=True) for _ in batch]
                with self._lock:
                    if self._state is _State.UP:
                        self._state, self._reason = _State.BREAKING, reason
                    # Queued behind the batch, never sent: answered with it.
                    behind, self._queue = self._queue, []
        ran = iter(results)
        answers: list[tuple[int, Reply]] = [
            (call.id, next(ran) if up else RedisFailure(UNAVAILABLE)) for call, up in taken
        ]
        answers += [(call.id, RedisFailure(reason if up else UNAVAILABLE)) for call, up in behind]
        return answers, broke

    def _run(self, conn: _Wire, calls: list[RedisCall]) -> list[Reply]:
        """EVALSHA each call, pipelined; a NOSCRIPT (scripts flushed) loads
        them again and runs the calls that did not run, once."""
        replies, missing = self._pipeline(conn, calls)
        if missing:
            self._load_scripts(conn)
            again, _ = self._pipeline(conn, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _pipeline(self, conn: _Wire, calls: list[RedisCall]) -> tuple[list[Reply], list[int]]:
        if not calls:
            return [], []
        conn.send_packed_command(
            conn.pack_commands(
                [
                    ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                    for call in calls
                ]
            )
        )
        replies: list[Reply] = []
        missing: list[int] = []
        for i in range(len(calls)):
            try:
                replies.append(_reply(conn.read_response()))
            except NoScriptError as exc:
                missing.append(i)
                replies.append(RedisFailure(str(exc)))
            except ResponseError as exc:  # this call's error (a Lua error): its answer
                replies.append(RedisFailure(str(exc)))
        return replies, missing

    # ---------------------------------------------------- session thread

    def _session_main(self) -> None:
        assert self._wake_recv is not None  # made with the threads
        wake = self._wake_recv
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    state = self._state
                if state is _State.CONNECTING:
                    self._attempt()
                elif state is _State.UP:
                    self._serve(wake)
                else:
                    _wait_readable(wake, None)
                    _drain(wake)
        finally:
            if self._subscriber is not None:
                self._subscriber.disconnect()
                self._subscriber = None
            with self._lock:
                wake_send, self._wake_send = self._wake_send, None
                self._wake_recv = None
            wake.close()
            if wake_send is not None:
                wake_send.close()

    def _attempt(self) -> None:
        command, subscriber = self._new_connection(), self._new_connection()
        try:
            command.connect()
            _ping(command)
            self._load_scripts(command)
            subscriber.connect()
            _ping(subscriber)
        except Exception as exc:  # any failure ends the attempt
            command.disconnect()
            subscriber.disconnect()
            with self._lock:
                if self._closed:
                    return
                self._state = _State.IDLE
            self._emit(Disconnected(self._describe(exc)))
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._state, self._reason = _State.UP, None
                self._command, self._subscriber = command, subscriber
                self._listens = []
                self._changed.notify_all()
        if closed:
            command.disconnect()
            subscriber.disconnect()
            return
        self._emit(Connected())

    def _serve(self, wake: socket.socket) -> None:
        """The pub/sub connection while the session is up; ends the session."""
        conn = self._subscriber
        assert conn is not None  # set by _attempt, with the state UP
        sock = conn._sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(wake, select.POLLIN)
        heard = time.monotonic()  # the last byte from Redis
        ping_sent: float | None = None
        buffered = False  # replies left unread in the parser (a flood is read in rounds)
        reason: str | None = None
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return  # _session_main closes the connection
                    if self._state is not _State.UP:
                        break  # the command connection broke
                    listens, self._listens = self._listens, []
                for subscribe, unsubscribe in listens:
                    if unsubscribe:
                        conn.send_command("UNSUBSCRIBE", *unsubscribe)
                    if subscribe:
                        conn.send_command("SUBSCRIBE", *subscribe)
                if ping_sent is None:
                    due = heard + self._idle_ping
                else:
                    due = max(ping_sent, heard) + self._command_timeout
                # Replies already in the parser's buffer do not wake poll.
                wait = 0.0 if buffered else max(0.0, due - time.monotonic())
                ready = {fd for fd, _ in poller.poll(wait * 1000)}
                if wake.fileno() in ready:
                    _drain(wake)
                if buffered or sock.fileno() in ready:
                    pong, buffered = self._read_subscriber(conn)
                    if pong:
                        ping_sent = None
                    heard = time.monotonic()
                elif time.monotonic() >= due:
                    if ping_sent is not None:
                        raise RedisTimeout("no answer to PING")
                    conn.send_command("PING")
                    ping_sent = time.monotonic()
        except Exception as exc:  # broken, hung, or a bug: the session ends
            reason = self._describe(exc)
        self._end_session(reason)

    def _read_subscriber(self, conn: _Wire) -> tuple[bool, bool]:
        """Deliver what arrived, up to READ_ROUND replies (so a flood does not
        hold back listen requests); whether a PING's answer was among it and
        whether more is waiting."""
        pong = False
        for _ in range(READ_ROUND):
            if not conn.can_read(0):  # also what the parser already buffered
                return pong, False
            try:
                reply = conn.read_response()
            except ResponseError as exc:
                log.warning("redis link: pub/sub connection said %s", exc)
                continue
            if reply == b"PONG":  # PING with no subscription
                pong = True
            elif isinstance(reply, list) and len(reply) >= 2:
                kind, channel = reply[0], _text(reply[1])
                if kind == b"message" and len(reply) == 3 and isinstance(reply[2], bytes):
                    self._emit(Message(channel, reply[2]))
                elif kind == b"subscribe":
                    self._emit(Listening(channel))
                elif kind == b"pong":
                    pong = True
        return pong, True

    def _end_session(self, reason: str | None) -> None:
        """Both connections closed, then Disconnected: after the command
        thread delivered the answers of the calls it had."""
        if self._subscriber is not None:
            self._subscriber.disconnect()
            self._subscriber = None
        with self._lock:
            if self._state is _State.UP:
                self._state, self._reason = _State.BREAKING, reason
            self._changed.notify_all()
            while self._command is not None and not self._closed:
                self._changed.wait()
            if self._closed:
                return
            said = self._reason or reason or UNAVAILABLE
            self._state, self._reason, self._listens = _State.IDLE, None, []
        self._emit(Disconnected(said))


# ------------------------------------------------------------------ helpers


def _ping(conn: _Wire) -> None:
    conn.send_command("PING")
    if (answer := conn.read_response()) != b"PONG":
        raise _Refused(f"PING answered {answer!r}")


def _reply(value: object) -> Reply:
    """redis-py's decoded reply as the fleet's :data:`Reply`."""
    if value is None or isinstance(value, bytes | int):
        return value
    if isinstance(value, list):
        return [_reply(item) for item in value]
    if isinstance(value, Exception):  # an error inside a script's table
        return RedisFailure(str(value))
    return RedisFailure(f"unexpected reply {value!r}")


def _text(channel: object) -> str:
    if isinstance(channel, bytes):
        return channel.decode("utf-8", "surrogateescape")
    return str(channel)


def _what_failed(exc: BaseException) -> str:
    """Short and human: "Connection refused", "timed out"."""
    if isinstance(exc, RedisTimeout | TimeoutError):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc).strip().rstrip(".") or type(exc).__name__


def _wait_readable(sock: socket.socket, timeout: float | None) -> None:
    poller = select.poll()  # poll, not select: descriptors past 1024 are fine
    poller.register(sock, select.POLLIN)
    poller.poll(None if timeout is None else timeout * 1000)


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(4096):
            pass


# ------------------------------------------- delivering on the driver's loop


class _Hop:
    """A ``deliver`` that hands each event to the driver's loop.

    :meth:`RedisLink.close` stops it: an event already on its way is then
    dropped where it arrives, so none reaches the handler after close.
    """

    def __init__(self, handle: Callable[[LinkEvent], None]) -> None:
        self._handle = handle
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def _run(self, event: LinkEvent) -> bool:
        if self._stopped:
            return False
        self._handle(event)
        return True

    def __call__(self, event: LinkEvent) -> None:
        raise NotImplementedError


class _AsyncioHop(_Hop):
    def __init__(self, loop: asyncio.AbstractEventLoop, handle: Callable[[LinkEvent], None]):
        super().__init__(handle)
        self._loop = loop

    def __call__(self, event: LinkEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._run, event)


class _TrioHop(_Hop):
    def __init__(self, token: TrioToken, handle: Callable[[LinkEvent], None]):
        import trio  # only the Trio driver makes this hop

        super().__init__(handle)
        self._token = token
        self._finished = trio.RunFinishedError

    def __call__(self, event: LinkEvent) -> None:
        with contextlib.suppress(self._finished):  # the run is over: nobody to tell
            self._token.run_sync_soon(self._run, event)


class _Lockish(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...
    def release(self) -> None: ...


class _LockedHop(_Hop):
    #: How often a delivery waiting for the driver's lock checks it was stopped
    #: (close() may be called by the lock's holder, which then must not wait).
    POLL = 0.05

    def __init__(
        self, lock: _Lockish, handle: Callable[[LinkEvent], None], after: Callable[[], None]
    ):
        super().__init__(handle)
        self._lock = lock
        self._after = after

    def __call__(self, event: LinkEvent) -> None:
        while not self._lock.acquire(timeout=self.POLL):
            if self._stopped:
                return
        try:
            handled = self._run(event)
        finally:
            self._lock.release()
        if handled:
            self._after()


def asyncio_deliver(
    loop: asyncio.AbstractEventLoop, handle: Callable[[LinkEvent], None]
) -> Callable[[LinkEvent], None]:
    """``deliver`` for the asyncio driver: ``handle`` runs on ``loop``."""
    return _AsyncioHop(loop, handle)


def trio_deliver(
    token: TrioToken, handle: Callable[[LinkEvent], None]
) -> Callable[[LinkEvent], None]:
    """``deliver`` for the Trio driver: ``handle`` runs in the run of ``token``."""
    return _TrioHop(token, handle)


def locked_deliver(
    lock: _Lockish, handle: Callable[[LinkEvent], None], after: Callable[[], None]
) -> Callable[[LinkEvent], None]:
    """``deliver`` for the selector driver: ``handle`` runs on the link's
    thread holding ``lock``; then ``after()`` (e.g. wake the selector)."""
    return _LockedHop(lock, handle, after)
