"""Everything a server does except I/O: ``Hub``.

A hub owns the one :class:`~wslifecycle.Scheduler`, a
:class:`~wslifecycle.broker.Broker` and every
:class:`~wslifecycle.wire.ServerConnection`. Drivers differ only in how they
move bytes and run handlers; what they share is here, so the three of them
stay thin (DESIGN §2: "if two drivers share logic, that logic belongs in the
core"):

* ``open`` a wire per accepted socket, with teardown wired to the broker;
* ``tick`` the one timer and pump every wire it touched;
* ``begin_drain`` on SIGTERM;
* ``subscribe`` / ``unsubscribe`` / ``members`` for pub/sub;
* ``/healthz`` and ``/metrics`` answers;
* bounded closes: a socket closed gracefully with bytes still unsent (a peer
  that stopped reading) is reported by ``expired_closes`` after
  ``close_timeout``, for the driver to drop it.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable

from .actions import Alert
from .broker import Broker, InMemoryBroker
from .config import Config
from .entropy import Entropy
from .lifecycle import ConnectionLifecycle
from .metrics import MetricsSnapshot
from .scheduler import Scheduler
from .wire.connection import HttpReply, ServerConnection, health_responder
from .wire.http import HttpRequest
from .wire.mask import Unmask

__all__ = ["Hub", "MetricsExporter"]

#: Renders a metrics snapshot as an HTTP answer (the driver's exposition).
MetricsExporter = Callable[[MetricsSnapshot], HttpReply]


class Hub:
    """The shared, sans-IO heart of a server: one scheduler, one broker, many wires."""

    __slots__ = ("_closing", "_health", "_metrics_exporter", "_unmask", "broker", "scheduler")

    def __init__(
        self,
        config: Config,
        entropy: Entropy,
        *,
        broker: Broker[ServerConnection] | None = None,
        metrics_exporter: MetricsExporter | None = None,
        unmask: Unmask | None = None,
    ) -> None:
        """``unmask``: a faster unmasking function for client frames (the
        drivers pass websockets' C one when it is installed)."""
        self.scheduler = Scheduler(config, entropy)
        self._unmask = unmask
        self.broker: Broker[ServerConnection] = broker or InMemoryBroker()
        self._metrics_exporter = metrics_exporter
        self._health = health_responder(self.scheduler)
        # Every close has the same timeout, so arrival order is deadline order.
        # Weak: a wire whose socket closed in time is the driver's to forget.
        self._closing: deque[tuple[float, weakref.ref[ServerConnection]]] = deque()

    @property
    def config(self) -> Config:
        return self.scheduler.config

    # ------------------------------------------------------------ connections

    def open(self, now: float) -> ServerConnection:
        """A socket was accepted: its wire, in OPEN, handshake deadline armed."""
        return ServerConnection(
            self.scheduler,
            now,
            responder=self._respond,
            release_channels=self._release,
            unmask=self._unmask,
        )

    @property
    def connections(self) -> list[ServerConnection]:
        """Every wire whose lifecycle is not yet CLOSED, in arrival order."""
        return [lifecycle.owner for lifecycle in self.scheduler.connections]

    def next_deadline(self) -> float | None:
        """When the driver's one timer must fire next (None: nothing pending)."""
        deadline = self.scheduler.next_wakeup()
        if self._closing:
            closing = self._closing[0][0]
            if deadline is None or closing < deadline:
                return closing
        return deadline

    def tick(self, now: float, limit: int | None = None) -> list[ServerConnection]:
        """Fire every deadline due by ``now`` (at most ``limit`` of them: the
        rest stay due, for the next call); returns the wires with output."""
        wires = []
        for lifecycle in self.scheduler.tick(now, limit):
            wire: ServerConnection = lifecycle.owner
            wire.pump(now)
            wires.append(wire)
        return wires

    @property
    def changes(self) -> int:
        """Grows whenever :meth:`next_deadline` may have moved: a driver that
        armed its timer at the same value need not ask again."""
        return self.scheduler.changes

    def closing(self, wire: ServerConnection, now: float) -> None:
        """The driver closed ``wire``'s socket gracefully but bytes are still
        unsent: it gets ``close_timeout`` to flush them."""
        self._closing.append((now + self.config.close_timeout, weakref.ref(wire)))
        self.scheduler.changes += 1

    def expired_closes(self, now: float) -> list[ServerConnection]:
        """Wires whose graceful close has not finished in time: the driver
        drops them (RST) if their socket is still open."""
        closing = self._closing
        expired = []
        while closing and closing[0][0] <= now:
            wire = closing.popleft()[1]()
            if wire is not None:
                expired.append(wire)
        return expired

    def take_alerts(self) -> list[Alert]:
        """Server-wide alerts (loop stalls) since the last call."""
        return self.scheduler.take_alerts()

    # ------------------------------------------------------------------ drain

    def begin_drain(self, now: float) -> list[ServerConnection]:
        """Shut down (DESIGN §5): handshakes get 503, open connections close
        with 1001, what is left at the drain deadline is terminated."""
        wires = []
        for lifecycle in self.scheduler.begin_drain(now):
            wire: ServerConnection = lifecycle.owner
            wire.pump(now)
            wires.append(wire)
        return wires

    @property
    def draining(self) -> bool:
        return self.scheduler.draining

    @property
    def drained(self) -> bool:
        """Draining, and every connection has reached CLOSED."""
        return self.scheduler.drained

    # ---------------------------------------------------------------- pub/sub

    def subscribe(self, wire: ServerConnection, channel: str) -> None:
        """Join a channel. Raises :class:`ConnectionClosed` unless ACTIVE."""
        wire.lifecycle.subscribe(channel)
        self.broker.subscribe(wire, channel)

    def unsubscribe(self, wire: ServerConnection, channel: str) -> None:
        """Leave a channel (no effect if not a member)."""
        wire.lifecycle.unsubscribe(channel)
        self.broker.unsubscribe(wire, channel)

    def members(self, channel: str) -> list[ServerConnection]:
        """Members that can still be sent to: never one that is closing."""
        return [wire for wire in self.broker.members(channel) if wire.lifecycle.accepts_sends]

    def fan_out(
        self, channel: str, render: Callable[[ServerConnection], str | bytes], now: float
    ) -> list[ServerConnection]:
        """Send ``render(member)`` to every member of ``channel`` (sequenced,
        non-critical); returns the members that were sent to."""
        # members() holds only connections that accept sends, so none raises.
        return [wire for wire in self.members(channel) if wire.send(render(wire), now) is not None]

    # ------------------------------------------------------------------ HTTP

    def _respond(self, request: HttpRequest) -> HttpReply:
        if request.path == "/metrics":
            if self._metrics_exporter is None:
                return 404, "text/plain; charset=utf-8", b"no metrics exporter configured\n"
            return self._metrics_exporter(self.scheduler.metrics.snapshot())
        return self._health(request)

    def _release(self, lifecycle: ConnectionLifecycle, channels: tuple[str, ...]) -> None:
        self.broker.release(lifecycle.owner, channels)
