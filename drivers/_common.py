"""What every driver does the same way that is not sans-IO.

* :func:`driver_hub`: the hub with real entropy, the Prometheus exposition
  and C unmasking when installed;
* :func:`carry_out`: a wire's output turned into the transport operations a
  driver supplies (:class:`TransportOps`), with one log line per event;
* :class:`ConnectionBase`: what a handler sees, built on the wire alone
  (the coroutine drivers' part is ``_coroutine.py``);
* :class:`ServerBase`: publish, drain and the timer callback, built on the
  hub alone;
* :func:`reset_socket`: SO_LINGER 0, so a close is an RST.

A driver supplies how bytes move (its transport), how handlers run (tasks or
threads), what ``now`` is and how a wire's output reaches its socket
(``flush``). Every decision is the core's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import random
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol, TypedDict, Unpack, cast

from wslifecycle import AlertKind, Config, Entropy, MetricsSnapshot, State, TerminationCause
from wslifecycle.actions import (
    AcceptUpgrade,
    Alert,
    CloseTransport,
    HandshakeRequested,
    RejectUpgrade,
    StateChanged,
    Terminate,
)
from wslifecycle.broker import Broker
from wslifecycle.fleet.ops import Stored
from wslifecycle.fleet.redis import RedisBroker
from wslifecycle.handshake import Accept, Address, HandshakeRequest, Reject
from wslifecycle.hub import Hub
from wslifecycle.relay import handle_relay_message
from wslifecycle.wire import HttpReply, ServerConnection
from wslifecycle.wire.mask import Unmask

from ._fleet import FleetLink, Hop, redis_broker

__all__ = [
    "TICK_BATCH",
    "ConnectionBase",
    "DriverServer",
    "HubOptions",
    "ServerBase",
    "TransportOps",
    "answer_handshake",
    "carry_out",
    "check_handler",
    "default_entropy",
    "driver_hub",
    "fast_unmask",
    "log",
    "peer_address",
    "prometheus_exporter",
    "reset_socket",
]

log = logging.getLogger("wslifecycle")

#: Connections a driver runs per timer callback. Due pings share a wake-up
#: (timer slack); this keeps one batch from holding the loop for long: past
#: it, the rest run on the next turn (their wake-up is still due).
TICK_BATCH = 256

_LINGER_ZERO = struct.pack("ii", 1, 0)


# ------------------------------------------------------------------- the hub


class HubOptions(TypedDict, total=False):
    """What every driver's ``serve`` takes besides its own options."""

    #: Every setting (default: ``Config()``).
    config: Config | None
    #: Connection ids and probe payloads (default: the OS CSPRNG).
    entropy: Entropy | None
    #: Where channels' sequences, history and presence live (default: this
    #: process; ``serve(redis_url=...)`` / ``Config.redis_url``: Redis).
    broker: Broker | None
    #: The fleet's Redis (``redis://HOST:PORT/DB``): ``Config.redis_url`` by
    #: another name (one of the two).
    redis_url: str | None


def driver_hub(*, defer_handshake: bool = False, **options: Unpack[HubOptions]) -> Hub:
    """The hub a driver's ``serve`` runs: the options given, OS entropy
    unless given, the Redis broker when a Redis URL is, the Prometheus
    exposition and C unmasking when installed. ``defer_handshake``: the
    driver runs a handshake hook (``process_request``)."""
    config = options.get("config") or Config()
    url = options.get("redis_url")
    if url is not None:
        config = dataclasses.replace(config, redis_url=url)
    return Hub(
        config,
        options.get("entropy") or default_entropy(),
        broker=options.get("broker") or redis_broker(config),
        metrics_exporter=prometheus_exporter(),
        unmask=fast_unmask(),
        defer_handshake=defer_handshake,
    )


def fast_unmask() -> Unmask | None:
    """websockets' C ``apply_mask`` when it is installed (the ``speedups``
    extra): 16 KiB unmasked in about 2 µs instead of 45 µs in pure Python."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return None
    return apply_mask


def default_entropy() -> Entropy:
    """Connection ids from the OS CSPRNG (they are session ids); probe
    payloads from a fast generator seeded by it (they only need to differ)."""
    fast = random.Random(os.urandom(16))

    def probe_payload() -> bytes:
        return fast.getrandbits(64).to_bytes(8, "big")

    return Entropy(connection_id=lambda: secrets.token_hex(8), probe_payload=probe_payload)


def prometheus_exporter() -> Callable[[MetricsSnapshot], HttpReply]:
    """``/metrics`` in the Prometheus text format through ``prometheus-client``,
    or, without it, an answer that says how to install it."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:

        def missing(snapshot: MetricsSnapshot) -> HttpReply:
            return (
                501,
                "text/plain; charset=utf-8",
                b"/metrics needs prometheus-client: pip install 'wslifecycle[prometheus]'\n",
            )

        return missing
    from ._prometheus import render

    return render


# ------------------------------------------------------------ a wire's output


class TransportOps(Protocol):
    """What a driver does with one wire's output."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket."""

    def close(self) -> None:
        """Close the socket (FIN) once what is queued is written."""

    def abort(self) -> None:
        """Drop the socket now (RST); forget what is queued."""

    def handshake(self, request: HandshakeRequest) -> None:
        """Run the handshake hook on ``request``; its answer goes to
        :func:`answer_handshake` (now or later)."""

    def accepted(self) -> None:
        """The upgrade is done: start the handler if it runs per connection."""

    def messages_waiting(self) -> None:
        """The wire holds messages for the handler: wake it (or start it)."""

    def sync_reading(self, paused: bool) -> None:
        """Stop (``paused``) or restart reading the socket, if it changed."""

    def closed(self) -> None:
        """The connection reached CLOSED: wake whoever waits for that."""


def carry_out(
    wire: ServerConnection, ops: TransportOps, server: DriverServer | None = None
) -> None:
    """Write a wire's bytes, act on its actions in order, then wake the
    handler and keep reading in step with the wire. Alerts (and slow
    consumers) go into ``server``'s hub's recent alerts, at its time."""
    data = wire.data_to_send()
    if data:
        ops.write(data)
    for action in wire.take_actions():
        if isinstance(action, StateChanged):
            log_transition(action)
            if action.current is State.CLOSED:
                ops.closed()
        elif isinstance(action, HandshakeRequested):
            ops.handshake(action.request)
        elif isinstance(action, AcceptUpgrade):
            log_accepted(wire)
            ops.accepted()
        elif isinstance(action, CloseTransport):
            ops.close()
        elif isinstance(action, Terminate):
            log.info("terminated connection=%s cause=%s", wire.id, action.cause.value)
            if action.cause is TerminationCause.SLOW_CONSUMER and server is not None:
                unsent = wire.write_buffer_size
                alert = Alert(
                    AlertKind.SLOW_CONSUMER, wire.id, unsent, f"{unsent} bytes unsent; terminated"
                )
                server.hub.record_alert(server.now(), alert)
            ops.abort()
        elif isinstance(action, RejectUpgrade):
            log.info(
                "refused connection=%s status=%d reason=%r", wire.id, action.status, action.reason
            )
        elif isinstance(action, Alert):
            log_alert(action)
            if server is not None:
                server.hub.record_alert(server.now(), action)
    if wire.messages_waiting:
        ops.messages_waiting()
    ops.sync_reading(wire.reading_paused)


def answer_handshake(server: DriverServer, wire: ServerConnection, answer: object) -> None:
    """Give the hook's answer to the wire and flush it. A hook that raised
    (``answer`` is the exception, logged with its traceback) or answered
    something the wire refuses (not an Accept, Reject or None; a subprotocol
    the client did not offer) gets HTTP 500 and a log line with the reason;
    the peer learns only that the server failed."""
    now = server.now()
    if isinstance(answer, BaseException):
        log.error("handshake hook failed connection=%s", wire.id, exc_info=answer)
        wire.answer_upgrade(now, _HOOK_FAILED)
    else:
        try:
            wire.answer_upgrade(now, cast(Accept | Reject | None, answer))  # it checks
        except (TypeError, ValueError) as refused:
            log.error("handshake hook failed connection=%s: %s", wire.id, refused)
            wire.answer_upgrade(now, _HOOK_FAILED)
    server.flush(wire)


_HOOK_FAILED = Reject(500, "internal error in the handshake hook\n")


def check_handler(handler: object, *, driver: str, coroutine: bool) -> None:
    """Refuse at ``serve()`` a handler that would fail on every connection
    (a 1011 for each peer): the habits of other libraries, said plainly."""
    if not callable(handler):
        raise TypeError(f"serve(): handler must be callable, got {handler!r}")
    call: Any = handler if inspect.isroutine(handler) else type(handler).__call__
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        parameters = []
    required = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) > 1:
        raise TypeError(
            f"serve(): the handler takes one argument, the connection, not"
            f" {len(required)}: write `{'async ' if coroutine else ''}def handler(conn)` and read"
            " the path as conn.request.path"
        )
    # A named plain function (not a lambda, which may return a coroutine).
    name = getattr(handler, "__name__", "<lambda>")
    if coroutine and not is_async and inspect.isfunction(call) and name != "<lambda>":
        raise TypeError(
            f"serve(): the {driver} driver runs coroutine handlers: write `async def"
            f" {name}(conn)` (with `async for message in conn`); plain functions"
            " run on the selector driver"
        )
    if not coroutine and is_async:
        raise TypeError(
            "serve(): the selector driver runs plain functions on its handler threads:"
            " write `def handler(conn)` (with `for message in conn`); coroutine handlers"
            " run on the asyncio and Trio drivers"
        )


def log_transition(event: StateChanged) -> None:
    """One structured line per transition, with the cause once there is one.
    A plain HTTP request (a probe) is not a connection: debug only."""
    level = logging.DEBUG if event.cause is TerminationCause.PLAIN_HTTP else logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level,
            "transition connection=%s from=%s to=%s cause=%s",
            event.connection_id,
            event.previous.value,
            event.current.value,
            event.cause.value if event.cause else "-",
        )


def log_accepted(wire: ServerConnection) -> None:
    """Who connected, to what: one line per accepted upgrade (the client's
    address is the trusted proxies' when they name it)."""
    if log.isEnabledFor(logging.INFO):
        request = wire.request
        log.info(
            "accepted connection=%s remote=%s path=%s subprotocol=%s",
            wire.id,
            _address(wire.remote_address),
            request.path if request is not None else "-",
            wire.subprotocol or "-",
        )


def _address(address: Address | None) -> str:
    if isinstance(address, tuple):
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return address or "-"


def log_alert(alert: Alert) -> None:
    log.warning(
        "alert kind=%s connection=%s value=%.3f detail=%r",
        alert.kind.value,
        alert.connection_id or "-",
        alert.value,
        alert.detail,
    )


def peer_address(raw: object) -> Address | None:
    """A socket's peer name as the core takes it: (host, port) for TCP (IPv6
    flow and scope fields dropped), the path for a Unix socket ("" unnamed)."""
    if isinstance(raw, tuple) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):  # an abstract Unix socket
        return raw.decode("utf-8", "replace")
    return None


class _Socket(Protocol):
    """A socket (the standard library's, or Trio's wrapper of one)."""

    def fileno(self) -> int: ...
    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...


def reset_socket(sock: _Socket | None) -> None:
    """Make the next close of ``sock`` an RST, not a FIN (SO_LINGER 0)."""
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):  # already reset by the peer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


# ------------------------------------------------------------------ servers


class DriverServer(Protocol):
    """What a connection needs of its server."""

    hub: Hub

    def now(self) -> float:
        """The driver's clock (monotonic seconds)."""

    def flush(self, wire: ServerConnection) -> None:
        """``wire`` may have output: see that it reaches its socket."""

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel``."""

    def flush_fleet(self, now: float) -> None:
        """Flush every wire the fleet wrote to."""


class ServerBase:
    """Publish, drain, the timer callback and the fleet's Redis link: the
    same on every driver."""

    hub: Hub
    _fleet_link: FleetLink | None = None

    def now(self) -> float:
        raise NotImplementedError

    def flush(self, wire: ServerConnection) -> None:
        raise NotImplementedError

    def _reset(self, wire: ServerConnection) -> None:
        """Drop ``wire``'s socket now (RST), if it is still open."""
        raise NotImplementedError

    def _write_ping(self, wire: ServerConnection, frame: bytes) -> None:
        """Write a ping frame the timer's fast lane built for ``wire`` (it
        has nothing else to do: no actions, no other bytes), straight to
        its socket."""
        raise NotImplementedError

    def _rearm(self) -> None:
        """The hub's next wake-up may have moved: see the timer follows."""
        raise NotImplementedError

    def _start_fleet(self, hop: Hop) -> None:
        """With a Redis broker: connect to it (events reach the loop through ``hop``)."""
        broker = self.hub.fleet.broker
        url = self.hub.config.redis_url
        if isinstance(broker, RedisBroker) and url is not None and self._fleet_link is None:
            self._fleet_link = FleetLink(self, broker, url, hop)
            self._fleet_link.start()

    def _stop_fleet(self) -> None:
        link = self._fleet_link
        if link is not None:
            self._fleet_link = None
            link.close()

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel`` across the
        fleet. Returns the channel's members when it was stored, if the
        broker answered at once (in memory); 0 when the answer comes later
        (Redis: the fan-out follows) or the broker is down (then only this
        node's members get it, unsequenced, and the failure is logged)."""
        hub = self.hub
        now = self.now()
        answer = hub.publish(channel, data, now)
        self.flush_fleet(now)
        if isinstance(answer, Stored):
            return answer.receivers
        if answer is not None:
            log.warning("publish channel=%s failed: %s", channel, getattr(answer, "reason", answer))
        return 0

    def flush_fleet(self, now: float) -> None:
        """Flush every wire the fleet wrote to (or let close) since last time."""
        for wire in self.hub.take_output(now):
            self.flush(wire)

    def _drain_hub(self) -> None:
        """SIGTERM: handshakes get 503, connections close with 1001, and what
        is left at the drain deadline is terminated."""
        hub = self.hub
        log.info("drain begins connections=%d", len(hub.scheduler))
        for wire in hub.begin_drain(self.now()):
            self.flush(wire)

    def _stop_hub(self) -> None:
        """The server stops undrained: what is still open is terminated."""
        for wire in self.hub.stop(self.now()):
            self.flush(wire)

    def _run_timer(self) -> None:
        """The one timer fired: heartbeats, timeouts, bounded closes, alerts."""
        work = self.hub.handle_timer(self.now(), TICK_BATCH)
        write_ping = self._write_ping
        for wire, frame in work.pings:
            write_ping(wire, frame)
        for wire in work.flush:
            self.flush(wire)
        for wire in work.reset:
            self._reset(wire)
        for alert in work.alerts:
            log_alert(alert)


# -------------------------------------------------------------- connections


class ConnectionBase:
    """A WebSocket connection as a handler sees it, on any driver.

    ``send`` never blocks: above the write-buffer guard a non-critical send is
    skipped and returns None. Once the connection is closing, ``send`` and
    ``subscribe`` raise :class:`~wslifecycle.ConnectionClosed`.
    """

    __slots__ = ("_server", "wire")

    def __init__(self, server: DriverServer, wire: ServerConnection) -> None:
        self._server = server
        self.wire = wire

    @property
    def id(self) -> str:
        return self.wire.id

    @property
    def state(self) -> State:
        return self.wire.state

    @property
    def latency(self) -> float | None:
        """The last pong's round-trip time in seconds (None before the first)."""
        return self.wire.latency

    @property
    def request(self) -> HandshakeRequest | None:
        """The upgrade request: ``path``, ``query``, ``params``, ``headers``
        (case-insensitive, multi-valued), ``subprotocols``, addresses."""
        return self.wire.request

    @property
    def remote_address(self) -> Address | None:
        """The client's address: (host, port), a Unix socket's path; behind
        trusted proxies (``Config.trusted_proxies``) the one they forwarded."""
        return self.wire.remote_address

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, if any."""
        return self.wire.subprotocol

    @property
    def context(self) -> object:
        """What the handshake hook's ``Accept(context=...)`` carried (else None)."""
        return self.wire.context

    @property
    def close_code(self) -> int | None:
        """Once closed, the peer's close code (1005: none in its frame; 1006:
        no close frame arrived); None while open."""
        return self.wire.close_code

    @property
    def close_reason(self) -> str | None:
        """Once closed, the peer's close reason; None while open."""
        return self.wire.close_reason

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value}>"

    def send(self, data: str | bytes, *, critical: bool = False) -> int | None:
        """Send a message; its sequence number, or None if skipped (slow peer)."""
        server = self._server
        seq = self.wire.send(data, server.now(), critical=critical)
        server.flush(self.wire)
        return seq

    def subscribe(
        self,
        channel: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        presence: bool = False,
    ) -> None:
        """Join ``channel`` (messages arrive as relay ``message`` frames;
        ``since``/``epoch``: resume; ``presence``: join/leave frames too)."""
        server = self._server
        now = server.now()
        server.hub.subscribe(self.wire, channel, now, since=since, epoch=epoch, presence=presence)
        server.flush_fleet(now)

    def unsubscribe(self, channel: str) -> None:
        server = self._server
        now = server.now()
        server.hub.unsubscribe(self.wire, channel, now)
        server.flush_fleet(now)

    def publish(self, channel: str, data: object) -> int:
        """Relay-format ``data`` to every member of ``channel``; how many got it."""
        return self._server.publish(channel, data)

    def relay(self, message: str | bytes) -> None:
        """Answer one message with the JSON relay protocol (``wslifecycle.relay``)."""
        server = self._server
        for wire in handle_relay_message(server.hub, self.wire, message, server.now()):
            server.flush(wire)
        server.flush(self.wire)

    def _take(self) -> str | bytes | None:
        """The next queued message (None: none). Taking one may resume reading."""
        wire = self.wire
        paused = wire.reading_paused
        message = wire.take_message(self._server.now())
        if paused and not wire.reading_paused:
            self._server.flush(wire)  # the socket is read again
        return message
