"""What every driver does the same way that is not sans-IO: real entropy,
log lines, the Prometheus exposition, and the event dispatch table.

Drivers differ only in how bytes move and handlers run; each one reads a
wire's output with :func:`drain_wire` and supplies the four transport
operations (write, close, abort, deliver).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Callable
from typing import Protocol

from wslifecycle import Config, Entropy, MetricsSnapshot
from wslifecycle.actions import (
    AcceptUpgrade,
    Alert,
    CloseTransport,
    DeliverMessage,
    RejectUpgrade,
    StateChanged,
    Terminate,
)
from wslifecycle.broker import Broker
from wslifecycle.hub import Hub
from wslifecycle.transitions import State
from wslifecycle.wire import HttpReply, ServerConnection, UpgradeRequest
from wslifecycle.wire.mask import Unmask

__all__ = [
    "TICK_BATCH",
    "ConnectionBase",
    "TransportOps",
    "default_entropy",
    "drain_wire",
    "driver_hub",
    "fast_unmask",
    "log",
    "prometheus_exporter",
]

log = logging.getLogger("wslifecycle")

#: Connections a driver runs per timer callback. Due pings share a wake-up
#: (timer slack); this keeps one batch from holding the loop for long: past
#: it, the rest run on the next turn (their wake-up is still due).
TICK_BATCH = 256


class ConnectionBase:
    """What every driver's connection shows a handler, read from its wire."""

    __slots__ = ("wire",)

    wire: ServerConnection

    @property
    def id(self) -> str:
        return self.wire.lifecycle.id

    @property
    def state(self) -> State:
        return self.wire.lifecycle.state

    @property
    def latency(self) -> float | None:
        """The last pong's round-trip time in seconds (None before the first)."""
        return self.wire.lifecycle.latency

    @property
    def request(self) -> UpgradeRequest | None:
        """The upgrade request: ``request.request.path``, headers, origin."""
        return self.wire.request

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value}>"


def driver_hub(
    config: Config, entropy: Entropy | None, broker: Broker[ServerConnection] | None
) -> Hub:
    """The hub every driver runs: OS entropy unless given, the Prometheus
    exposition when installed, and C unmasking when installed."""
    return Hub(
        config,
        entropy or default_entropy(),
        broker=broker,
        metrics_exporter=prometheus_exporter(),
        unmask=fast_unmask(),
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


class TransportOps(Protocol):
    """What a driver does with a wire's output: bytes, and five events."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def accepted(self) -> None: ...
    def deliver(self, data: str | bytes) -> None: ...
    def resume_reading(self) -> None: ...
    def closed(self) -> None: ...


def drain_wire(wire: ServerConnection, ops: TransportOps) -> None:
    """Write a wire's bytes, then act on its events in order."""
    data = wire.data_to_send()
    if data:
        ops.write(data)
    for event in wire.take_events():
        if isinstance(event, DeliverMessage):
            ops.deliver(event.data)
        elif isinstance(event, StateChanged):
            log_transition(event)
            if event.previous is State.ACTIVE:
                # Reading may pause only while ACTIVE: a closing connection
                # must read the peer's close frame.
                ops.resume_reading()
            if event.current is State.CLOSED:
                ops.closed()
        elif isinstance(event, AcceptUpgrade):
            ops.accepted()
        elif isinstance(event, CloseTransport):
            ops.close()
        elif isinstance(event, Terminate):
            log.info("terminated connection=%s cause=%s", wire.lifecycle.id, event.cause.value)
            ops.abort()
        elif isinstance(event, RejectUpgrade):
            log.info(
                "refused connection=%s status=%d reason=%r",
                wire.lifecycle.id,
                event.status,
                event.reason,
            )
        elif isinstance(event, Alert):
            log_alert(event)


def log_transition(event: StateChanged) -> None:
    """One structured line per transition, with the cause once there is one."""
    if log.isEnabledFor(logging.INFO):
        log.info(
            "transition connection=%s from=%s to=%s cause=%s",
            event.connection_id,
            event.previous.value,
            event.current.value,
            event.cause.value if event.cause else "-",
        )


def log_alert(alert: Alert) -> None:
    log.warning(
        "alert kind=%s connection=%s value=%.3f detail=%r",
        alert.kind.value,
        alert.connection_id or "-",
        alert.value,
        alert.detail,
    )


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
