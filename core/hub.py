"""Everything a server does except I/O: ``Hub``.

A hub owns the one :class:`~wslifecycle.Scheduler`, the
:class:`~wslifecycle.fleet.engine.Fleet` (pub/sub over a
:class:`~wslifecycle.broker.Broker`: in memory, or Redis for many nodes) and
every :class:`~wslifecycle.wire.ServerConnection`. Drivers differ only in how they
move bytes and run handlers; what they share is here, so the three of them
stay thin (a rule two drivers need lives below them):

* ``open`` a wire per accepted socket, with teardown wired to the broker;
* ``handle_timer`` when the one timer fires: it returns, in one
  :class:`TimerWork`, every wire to flush, every socket to drop and every
  alert to log; ``next_wakeup`` says when to fire next;
* ``begin_drain`` on SIGTERM, ``stop`` when a server ends undrained;
* ``subscribe`` / ``unsubscribe`` / ``members`` / ``publish`` for pub/sub
  (answers that come later from a broker are in :meth:`Hub.take_output`),
  ``channel_sizes`` for an operator;
* ``/healthz`` and ``/metrics`` answers, and pages a driver adds
  (``add_page``); also on a listener of their own (``open(now,
  plain_only=True)``): those connections run on a scheduler of their own,
  whose counters are never exported, so a probe or a scrape is not counted
  as a WebSocket connection;
* ``recent_alerts``: the last alerts with their time, for an operator's page
  (loop stalls recorded here; drivers record what reaches them through a
  wire, with ``record_alert``);
* bounded closes: a socket closed gracefully with bytes still unsent (a peer
  that stopped reading) comes back in ``TimerWork.reset`` after
  ``close_timeout``, for the driver to drop it.

A driver keeps its own map from wire to socket; the core holds no pointer
to a driver's objects.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import deque
from collections.abc import Callable

from .actions import Alert
from .broker import Broker
from .causes import TerminationCause
from .config import Config
from .entropy import Entropy
from .fleet.engine import Fleet
from .fleet.memory import InMemoryBroker
from .fleet.ops import Answer
from .handshake import Address
from .lifecycle import ConnectionLifecycle
from .metrics import MetricsSnapshot
from .scheduler import Scheduler
from .wire.connection import (
    HttpReply,
    PageReply,
    PlainResponder,
    ServerConnection,
    health_responder,
)
from .wire.frames import OP_PING, encode_frame
from .wire.http import HTTP_ENDPOINTS, HttpRequest
from .wire.mask import Unmask

__all__ = ["RECENT_ALERTS", "Hub", "MetricsExporter", "RecentAlert", "TimerWork"]

#: Renders a metrics snapshot as an HTTP answer (the driver's exposition).
MetricsExporter = Callable[[MetricsSnapshot], HttpReply]

#: How many alerts :attr:`Hub.recent_alerts` keeps (older ones are in the logs).
RECENT_ALERTS = 50


@dataclasses.dataclass(frozen=True, slots=True)
class TimerWork:
    """Everything a driver does after its one timer fired, in this order."""

    #: Wires whose only work is a ping, and its frame (one frame object
    #: per tick, shared): write it (the fast lane; no actions to act on).
    pings: list[tuple[ServerConnection, bytes]]
    #: Wires with other output (closes, terminations): flush each.
    flush: list[ServerConnection]
    #: Graceful closes still flushing after ``close_timeout``: drop their
    #: sockets (RST) if they are still open.
    reset: list[ServerConnection]
    #: Server-wide alerts (loop stalls): log them.
    alerts: list[Alert]


@dataclasses.dataclass(frozen=True, slots=True)
class RecentAlert:
    """An alert and when it was raised (the driver's clock)."""

    at: float
    alert: Alert


class Hub:
    """The shared, sans-IO heart of a server: one scheduler, one broker, many wires."""

    __slots__ = (
        "_closing",
        "_defer_handshake",
        "_fleet_started",
        "_health",
        "_last_now",
        "_metrics_exporter",
        "_page_paths",
        "_pages",
        "_plain",
        "_unmask",
        "_wires",
        "fleet",
        "recent_alerts",
        "scheduler",
    )

    def __init__(
        self,
        config: Config,
        entropy: Entropy,
        *,
        broker: Broker | None = None,
        metrics_exporter: MetricsExporter | None = None,
        unmask: Unmask | None = None,
        defer_handshake: bool = False,
    ) -> None:
        """``unmask``: a faster unmasking function for client frames (the
        drivers pass websockets' C one when it is installed).
        ``defer_handshake``: every wire hands its upgrade request to the
        caller (``HandshakeRequested``; the drivers run the handshake hook).
        ``broker``: where channels' sequences, history and presence live
        (default: this process, :class:`~wslifecycle.fleet.memory.InMemoryBroker`)."""
        self._defer_handshake = defer_handshake
        self.scheduler = Scheduler(config, entropy)
        # The connections of a plain-HTTP-only listener: same deadlines, but
        # counted apart (these metrics are never exported).
        self._plain = Scheduler(config, entropy)
        self._unmask = unmask
        #: Pub/sub: subscribers, their cursors, presence, the broker.
        self.fleet = Fleet(
            broker or InMemoryBroker(config.history_size, config.history_ttl),
            new_epoch=entropy.connection_id,
            presence_ttl=config.presence_ttl,
            metrics=self.scheduler.metrics,
        )
        self._fleet_started = False
        self._last_now = 0.0  # the latest time the hub was given (see subscribe)
        self._metrics_exporter = metrics_exporter
        self._health = health_responder(self.scheduler)
        # The wire of every lifecycle not yet CLOSED (the scheduler knows
        # lifecycles; tick and drain hand back their wires).
        self._wires: dict[ConnectionLifecycle, ServerConnection] = {}
        # Every close has the same timeout, so arrival order is deadline order.
        # Weak: a wire whose socket closed in time is the driver's to forget.
        self._closing: deque[tuple[float, weakref.ref[ServerConnection]]] = deque()
        self._pages: dict[str, PlainResponder] = {}
        self._page_paths: frozenset[str] = frozenset()
        #: The last :data:`RECENT_ALERTS` alerts, oldest first.
        self.recent_alerts: deque[RecentAlert] = deque(maxlen=RECENT_ALERTS)

    @property
    def config(self) -> Config:
        return self.scheduler.config

    # ------------------------------------------------------------ connections

    def open(
        self, now: float, peer_address: Address | None = None, *, plain_only: bool = False
    ) -> ServerConnection:
        """A socket was accepted (from ``peer_address``): its wire, in OPEN,
        handshake deadline armed.

        ``plain_only``: the socket came from a listener that only answers
        ``/healthz`` and ``/metrics`` (every other path gets 404, no upgrade
        is accepted); it counts in no metric."""
        self._last_now = now
        if not self._fleet_started:
            self.start(now)
        wire = ServerConnection(
            self._plain if plain_only else self.scheduler,
            now,
            responder=self._respond,
            release_channels=self.fleet.release,
            on_closed=self._closed,
            unmask=self._unmask,
            peer_address=peer_address,
            defer_handshake=self._defer_handshake and not plain_only,
            pages=frozenset() if plain_only else self._page_paths,
            plain_only=plain_only,
        )
        self._wires[wire.lifecycle] = wire
        return wire

    def start(self, now: float) -> None:
        """Start the fleet's broker (Redis: connect) and its presence timer;
        the first :meth:`open` does it if the driver has not."""
        if not self._fleet_started:
            self._fleet_started = True
            self.fleet.start(now)

    @property
    def connections(self) -> list[ServerConnection]:
        """Every WebSocket-listener wire whose lifecycle is not yet CLOSED,
        in arrival order."""
        wires = self._wires
        return [wires[lifecycle] for lifecycle in self.scheduler.connections]

    def next_wakeup(self) -> float | None:
        """When the driver's one timer must fire next (None: nothing pending)."""
        wakeup = self.scheduler.next_wakeup()
        for other in (self._plain.next_wakeup(), self.fleet.next_wakeup()):
            if other is not None and (wakeup is None or other < wakeup):
                wakeup = other
        if self._closing:
            closing = self._closing[0][0]
            if wakeup is None or closing < wakeup:
                return closing
        return wakeup

    def handle_timer(self, now: float, limit: int | None = None) -> TimerWork:
        """The one timer fired: run every deadline due by ``now`` (at most
        ``limit`` of them; the rest stay due, so :meth:`next_wakeup` is still
        ≤ now and the driver calls again after letting its loop breathe)."""
        wires = self._wires
        self._last_now = now
        fleet_due = self.fleet.next_wakeup()
        if fleet_due is not None and fleet_due <= now:
            self.fleet.handle_timer(now)
        ran = self.scheduler.tick(now, limit)
        rest = None if limit is None else limit - len(ran)
        if rest is None or rest > 0:
            ran += self._plain.tick(now, rest)
        self._plain.take_alerts()  # a stall is the main scheduler's to report
        pings: list[tuple[ServerConnection, bytes]] = []
        flush = []
        payload = frame = b""
        for lifecycle in ran:
            wire = wires[lifecycle]
            ping = wire.take_lone_ping()
            if ping is None:
                wire.pump(now)
                flush.append(wire)
                continue
            if ping is not payload:  # one payload per tick: built once
                payload, frame = ping, encode_frame(OP_PING, ping)
            pings.append((wire, frame))
        flush.extend(self.take_output(now))
        alerts = self.scheduler.take_alerts()
        for alert in alerts:
            self.record_alert(now, alert)
        return TimerWork(pings, flush, self._expired_closes(now), alerts)

    def record_alert(self, now: float, alert: Alert) -> None:
        """Keep ``alert`` among :attr:`recent_alerts` (the hub records the
        alerts of :meth:`handle_timer` itself)."""
        self.recent_alerts.append(RecentAlert(now, alert))

    @property
    def changes(self) -> int:
        """Grows whenever :meth:`next_wakeup` may have moved: a driver that
        armed its timer at the same value need not ask again."""
        return self.scheduler.changes + self._plain.changes + self.fleet.changes

    def closing(self, wire: ServerConnection, now: float) -> None:
        """The driver closed ``wire``'s socket gracefully but bytes are still
        unsent: it gets ``close_timeout`` to flush them."""
        self._closing.append((now + self.config.close_timeout, weakref.ref(wire)))
        self.scheduler.changes += 1

    def _expired_closes(self, now: float) -> list[ServerConnection]:
        """Wires whose graceful close has not finished in time."""
        closing = self._closing
        expired = []
        while closing and closing[0][0] <= now:
            wire = closing.popleft()[1]()
            if wire is not None:
                expired.append(wire)
        return expired

    # ------------------------------------------------------------------ drain

    def begin_drain(self, now: float) -> list[ServerConnection]:
        """Shut down gracefully: handshakes get 503, open connections close
        with 1001, what is left at the drain deadline is terminated. Returns
        the wires to flush."""
        wires = self._wires
        touched = [
            wires[lifecycle]
            for scheduler in (self.scheduler, self._plain)
            for lifecycle in scheduler.begin_drain(now)
        ]
        for wire in touched:
            wire.pump(now)
        return touched

    def stop(self, now: float) -> list[ServerConnection]:
        """The server ends without (or before the end of) a drain: terminate
        every connection still open (cause ``server_stopped``), channels
        released first. Returns the wires to flush."""
        touched = list(self._wires.values())
        for wire in touched:
            wire.terminate(now, TerminationCause.SERVER_STOPPED)
        return touched

    @property
    def draining(self) -> bool:
        return self.scheduler.draining

    @property
    def drained(self) -> bool:
        """Draining, and every connection has reached CLOSED."""
        return self.scheduler.drained and self._plain.drained

    # ---------------------------------------------------------------- pub/sub

    def subscribe(
        self,
        wire: ServerConnection,
        channel: str,
        now: float | None = None,
        *,
        since: int | None = None,
        epoch: str | None = None,
        presence: bool = False,
        announce: bool = False,
    ) -> None:
        """Join a channel (resuming after ``since`` of sequence ``epoch``;
        ``presence``: hear joins and leaves; ``announce``: answer ``subscribed``,
        as a relay client expects). Raises
        :class:`ConnectionClosed` unless ACTIVE. ``now`` defaults to the
        latest time the hub was given."""
        wire.lifecycle.subscribe(channel)
        at = self._last_now if now is None else now
        self.fleet.subscribe(
            at, wire, channel, since=since, epoch=epoch, presence=presence, announce=announce
        )

    def unsubscribe(self, wire: ServerConnection, channel: str, now: float | None = None) -> None:
        """Leave a channel (no effect if not a member)."""
        wire.lifecycle.unsubscribe(channel)
        self.fleet.unsubscribe(self._last_now if now is None else now, wire, channel)

    def members(self, channel: str) -> list[ServerConnection]:
        """This node's members that can still be sent to: never one that is
        closing. (The fleet's, as ids: the relay's ``members``.)"""
        return self.fleet.local_members(channel)

    def publish(
        self, channel: str, data: object, now: float, origin: ServerConnection | None = None
    ) -> Answer | None:
        """Publish ``data`` (any JSON value) on ``channel`` to its subscribers
        across the fleet; ``origin`` is answered ``published`` or ``error``.
        The broker's answer if it came at once (in memory), else None."""
        self._last_now = now
        return self.fleet.publish(now, channel, data, origin)

    def take_output(self, now: float) -> list[ServerConnection]:
        """Wires the fleet wrote to (answers, deliveries, drift), and wires
        whose teardown waited for the broker and may now send their close
        frame: flush each. Drivers call this after anything that reached the
        fleet (a relay message, a publish, a broker event)."""
        fleet = self.fleet
        for wire in fleet.take_released():
            wire.channels_released(now)
            fleet.touch(wire)
        return fleet.take_touched()

    def channel_sizes(self) -> dict[str, int]:
        """Every channel with members on this node that can still be sent
        to, and how many."""
        return self.fleet.channel_sizes()

    # ------------------------------------------------------------------ HTTP

    def add_page(self, path: str, responder: PlainResponder) -> None:
        """Answer plain GET/HEAD requests for ``path`` (``/dashboard``) with
        ``responder``, from the next connection on. An upgrade request for
        ``path`` is still a WebSocket connection, so a page can have a feed
        of its own at its own address."""
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"path: must be an absolute path without a query, got {path!r}")
        if path in HTTP_ENDPOINTS:
            raise ValueError(f"path: {path} is answered by the hub itself")
        self._pages[path] = responder
        self._page_paths = frozenset(self._pages)

    def _respond(self, request: HttpRequest) -> HttpReply | PageReply:
        if request.path == "/metrics":
            if self._metrics_exporter is None:
                return 404, "text/plain; charset=utf-8", b"no metrics exporter configured\n"
            return self._metrics_exporter(self.scheduler.metrics.snapshot())
        page = self._pages.get(request.path)
        if page is not None:
            return page(request)
        fleet = self.fleet
        if request.path == "/healthz" and fleet.degraded and not self.scheduler.draining:
            # Still serving: a load balancer keeps this node; the body says why.
            reason = fleet.down_reason or "not connected yet"
            body = f"degraded: redis unavailable ({reason}); local connections go on\n"
            return 200, "text/plain; charset=utf-8", body.encode()
        return self._health(request)

    def _closed(self, wire: ServerConnection) -> None:
        self._wires.pop(wire.lifecycle, None)
