"""One timer for every connection: ``Scheduler``.

A driver arms ONE timer for :meth:`Scheduler.next_wakeup` and calls
:meth:`Scheduler.tick` when it fires. Each connection has exactly one
deadline at a time (handshake, next heartbeat, or close).

The lifecycle and the scheduler talk through a small public interface: a
lifecycle files its deadline with :meth:`~Scheduler.arm`, leaves with
:meth:`~Scheduler.retire` once CLOSED, and asks for its handshake, first
heartbeat and close deadlines; the scheduler reads its ``deadline`` and
calls its ``handle_timer``. Which cell a connection sits in is the
scheduler's own bookkeeping.

Timer slack: deadlines are rounded up to a grid of ``timer_slack`` seconds
(default ``min(interval / 20, 50 ms)``) and kept by grid cell: a dict from
a cell's wake-up time to the connections due then, and a heap of the
distinct wake-up times. So:

* N connections spread over the interval cost at most interval / slack
  wake-ups, not N (the slack adds to the timer's lateness L in the detection
  bound, ``heartbeat.py``);
* asking for the next wake-up, or a tick with nothing due, is O(1);
* a changed deadline is an append to its cell, O(1); a tick costs O(k) for
  the k connections that are due, never a sweep over all n;
* a pong or a message touches no timer at all (the heartbeat counts, it does
  not re-arm).

A changed deadline leaves the old cell's entry behind: the scheduler
remembers each connection's current cell, each cell counts its live
entries, a cell with none is dropped when it surfaces, and the cells are
rebuilt when stale entries outnumber the live ones.

Heartbeat phases: connection k is probed at times ≡ epoch + frac(k·φ)·interval
(mod interval), φ the golden ratio conjugate, k counting accepted upgrades
and the epoch the time of the scheduler's first accepted upgrade. That
sequence spreads any run of consecutive connections almost evenly over the
interval, so a burst of 100,000 accepts never becomes a burst of 100,000
pings. Anchoring at the first upgrade
(not at the clock's zero) makes runs reproducible whatever the clock reads,
and puts no connection's first probe earlier than min frac(k·φ)·interval
after the first accept (≈ 0.0004 × interval for the first 1,000
connections), so a short run with a long interval sends no ping at all.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Set

from .actions import Alert, SendPing
from .causes import AlertKind
from .config import Config, HeartbeatMode
from .entropy import Entropy
from .lifecycle import ConnectionLifecycle
from .metrics import Metrics
from .transitions import State

__all__ = ["Scheduler"]

_GOLDEN = 0.6180339887498949  # (√5 − 1) / 2
_ceil = math.ceil


class Scheduler:
    """The shared timer, configuration, entropy and metrics of many connections."""

    __slots__ = (
        "_alerts",
        "_cells",
        "_drain_deadline",
        "_entries",
        "_epoch",
        "_live",
        "_payload_at",
        "_phases",
        "_ping",
        "_slack",
        "_stall_threshold",
        "_times",
        "app_heartbeat",
        "changes",
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
        self._slack = config.effective_timer_slack
        self._cells: dict[float, _Cell] = {}  # wake-up time → who is due then
        self._times: list[float] = []  # heap of the cells' wake-up times
        self._entries = 0  # entries in all cells, stale ones included
        #: Counts deadline changes: a driver whose timer was armed at the same
        #: count need not look again (a pong or a message changes nothing).
        self.changes = 0
        self._phases = 0
        self._epoch: float | None = None
        # Every connection not yet CLOSED → the wake-up time of the cell
        # holding its current deadline. A dict: iteration (drain order)
        # follows arrival order, so the same inputs give the same actions.
        self._live: dict[ConnectionLifecycle, float | None] = {}
        self._alerts: list[Alert] = []
        self._drain_deadline: float | None = None
        self._payload_at = -math.inf
        self._ping = SendPing(b"")

    # ---------------------------------------------------------------- the API

    def open(self, now: float) -> ConnectionLifecycle:
        """A TCP connection was accepted: a new lifecycle in OPEN, with its
        handshake deadline armed. (While draining it is still opened, and its
        upgrade request is refused with 503.) It counts as an OPEN connection
        until its head turns out to be a plain HTTP request, which is not one
        (``metrics.py``)."""
        self.metrics.connections[State.OPEN] += 1
        return ConnectionLifecycle(self, self.entropy.connection_id(), now)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any connection, exactly (None: nothing
        pending). Drivers arm their timer for :meth:`next_wakeup` instead."""
        wakeup = self.next_wakeup()
        if wakeup is None:
            return None
        live = self._live
        return min(
            lifecycle.deadline
            for lifecycle in self._cells[wakeup].members
            if live.get(lifecycle) == wakeup and lifecycle.deadline is not None
        )

    def next_wakeup(self) -> float | None:
        """When the driver's one timer should fire: the earliest deadline
        rounded up to the timer-slack grid (None: nothing pending)."""
        times, cells = self._times, self._cells
        while times:
            wakeup = times[0]
            if cells[wakeup].alive:
                return wakeup
            heapq.heappop(times)  # every entry moved on or closed
            self._entries -= len(cells.pop(wakeup).members)
        return None

    def tick(self, now: float, limit: int | None = None) -> list[ConnectionLifecycle]:
        """Run every connection whose deadline is at or before ``now``, or
        the first ``limit`` of them (then :meth:`next_wakeup` is still ≤ now
        and the driver calls again after letting its loop breathe; due ones
        whose grid cell lies after ``now`` run at its wake-up). ``limit``
        counts connections run: entries left behind by connections that
        moved on or closed are dropped on the way and cost nothing.

        Returns those connections (they may have actions to take). If the
        tick came later than the stall threshold after the wake-up time of
        the earliest of them, the server was blocked: a ``loop_stall`` alert
        is queued and this tick blames no peer (docs/theory.md).
        """
        first = self.next_wakeup()
        # A cell's deadlines lie above its wake-up minus one slack, or (float
        # rounding) exactly on it: a tick at such a deadline runs it.
        if first is None or (first > now and first - self._slack > now):
            return []  # not even the first cell can hold a deadline ≤ now
        lag = max(0.0, now - first)
        stalled = lag > self._stall_threshold
        ran: list[ConnectionLifecycle] = []
        live = self._live
        budget = limit if limit is not None else -1
        while budget:
            # Read anew each time: running a cell may have rebuilt them all.
            times, cells = self._times, self._cells
            if not times or times[0] > now:
                break
            wakeup = times[0]
            cell = cells[wakeup]
            members = cell.members
            # First take the due ones off the cell, then run them: running
            # re-arms them, and a re-arm may rebuild every cell (_compact).
            due: list[ConnectionLifecycle] = []
            taken = len(members)  # entries this pass takes off the cell
            for index, lifecycle in enumerate(members):
                if live.get(lifecycle) == wakeup:  # else stale: it moved on or closed
                    live[lifecycle] = None
                    cell.alive -= 1
                    due.append(lifecycle)
                    if len(due) == budget:  # the limit counts connections run, not entries
                        taken = index + 1
                        break
            self._entries -= taken
            if taken < len(members):  # keep the rest of this cell for the next call
                cell.members = members[taken:]
            else:
                heapq.heappop(times)
                del cells[wakeup]
            budget -= len(due)
            for lifecycle in due:
                lifecycle.handle_timer(now, stalled)
            ran += due
        times, cells = self._times, self._cells
        if budget and times and times[0] - self._slack <= now:
            # Ticked off the grid (tests do, and late timers): the next cell may
            # hold some deadlines at or before now; run those, within the
            # limit, and keep the rest.
            wakeup = times[0]
            cell = cells[wakeup]
            for lifecycle in list(cell.members):
                deadline = lifecycle.deadline
                if live.get(lifecycle) == wakeup and deadline is not None and deadline <= now:
                    live[lifecycle] = None
                    cell.alive -= 1
                    lifecycle.handle_timer(now, stalled)
                    ran.append(lifecycle)
                    budget -= 1
                    if not budget:
                        break
        if not ran:
            return ran
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

    def first_heartbeat_slot(self, now: float) -> float:
        """The first probe time after ``now`` at this connection's own phase."""
        interval = self.config.heartbeat_interval
        if self._epoch is None:
            self._epoch = now
        self._phases += 1
        phase = self._epoch + (self._phases * _GOLDEN) % 1.0 * interval
        delay = (phase - now) % interval
        return now + (delay if delay > 0 else interval)

    def probe(self, now: float) -> SendPing:
        """The ping of a probe sent at ``now``: one payload per tick, shared
        by every connection probed in it (the action and the frame are built
        once per tick, not once per connection). A payload only has to
        differ from the same connection's previous one, drawn at an earlier
        tick."""
        if now != self._payload_at:
            self._payload_at = now
            self._ping = SendPing(self.entropy.probe_payload())
        return self._ping

    def handshake_deadline(self, now: float) -> float:
        """A new connection's handshake deadline (never past a drain's)."""
        deadline = now + self.config.handshake_timeout
        drain = self._drain_deadline
        return deadline if drain is None or drain > deadline else drain

    def close_deadline(self, now: float) -> float:
        """A closing connection's deadline (never past a drain's)."""
        deadline = now + self.config.close_timeout
        drain = self._drain_deadline
        return deadline if drain is None or drain > deadline else drain

    def arm(self, lifecycle: ConnectionLifecycle, deadline: float) -> None:
        """``lifecycle``'s deadline is now ``deadline``: file it in its cell."""
        # On the hot path (every ping re-arms): one call, locals, no helper.
        self.changes += 1
        cells, live = self._cells, self._live
        old = live.get(lifecycle)
        if old is not None:
            cells[old].alive -= 1
        slack = self._slack
        if slack:  # round up to the grid
            wakeup = _ceil(deadline / slack) * slack
            if wakeup < deadline:  # float rounding
                wakeup += slack
        else:
            wakeup = deadline
        cell = cells.get(wakeup)
        if cell is None:
            cells[wakeup] = cell = _Cell()
            heapq.heappush(self._times, wakeup)
        cell.members.append(lifecycle)
        cell.alive += 1
        live[lifecycle] = wakeup
        entries = self._entries = self._entries + 1
        if entries > 2 * len(live) + 64:
            self._compact()

    def retire(self, lifecycle: ConnectionLifecycle) -> None:
        """``lifecycle`` reached CLOSED: it has no deadline any more."""
        old = self._live.pop(lifecycle, None)
        if old is not None:
            self._cells[old].alive -= 1

    def _compact(self) -> None:
        """Drop stale entries (O(n), amortised over the pushes that made them)."""
        cells: dict[float, _Cell] = {}
        entries = 0
        live = self._live
        for wakeup, cell in self._cells.items():
            # One entry per connection: one re-armed within its own cell is
            # listed twice there, and ``alive`` counts connections.
            members = list(dict.fromkeys(lc for lc in cell.members if live.get(lc) == wakeup))
            if members:
                cells[wakeup] = fresh = _Cell()
                fresh.members = members
                fresh.alive = len(members)
                entries += len(members)
        self._cells = cells
        self._times = list(cells)
        heapq.heapify(self._times)
        self._entries = entries


class _Cell:
    """The connections due at one wake-up time, and how many still are."""

    __slots__ = ("alive", "members")

    def __init__(self) -> None:
        self.members: list[ConnectionLifecycle] = []
        self.alive = 0
