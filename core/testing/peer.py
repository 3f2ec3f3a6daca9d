"""Drive lifecycles through scripted peers, on a fake clock, with no I/O.

:class:`Simulation` plays the driver: it arms the scheduler's one timer (at the
deadline, or later by a lateness you choose), carries out every action, and
plays each :class:`ScriptedPeer`: pongs and heartbeat echoes after ``rtt``,
messages and a close at scripted times, and silence (a half-open connection)
from ``silent_from`` on. Everything that happened is in :attr:`Simulation.trace`.

    clock = FakeClock()
    sim = Simulation(Scheduler(config, seeded_entropy(1)), clock)
    zombie = sim.connect(ScriptedPeer(rtt=0.05, silent_from=12.0))
    sim.run_until(200.0)
    assert sim.trace.first(Terminate, zombie.id).time <= 12.0 + config.detection_bound
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from .. import events as ev
from ..actions import (
    Action,
    CloseTransport,
    ReleaseChannels,
    SendClose,
    SendHeartbeat,
    SendMessage,
    SendPing,
    Terminate,
)
from ..lifecycle import ConnectionLifecycle
from ..scheduler import Scheduler
from ..transitions import State
from .clock import FakeClock

__all__ = ["ScriptedPeer", "Simulation", "Trace", "TraceEntry"]

_A = TypeVar("_A")


@dataclasses.dataclass(frozen=True, slots=True)
class ScriptedPeer:
    """How a fake remote end behaves. Times are absolute seconds on the clock."""

    #: Seconds from a probe (or close frame) to the answer's arrival.
    rtt: float = 0.01
    #: From this time on nothing from the peer arrives (half-open TCP).
    silent_from: float = math.inf
    #: Whether the peer answers protocol pings / echoes JSON heartbeats.
    answers_pings: bool = True
    echoes_heartbeats: bool = True
    #: Messages the peer sends: (arrival time, data).
    messages: Sequence[tuple[float, str | bytes]] = ()
    #: Report the last sequence number received, ``rtt`` after each message;
    #: ``seq_lag`` messages behind (a client that fell behind).
    reports_seq: bool = False
    seq_lag: int = 0
    #: The peer starts the closing handshake at this time with this code.
    close_at: float | None = None
    close_code: int | None = 1000
    #: The peer answers our close frame after ``rtt``.
    answers_close: bool = True
    #: The TCP connection breaks at this time (EOF or reset).
    lost_at: float | None = None
    #: Origin and Host headers of the upgrade request.
    origin: str | None = None
    host: str | None = "localhost"


@dataclasses.dataclass(frozen=True, slots=True)
class TraceEntry:
    """One action, when it was emitted, and by which connection (None: server)."""

    time: float
    connection_id: str | None
    action: Action


class Trace(list[TraceEntry]):
    """Every action of a simulation in order, with queries for tests."""

    def of(self, kind: type[_A], connection_id: str | None = None) -> Iterator[_A]:
        """Actions of one type, optionally of one connection."""
        for entry in self:
            if isinstance(entry.action, kind) and (
                connection_id is None or entry.connection_id == connection_id
            ):
                yield entry.action

    def entries(self, kind: type[object], connection_id: str | None = None) -> list[TraceEntry]:
        """Entries whose action is of one type, optionally of one connection."""
        return [
            entry
            for entry in self
            if isinstance(entry.action, kind)
            and (connection_id is None or entry.connection_id == connection_id)
        ]

    def first(self, kind: type[object], connection_id: str | None = None) -> TraceEntry | None:
        """The first entry of that type (and connection), or None."""
        found = self.entries(kind, connection_id)
        return found[0] if found else None


class Simulation:
    """A deterministic driver for a scheduler and its scripted peers."""

    def __init__(
        self,
        scheduler: Scheduler,
        clock: FakeClock,
        *,
        lateness: Callable[[float], float] | None = None,
        buffered: int = 0,
    ) -> None:
        """``lateness(wakeup)`` is how late the timer fires after the wake-up
        time the scheduler asks for (the earliest deadline on the timer-slack
        grid; seconds ≥ 0; default always on time). ``buffered`` is the write
        buffer the simulated transport reports."""
        self.scheduler = scheduler
        self.clock = clock
        self.trace = Trace()
        self.buffered = buffered
        self._lateness = lateness
        self._peers: dict[ConnectionLifecycle, ScriptedPeer] = {}
        self._inbox: list[tuple[float, int, ConnectionLifecycle, ev.Event]] = []
        self._counter = 0

    # ------------------------------------------------------------------ setup

    def connect(self, peer: ScriptedPeer) -> ConnectionLifecycle:
        """Open a connection now and send its upgrade request; schedules the
        peer's scripted messages, close and loss."""
        now = self.clock.now
        lifecycle = self.scheduler.open(now)
        self._peers[lifecycle] = peer
        lifecycle.request_upgrade(now, origin=peer.origin, host=peer.host)
        self._react(lifecycle)
        if lifecycle.state is State.ACTIVE:
            for when, data in peer.messages:
                self._deliver(lifecycle, ev.MessageReceived(when, data))
            if peer.close_at is not None:
                self._deliver(lifecycle, ev.PeerClosed(peer.close_at, peer.close_code, ""))
            if peer.lost_at is not None:
                # Loss is not "from the peer": it arrives even when silent.
                self._push(peer.lost_at, lifecycle, ev.TransportLost(peer.lost_at, "reset"))
        return lifecycle

    def apply(self, lifecycle: ConnectionLifecycle, event: ev.Event) -> None:
        """Feed one event now (a driver-side input) and carry out its actions."""
        lifecycle.handle(event)
        self._react(lifecycle)

    # -------------------------------------------------------------------- run

    def run_until(self, end: float) -> None:
        """Advance the clock to ``end``, firing timers and peer events in order."""
        scheduler = self.scheduler
        while True:
            wakeup = scheduler.next_wakeup()
            fire_at = math.inf
            if wakeup is not None:
                fire_at = wakeup + (self._lateness(wakeup) if self._lateness else 0.0)
            inbox_at = self._inbox[0][0] if self._inbox else math.inf
            when = min(fire_at, inbox_at)
            if when > end:
                break
            self.clock.advance_to(max(self.clock.now, when))
            if inbox_at <= fire_at:
                _, _, lifecycle, event = heapq.heappop(self._inbox)
                lifecycle.handle(dataclasses.replace(event, now=self.clock.now))
                self._react(lifecycle)
            else:
                for lifecycle in scheduler.tick(self.clock.now):
                    self._react(lifecycle)
                for alert in scheduler.take_alerts():
                    self._record(None, alert)
        self.clock.advance_to(max(self.clock.now, end))

    # -------------------------------------------------------------- internals

    def _react(self, lifecycle: ConnectionLifecycle) -> None:
        """Carry out every queued action, as a driver would, until none is left."""
        now = self.clock.now
        peer = self._peers[lifecycle]
        while actions := lifecycle.take_actions():
            for action in actions:
                self._record(lifecycle.id, action)
                if isinstance(action, SendPing):
                    if peer.answers_pings:
                        self._deliver(lifecycle, ev.PongReceived(now + peer.rtt, action.payload))
                elif isinstance(action, SendHeartbeat):
                    if peer.echoes_heartbeats:
                        self._deliver(lifecycle, ev.MessageReceived(now + peer.rtt, action.text))
                elif isinstance(action, SendMessage):
                    if peer.reports_seq:
                        seq = max(0, action.seq - peer.seq_lag)
                        self._deliver(lifecycle, ev.ClientSeqReported(now + peer.rtt, seq))
                elif isinstance(action, ReleaseChannels):
                    if lifecycle.state is State.DRAINING:
                        lifecycle.channels_released(now, buffered=self.buffered)
                elif isinstance(action, SendClose):
                    if peer.answers_close:
                        self._deliver(lifecycle, ev.PeerClosed(now + peer.rtt, action.code, ""))
                elif isinstance(action, CloseTransport | Terminate):
                    self._inbox = [entry for entry in self._inbox if entry[2] is not lifecycle]
                    heapq.heapify(self._inbox)

    def _deliver(self, lifecycle: ConnectionLifecycle, event: ev.Event) -> None:
        """Queue something from the peer; lost if it would arrive after silence."""
        if event.now < self._peers[lifecycle].silent_from:
            self._push(event.now, lifecycle, event)

    def _push(self, when: float, lifecycle: ConnectionLifecycle, event: ev.Event) -> None:
        self._counter += 1
        heapq.heappush(self._inbox, (when, self._counter, lifecycle, event))

    def _record(self, connection_id: str | None, action: Action) -> None:
        self.trace.append(TraceEntry(self.clock.now, connection_id, action))
