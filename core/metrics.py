"""Counters the core keeps for a whole server, and their frozen snapshot.

One :class:`Metrics` is shared by every connection of a scheduler; updating
it is a few integer additions, cheap enough for the pong path. Drivers export
:meth:`Metrics.snapshot` (Prometheus, logs); the core never logs.

What counts as a connection: every accepted TCP connection is one, in
OPEN, while its request head arrives (it may yet be an upgrade, and the
handshake timeout guards it). A head that turns out to be a plain HTTP
request (``/healthz``, ``/metrics``) is a *request*: it leaves the
connection gauge before it is answered (so a scrape never counts itself)
and is counted in ``http_requests`` only, never in the closed totals or the
handshake counters. Probes do not move the numbers they read.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from .causes import TerminationCause
from .transitions import State

_K = TypeVar("_K")

__all__ = ["LATENCY_BUCKETS", "Histogram", "Metrics", "MetricsSnapshot"]

#: Upper bounds (seconds) of the RTT and loop-lag histograms; +inf is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Histogram:
    """A distribution of seconds: count, sum, min, max and cumulative-free buckets.

    ``buckets[i]`` counts observations ≤ ``LATENCY_BUCKETS[i]`` and above the
    previous bound; the last entry counts those above every bound.
    """

    count: int
    total: float
    minimum: float
    maximum: float
    buckets: tuple[int, ...]

    @property
    def mean(self) -> float:
        """Average observation, or 0.0 when there is none."""
        return self.total / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """Estimated ``q``-quantile (0..1): the upper bound of its bucket,
        clamped to the observed min and max. 0.0 when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile is between 0 and 1, got {q}")
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, bucket_count in enumerate(self.buckets):
            seen += bucket_count
            if seen >= rank and bucket_count:
                bound = LATENCY_BUCKETS[index] if index < len(LATENCY_BUCKETS) else math.inf
                return max(self.minimum, min(bound, self.maximum))
        return self.maximum  # pragma: no cover - rank ≤ count always stops the loop


class _HistogramBuilder:
    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds < self.minimum:
            self.minimum = seconds
        if seconds > self.maximum:
            self.maximum = seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def freeze(self) -> Histogram:
        minimum = self.minimum if self.count else 0.0
        return Histogram(self.count, self.total, minimum, self.maximum, tuple(self.buckets))


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every counter at one instant. Counts are totals since the scheduler began.

    ``connections`` holds the connections in each state now (CLOSED: every
    one that has ended); ``http_requests`` counts the plain HTTP requests
    answered, by path, which are not connections (see the module's doc)."""

    connections: Mapping[State, int]
    handshakes_accepted: int
    handshakes_rejected: Mapping[int, int]
    pings_sent: int
    pongs_received: int
    missed_pongs: int
    app_heartbeats_sent: int
    app_heartbeat_echoes: int
    missed_app_heartbeats: int
    rtt: Histogram
    app_rtt: Histogram
    closed_by_cause: Mapping[TerminationCause, int]
    terminations: Mapping[TerminationCause, int]
    close_codes_sent: Mapping[int, int]
    messages_sent: int
    messages_received: int
    sends_skipped: int
    state_drift_notices: int
    loop_lag: Histogram
    loop_stalls: int
    http_requests: Mapping[str, int]
    #: The fleet's broker is reachable (always, in memory).
    broker_up: bool = True
    #: Times the broker was lost (Redis down or unreachable).
    broker_outages: int = 0
    #: Publishes answered with an error (the broker could not store them).
    publish_failures: int = 0
    #: ``drift`` notices sent to subscribers, by reason.
    drift_notices: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )


class Metrics:
    """Mutable counters; the core updates them, drivers read :meth:`snapshot`."""

    __slots__ = (
        "_app_rtt",
        "_loop_lag",
        "_rtt",
        "app_heartbeat_echoes",
        "app_heartbeats_sent",
        "broker_outages",
        "broker_up",
        "close_codes_sent",
        "closed_by_cause",
        "connections",
        "drift_notices",
        "handshakes_accepted",
        "handshakes_rejected",
        "http_requests",
        "loop_stalls",
        "messages_received",
        "messages_sent",
        "missed_app_heartbeats",
        "missed_pongs",
        "observe_rtt",
        "pings_sent",
        "pongs_received",
        "publish_failures",
        "sends_skipped",
        "state_drift_notices",
        "terminations",
    )

    def __init__(self) -> None:
        self.connections: Counter[State] = Counter()
        self.handshakes_accepted = 0
        self.handshakes_rejected: Counter[int] = Counter()
        self.pings_sent = 0
        self.pongs_received = 0
        self.missed_pongs = 0
        self.app_heartbeats_sent = 0
        self.app_heartbeat_echoes = 0
        self.missed_app_heartbeats = 0
        self.closed_by_cause: Counter[TerminationCause] = Counter()
        self.terminations: Counter[TerminationCause] = Counter()
        self.close_codes_sent: Counter[int] = Counter()
        self.messages_sent = 0
        self.messages_received = 0
        self.sends_skipped = 0
        self.state_drift_notices = 0
        self.loop_stalls = 0
        #: Plain HTTP requests answered, by path (a probe is not a connection).
        self.http_requests: Counter[str] = Counter()
        self.broker_up = True
        self.broker_outages = 0
        self.publish_failures = 0
        self.drift_notices: Counter[str] = Counter()
        self._rtt = _HistogramBuilder()
        self._app_rtt = _HistogramBuilder()
        self._loop_lag = _HistogramBuilder()
        #: ``observe_rtt(seconds)``: one pong's round-trip time (the histogram's
        #: own method, bound: one call less on every pong).
        self.observe_rtt: Callable[[float], None] = self._rtt.observe

    def observe_app_rtt(self, seconds: float) -> None:
        """One application heartbeat echo's round-trip time."""
        self._app_rtt.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        """How late one scheduler tick ran after its deadline."""
        self._loop_lag.observe(seconds)

    def snapshot(self) -> MetricsSnapshot:
        """A frozen copy of every counter."""

        connections = {state: self.connections[state] for state in State}
        return MetricsSnapshot(
            connections=MappingProxyType(connections),
            handshakes_accepted=self.handshakes_accepted,
            handshakes_rejected=_frozen(self.handshakes_rejected),
            pings_sent=self.pings_sent,
            pongs_received=self.pongs_received,
            missed_pongs=self.missed_pongs,
            app_heartbeats_sent=self.app_heartbeats_sent,
            app_heartbeat_echoes=self.app_heartbeat_echoes,
            missed_app_heartbeats=self.missed_app_heartbeats,
            rtt=self._rtt.freeze(),
            app_rtt=self._app_rtt.freeze(),
            closed_by_cause=_frozen(self.closed_by_cause),
            terminations=_frozen(self.terminations),
            close_codes_sent=_frozen(self.close_codes_sent),
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            sends_skipped=self.sends_skipped,
            state_drift_notices=self.state_drift_notices,
            loop_lag=self._loop_lag.freeze(),
            loop_stalls=self.loop_stalls,
            http_requests=_frozen(self.http_requests),
            broker_up=self.broker_up,
            broker_outages=self.broker_outages,
            publish_failures=self.publish_failures,
            drift_notices=_frozen(self.drift_notices),
        )


def _frozen(counter: Counter[_K]) -> Mapping[_K, int]:
    return MappingProxyType(dict(counter))
