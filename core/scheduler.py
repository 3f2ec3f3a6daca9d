"""One timer for every connection: ``Scheduler``.

A driver arms ONE timer for :meth:`Scheduler.next_deadline` and calls
:meth:`Scheduler.tick` when it fires (DESIGN §3). Each connection has exactly
one deadline at a time (handshake, next heartbeat, or close), kept in a binary
heap, so:

* asking for the next deadline, or a tick with nothing due, is O(1);
* a tick costs O(k log n) for the k connections that are due, never a sweep
  over all n;
* a pong or a message touches no timer at all (the heartbeat counts, it does
  not re-arm).

A changed deadline pushes a new heap entry and leaves the old one behind;
stale entries are recognised when they surface (their time no longer matches
the connection's) and the heap is rebuilt when they outnumber the live ones.

Heartbeat phases: connection k is probed at times ≡ epoch + frac(k·φ)·interval
(mod interval), φ the golden ratio conjugate and the epoch the time of the
scheduler's first connection. That sequence spreads any run of consecutive
connections almost evenly over the interval, so a burst of 100,000 accepts
never becomes a burst of 100,000 pings. Anchoring at the first connection
(not at the clock's zero) makes runs reproducible whatever the clock reads,
and puts no connection's first probe earlier than min frac(k·φ)·interval
after the first accept (≈ 0.0004 × interval for the first 1,000
connections), so a short run with a long interval sends no ping at all.
"""

from __future__ import annotations

import heapq
from collections.abc import Set

from .actions import Alert
from .causes import AlertKind
from .config import Config, HeartbeatMode
from .entropy import Entropy
from .lifecycle import ConnectionLifecycle
from .metrics import Metrics
from .transitions import State

__all__ = ["Scheduler"]

_GOLDEN = 0.6180339887498949  # (√5 − 1) / 2


class Scheduler:
    """The shared timer, configuration, entropy and metrics of many connections."""

    __slots__ = (
        "_alerts",
        "_counter",
        "_drain_deadline",
        "_epoch",
        "_heap",
        "_live",
        "_phases",
        "_stall_threshold",
        "app_heartbeat",
        "config",
        "entropy",
        "metrics",
        "protocol_heartbeat",
    )

    def __init__(self, config: Config, entropy: Entropy, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.entropy = entropy
        self.metrics = metrics if metrics is not None else Metrics()
        mode = config.heartbeat_mode
        #: Whether protocol pings / JSON heartbeats are sent (from the mode).
        self.protocol_heartbeat = mode is not HeartbeatMode.APPLICATION
        self.app_heartbeat = mode is not HeartbeatMode.PROTOCOL
        self._stall_threshold = config.effective_stall_threshold
        self._heap: list[tuple[float, int, ConnectionLifecycle]] = []
        self._counter = 0
        self._phases = 0
        self._epoch: float | None = None
        # A dict, not a set: iteration (drain order) follows arrival order,
        # so the same inputs give the same actions.
        self._live: dict[ConnectionLifecycle, None] = {}
        self._alerts: list[Alert] = []
        self._drain_deadline: float | None = None

    # ---------------------------------------------------------------- the API

    def open(self, now: float) -> ConnectionLifecycle:
        """A TCP connection was accepted: a new lifecycle in OPEN, with its
        handshake deadline armed. (While draining it is still opened, and its
        upgrade request is refused with 503.)"""
        lifecycle = ConnectionLifecycle(self, self.entropy.connection_id(), now)
        self._live[lifecycle] = None
        self.metrics.connections[State.OPEN] += 1
        return lifecycle

    def next_deadline(self) -> float | None:
        """The earliest time any connection needs :meth:`tick`, or None."""
        heap = self._heap
        while heap:
            deadline, _, lifecycle = heap[0]
            if lifecycle.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def tick(self, now: float) -> list[ConnectionLifecycle]:
        """Run every connection whose deadline is at or before ``now``.

        Returns those connections (they may have actions to take). If the
        earliest of them is overdue by more than the stall threshold, the
        server was blocked: a ``loop_stall`` alert is queued and this tick
        blames no peer (DESIGN §4).
        """
        first = self.next_deadline()
        if first is None or first > now:
            return []
        lag = now - first
        stalled = lag > self._stall_threshold
        metrics = self.metrics
        metrics.observe_loop_lag(lag)
        if stalled:
            metrics.loop_stalls += 1
            self._alerts.append(
                Alert(
                    AlertKind.LOOP_STALL,
                    None,
                    lag,
                    f"timer fired {lag:.3f} s late; no peer was charged a missed heartbeat",
                )
            )
        heap = self._heap
        ran: list[ConnectionLifecycle] = []
        while heap and heap[0][0] <= now:
            deadline, _, lifecycle = heapq.heappop(heap)
            if lifecycle.deadline != deadline:
                continue  # stale: the connection moved on since this entry
            lifecycle.handle_timer(now, stalled=stalled)
            ran.append(lifecycle)
        return ran

    def take_alerts(self) -> list[Alert]:
        """Server-wide alerts (loop stalls) queued since the last call."""
        alerts, self._alerts = self._alerts, []
        return alerts

    @property
    def draining(self) -> bool:
        """True once :meth:`begin_drain` was called."""
        return self._drain_deadline is not None

    @property
    def drain_deadline(self) -> float | None:
        """When a drain terminates what is still open; None unless draining."""
        return self._drain_deadline

    def begin_drain(self, now: float) -> list[ConnectionLifecycle]:
        """Shut down: from now on upgrades get 503, every open connection is
        closed with 1001 (or refused with 503 if not yet upgraded), and what
        has not finished closing by ``now + drain_timeout`` is terminated.
        Returns the connections that have actions to take."""
        if self._drain_deadline is None:
            self._drain_deadline = now + self.config.drain_timeout
        touched = list(self._live)
        for lifecycle in touched:
            lifecycle.drain(now)
        return touched

    @property
    def drained(self) -> bool:
        """True when draining and every connection has reached CLOSED."""
        return self.draining and not self._live

    @property
    def connections(self) -> Set[ConnectionLifecycle]:
        """The connections not yet CLOSED, in arrival order (a read-only view)."""
        return self._live.keys()

    def __len__(self) -> int:
        return len(self._live)

    # ------------------------------------------------- used by ConnectionLifecycle

    def _first_heartbeat_slot(self, now: float) -> float:
        """The first probe time after ``now`` at this connection's own phase."""
        interval = self.config.heartbeat_interval
        if self._epoch is None:
            self._epoch = now
        self._phases += 1
        phase = self._epoch + (self._phases * _GOLDEN) % 1.0 * interval
        delay = (phase - now) % interval
        return now + (delay if delay > 0 else interval)

    def _handshake_deadline(self, now: float) -> float:
        deadline = now + self.config.handshake_timeout
        drain = self._drain_deadline
        return deadline if drain is None or drain > deadline else drain

    def _close_deadline(self, now: float) -> float:
        deadline = now + self.config.close_timeout
        drain = self._drain_deadline
        return deadline if drain is None or drain > deadline else drain

    def _push(self, deadline: float, lifecycle: ConnectionLifecycle) -> None:
        self._counter += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._counter, lifecycle))
        if len(heap) > 2 * len(self._live) + 64:
            self._compact()

    def _forget(self, lifecycle: ConnectionLifecycle) -> None:
        self._live.pop(lifecycle, None)

    def _compact(self) -> None:
        """Drop stale entries (O(n), amortised over the pushes that made them)."""
        heap = [entry for entry in self._heap if entry[2].deadline == entry[0]]
        heapq.heapify(heap)
        self._heap = heap
