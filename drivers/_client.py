"""What every client driver (asyncio, Trio, selector) does the same way.

The sans-IO :class:`~wslifecycle.client.ClientSession` decides everything;
a client driver only dials, moves bytes and keeps one timer. What is left is
the same on every driver and lives here, in :class:`ClientCore`:

* the session, built with real entropy (``os.urandom`` for masks and
  nonces, a generator seeded by it for the jitter) and websockets' C XOR as
  the mask when installed;
* the TLS context of a ``wss://`` URL (``ssl.create_default_context()``
  unless given) and what a failed dial means (:func:`dial_outcome`: 1015
  for TLS, 1006 for the rest);
* a wire's output turned into transport operations (:class:`ClientOps`),
  with ``session.upgraded`` called at the upgrade;
* the messages for the application: taken from the wire only when the
  application asks (so a slow reader pauses the socket, through the wire's
  inbox), with ``on_drift`` called for each drift notice;
* the callbacks (``on_connect``, ``on_reconnect``) and their failures
  (logged; a broken callback never stops the client);
* :class:`ClientStopped`, what a client raises once it will not reconnect.

A driver calls these with its own clock and under its own lock (the
selector driver's); nothing here blocks or waits.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypedDict

from wslifecycle import Config, ConnectionClosed
from wslifecycle.actions import AcceptUpgrade, Alert, CloseTransport, RejectUpgrade, Terminate
from wslifecycle.client import (
    ClientConnection,
    ClientSession,
    Outcome,
    ReconnectPolicy,
    Retry,
    Stop,
    client_config,
)

from ._common import default_entropy, fast_unmask, log_alert
from ._tls import describe

__all__ = [
    "ClientCore",
    "ClientOps",
    "ClientOptions",
    "ClientStopped",
    "client_tls",
    "dial_outcome",
]

log = logging.getLogger("wslifecycle.client")


class ClientStopped(ConnectionClosed):
    """The client will not (re)connect: ``stop.reason`` says why and
    ``outcome`` how the last attempt or connection ended. Raised by
    ``connect()`` when the policy stops before any connection (an HTTP 403,
    a 1008, a certificate that does not verify, ``max_attempts`` refused
    dials), and by ``recv()`` once the client has stopped and every
    message has been read."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.reason)
        self.stop = stop

    @property
    def outcome(self) -> Outcome:
        return self.stop.outcome


class ClientOptions(TypedDict, total=False):
    """What every driver's ``connect`` takes besides the URL."""

    #: The TLS context of a wss:// URL (default: ``ssl.create_default_context()``).
    ssl: _ssl.SSLContext | None
    #: When and how soon to reconnect (default: ``ReconnectPolicy()``).
    policy: ReconnectPolicy | None
    #: Every setting (default: ``client_config()``); or the two shortcuts below.
    config: Config | None
    heartbeat_interval: float | None
    max_missed_pongs: int | None
    #: Offered in Sec-WebSocket-Protocol.
    subprotocols: tuple[str, ...]
    #: The Origin header (a browser's; servers may require one).
    origin: str | None
    #: Extra request headers, (name, value) pairs.
    headers: tuple[tuple[str, str], ...]
    #: Called (no arguments) after each successful upgrade.
    on_connect: Callable[[], object] | None
    #: Called with the :class:`~wslifecycle.client.Retry` before each wait.
    on_reconnect: Callable[[Retry], object] | None
    #: Called with a drift notice's body (a dict) when the application reads it.
    on_drift: Callable[[dict[str, object]], object] | None


class ClientOps(Protocol):
    """What a driver does with one wire's output."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket."""

    def close(self) -> None:
        """Close the socket (FIN) once what is queued is written."""

    def abort(self) -> None:
        """Drop the socket now (RST); forget what is queued."""


def client_tls(secure: bool, context: object) -> _ssl.SSLContext | None:
    """The TLS context to dial with: ``context`` for wss:// (the standard
    library's default one if None), None for ws://."""
    if context is not None and not isinstance(context, _ssl.SSLContext):
        raise TypeError(f"connect(): ssl must be an ssl.SSLContext, got {context!r}")
    if not secure:
        if context is not None:
            raise ValueError("connect(): ssl is for wss:// URLs; this one is ws://")
        return None
    return context or _ssl.create_default_context()


def dial_outcome(error: BaseException) -> Outcome:
    """How a dial that failed ended, for the reconnect policy: a TLS
    handshake that failed is 1015 (a certificate does not fix itself: the
    policy stops), anything else (refused, unreachable, DNS, timed out) 1006."""
    tls = error if isinstance(error, _ssl.SSLError) else error.__cause__
    if isinstance(tls, _ssl.SSLCertVerificationError):
        return Outcome(code=1015, reason=f"TLS: {tls.verify_message or describe(tls)}")
    if isinstance(tls, _ssl.SSLError):
        return Outcome(code=1015, reason=f"TLS: {describe(tls)}")
    if isinstance(error, TimeoutError):
        return Outcome(code=1006, reason="connect: timed out")
    if isinstance(error, OSError):
        return Outcome(code=1006, reason=f"connect: {_os_reason(error)}")
    return Outcome(code=1006, reason=f"connect: {type(error).__name__}: {error}")


def _os_reason(error: OSError) -> str:
    """``Connection refused``, however the event loop wrapped it (asyncio
    words its own message; Trio groups one error per address)."""
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup):
        leaves = [leaf for leaf in cause.exceptions if isinstance(leaf, OSError)]
        error = leaves[0] if leaves else error
    if error.errno:
        return os.strerror(error.errno)
    return str(error.strerror or error)


def _config(options: ClientOptions) -> Config:
    config = options.get("config")
    shortcuts = {
        name: value
        for name in ("heartbeat_interval", "max_missed_pongs")
        if (value := options.get(name)) is not None
    }
    if config is not None:
        if shortcuts:
            raise TypeError(
                f"connect(): give config or {' and '.join(shortcuts)}, not both"
                " (put them in the Config)"
            )
        return config
    return client_config(**shortcuts)


class ClientCore:
    """One client's session, messages and callbacks (see the module docstring)."""

    __slots__ = (
        "_closed_stop",
        "_messages",
        "_on_connect",
        "_on_drift",
        "_on_reconnect",
        "session",
        "tls",
    )

    def __init__(self, url: str, options: ClientOptions) -> None:
        """Raises ValueError for a bad URL, TypeError or ValueError for a
        bad option, ConfigError for a bad setting: at the call, before any
        socket exists."""
        fast = random.Random(os.urandom(16))
        self.session = ClientSession(
            url,
            entropy=default_entropy(),
            random_bytes=os.urandom,
            random=fast.random,
            config=_config(options),
            policy=options.get("policy"),
            subprotocols=tuple(options.get("subprotocols", ())),
            origin=options.get("origin"),
            headers=tuple(options.get("headers", ())),
            mask=fast_unmask(),
        )
        self.tls = client_tls(self.session.target.secure, options.get("ssl"))
        self._on_connect = options.get("on_connect")
        self._on_reconnect = options.get("on_reconnect")
        self._on_drift = options.get("on_drift")
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._closed_stop: Stop | None = None

    # ------------------------------------------------------------- what it is

    @property
    def config(self) -> Config:
        return self.session.scheduler.config

    @property
    def host(self) -> str:
        return self.session.target.host

    @property
    def port(self) -> int:
        return self.session.target.port

    @property
    def stopped(self) -> Stop | None:
        """Why the client will not reconnect (None while it may)."""
        return self.session.stopped or self._closed_stop

    @property
    def closing(self) -> bool:
        """The application asked to close, or the session stopped."""
        return self.session.closing or self.stopped is not None

    @property
    def latency(self) -> float | None:
        wire = self.session.wire
        return None if wire is None else wire.latency

    def stop_error(self) -> ClientStopped:
        stop = self.stopped
        assert stop is not None
        return ClientStopped(stop)

    # ---------------------------------------------------------- connections

    def connect(self, now: float) -> ClientConnection:
        """The dial succeeded: a new wire (its upgrade request queued)."""
        return self.session.connect(now, wall_time=time.time())

    def carry_out(self, wire: ClientConnection, ops: ClientOps, now: float) -> None:
        """Write a wire's bytes and act on its actions, in order. At the
        upgrade the subscriptions go out and ``on_connect`` is called."""
        data = wire.data_to_send()
        if data:
            ops.write(data)
        for action in wire.take_actions():
            if isinstance(action, AcceptUpgrade):
                self.session.upgraded(now)
                log.info("client connected url=%s", wire.target.url)
                resent = wire.data_to_send()  # the subscriptions, resumed
                if resent:
                    ops.write(resent)
                self._call(self._on_connect)
            elif isinstance(action, CloseTransport):
                ops.close()
            elif isinstance(action, Terminate):
                log.info("client dropped url=%s cause=%s", wire.target.url, action.cause.value)
                ops.abort()
            elif isinstance(action, RejectUpgrade):
                log.info(
                    "client refused url=%s status=%d reason=%r",
                    wire.target.url,
                    action.status,
                    action.reason,
                )
            elif isinstance(action, Alert):
                log_alert(action)

    def tick(self, now: float) -> None:
        """The timer fired: run what is due (the current wire then needs a
        ``carry_out``)."""
        scheduler = self.session.scheduler
        scheduler.tick(now)
        for alert in scheduler.take_alerts():
            log_alert(alert)
        wire = self.session.wire
        if wire is not None:
            wire.pump(now)

    def ended(self, now: float) -> Retry | Stop:
        """The current wire is CLOSED and its socket gone: what next."""
        self._keep_messages(now)
        return self._next(self.session.ended(now))

    def dial_failed(self, now: float, error: BaseException) -> Retry | Stop:
        """The dial (TCP, TLS) failed with ``error``: what next."""
        outcome = dial_outcome(error)
        log.info("client dial failed url=%s: %s", self.session.target.url, outcome.reason)
        return self._next(self.session.failed(now, outcome))

    def _next(self, step: Retry | Stop) -> Retry | Stop:
        url = self.session.target.url
        if isinstance(step, Stop):
            log.info("client stopped url=%s: %s", url, step.reason)
        else:
            log.info(
                "client reconnects url=%s in %.3f s (retry %d) after %s",
                url,
                step.delay,
                step.attempt,
                step.outcome,
            )
            self._call(self._on_reconnect, step)
        return step

    # ---------------------------------------------------------- the application

    def close(self, now: float, code: int = 1000, reason: str = "") -> None:
        """The application closes: the closing handshake if connected, and
        no reconnect. Between connections the client stops at once."""
        session = self.session
        if session.closing or self.stopped is not None:
            return
        session.close(now, code, reason)
        wire = session.wire
        if wire is None or wire.ended:
            outcome = Outcome(code=code, reason=reason, local=True)
            self._closed_stop = Stop("closed by the application", outcome)

    def finished(self, error: BaseException | None = None) -> None:
        """The driver's task or thread has ended. Normally ``stopped`` says
        why already; if the driver itself failed (``error``), the client
        stops with that as the reason (1011, never reconnected)."""
        self.session.closing = True
        if self.stopped is None:
            reason = "closed" if error is None else f"the client driver failed: {error!r}"
            outcome = Outcome(code=1000 if error is None else 1011, reason=reason, local=True)
            self._closed_stop = Stop(reason, outcome)

    def take(self, now: float) -> str | bytes | None:
        """The next message for the application (None: none yet)."""
        if not self._messages:
            self._keep_messages(now)
        return self._messages.popleft() if self._messages else None

    def _keep_messages(self, now: float) -> None:
        for received in self.session.receive(now):
            frame = received.frame
            if frame is not None and frame.kind == "drift":
                self._call(self._on_drift, frame.body)
            self._messages.append(received.data)

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("client callback %r failed", callback)


class ClientState:
    """What an asyncio or Trio client says about itself, read from its
    :class:`ClientCore` (the blocking client reads the same under its lock)."""

    _core: ClientCore

    @property
    def connected(self) -> bool:
        """True while a connection is up (``send`` works)."""
        return self._core.session.connected

    @property
    def latency(self) -> float | None:
        """The last pong's round-trip time in seconds (None before the first)."""
        return self._core.latency

    @property
    def connections(self) -> int:
        """Connections made so far (upgrades that succeeded)."""
        return self._core.session.connections

    @property
    def stopped(self) -> Stop | None:
        """Why the client will not reconnect (None while it may)."""
        return self._core.stopped


class AsyncClient(ClientState):
    """What the asyncio and Trio clients share beyond their state: ``recv``
    on top of their own ``__anext__``."""

    async def __anext__(self) -> str | bytes:
        raise NotImplementedError  # each driver waits in its own way

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self

    async def recv(self) -> str | bytes:
        """The next message; :class:`ClientStopped` once the client has
        stopped and every message was read."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise self._core.stop_error() from None
