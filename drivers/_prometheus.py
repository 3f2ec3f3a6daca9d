"""The metrics snapshot in the Prometheus text format (needs prometheus-client).

A fresh registry per scrape with one collector that reads the core's
snapshot: nothing is double-counted and nothing global is touched.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from wslifecycle import Histogram, MetricsSnapshot
from wslifecycle.metrics import LATENCY_BUCKETS
from wslifecycle.wire import HttpReply

__all__ = ["render"]


def render(snapshot: MetricsSnapshot) -> HttpReply:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), histogram.buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family = HistogramMetricFamily(name, doc, labels=())
    family.add_metric((), buckets, histogram.total)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        s = self._s
        connections = GaugeMetricFamily(
            "wslifecycle_connections", "Connections by lifecycle state.", labels=["state"]
        )
        for state, count in s.connections.items():
            if state.value != "closed":
                connections.add_metric([state.value], count)
        yield connections
        yield _counter(
            "wslifecycle_handshakes_accepted", "Upgrades accepted.", s.handshakes_accepted
        )
        rejected = CounterMetricFamily(
            "wslifecycle_handshakes_rejected",
            "Upgrades refused, by HTTP status.",
            labels=["status"],
        )
        for status, count in sorted(s.handshakes_rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected
        yield _counter("wslifecycle_pings_sent", "Protocol pings sent.", s.pings_sent)
        yield _counter("wslifecycle_pongs_received", "Pongs received.", s.pongs_received)
        yield _counter(
            "wslifecycle_missed_pongs", "Pings not answered before the next.", s.missed_pongs
        )
        yield _counter(
            "wslifecycle_app_heartbeats_sent", "JSON heartbeats sent.", s.app_heartbeats_sent
        )
        yield _counter(
            "wslifecycle_app_heartbeat_echoes", "JSON heartbeats echoed.", s.app_heartbeat_echoes
        )
        yield _counter(
            "wslifecycle_missed_app_heartbeats",
            "JSON heartbeats not echoed before the next.",
            s.missed_app_heartbeats,
        )
        yield _histogram("wslifecycle_rtt_seconds", "Ping round-trip time.", s.rtt)
        yield _histogram(
            "wslifecycle_app_rtt_seconds", "JSON heartbeat round-trip time.", s.app_rtt
        )
        yield _histogram(
            "wslifecycle_loop_lag_seconds", "How late the shared timer fired.", s.loop_lag
        )
        yield _counter(
            "wslifecycle_loop_stalls", "Ticks later than the stall threshold.", s.loop_stalls
        )
        closed = CounterMetricFamily(
            "wslifecycle_connections_closed", "Connections ended, by cause.", labels=["cause"]
        )
        for cause, count in sorted(s.closed_by_cause.items(), key=lambda kv: kv[0].value):
            closed.add_metric([cause.value], count)
        yield closed
        terminated = CounterMetricFamily(
            "wslifecycle_terminations",
            "Connections dropped without a close frame, by cause.",
            labels=["cause"],
        )
        for cause, count in sorted(s.terminations.items(), key=lambda kv: kv[0].value):
            terminated.add_metric([cause.value], count)
        yield terminated
        codes = CounterMetricFamily(
            "wslifecycle_close_codes_sent", "Close frames sent, by code.", labels=["code"]
        )
        for code, count in sorted(s.close_codes_sent.items()):
            codes.add_metric([str(code)], count)
        yield codes
        yield _counter("wslifecycle_messages_sent", "Messages sent.", s.messages_sent)
        yield _counter("wslifecycle_messages_received", "Messages received.", s.messages_received)
        yield _counter(
            "wslifecycle_sends_skipped",
            "Sends skipped above the write-buffer guard.",
            s.sends_skipped,
        )
        yield _counter(
            "wslifecycle_state_drift_notices", "STATE_DRIFT notices sent.", s.state_drift_notices
        )
        # Probes are requests, not connections: counted here, and nowhere above.
        requests = CounterMetricFamily(
            "wslifecycle_http_requests",
            "Plain HTTP requests answered (/healthz, /metrics), by path.",
            labels=["path"],
        )
        for path, count in sorted(s.http_requests.items()):
            requests.add_metric([path], count)
        yield requests
        yield GaugeMetricFamily(
            "wslifecycle_broker_up",
            "1 while the fleet's broker (Redis) is reachable; 0: degraded.",
            value=int(s.broker_up),
        )
        yield _counter(
            "wslifecycle_broker_outages", "Times the broker (Redis) was lost.", s.broker_outages
        )
        yield _counter(
            "wslifecycle_publish_failures",
            "Publishes answered with an error (not stored by the broker).",
            s.publish_failures,
        )
        drifts = CounterMetricFamily(
            "wslifecycle_drift_notices",
            "drift notices sent to subscribers, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(s.drift_notices.items()):
            drifts.add_metric([reason], count)
        yield drifts
