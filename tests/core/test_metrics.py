"""Metrics: the histograms' statistics and the frozen, independent snapshot."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from wslifecycle import Config, Histogram, Metrics, MetricsSnapshot, State, TerminationCause
from wslifecycle.actions import CloseTransport, StateChanged
from wslifecycle.hub import Hub
from wslifecycle.metrics import LATENCY_BUCKETS
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import HttpReply

EMPTY_BUCKETS = (0,) * (len(LATENCY_BUCKETS) + 1)


def rtt_of(*values: float) -> Histogram:
    """The RTT histogram after observing ``values``."""
    metrics = Metrics()
    for value in values:
        metrics.observe_rtt(value)
    return metrics.snapshot().rtt


def test_buckets_are_increasing() -> None:
    """The bucket bounds are strictly increasing seconds."""
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_empty_histogram() -> None:
    """No observation: zeros everywhere, mean and every quantile 0.0."""
    histogram = rtt_of()
    assert histogram == Histogram(0, 0.0, 0.0, 0.0, EMPTY_BUCKETS)
    assert histogram.mean == 0.0
    assert histogram.quantile(0.0) == 0.0
    assert histogram.quantile(0.5) == 0.0
    assert histogram.quantile(1.0) == 0.0


def test_one_value() -> None:
    """One observation is its own mean, min, max and every quantile (clamped to it)."""
    histogram = rtt_of(0.003)
    assert (histogram.count, histogram.total, histogram.minimum, histogram.maximum) == (
        1,
        0.003,
        0.003,
        0.003,
    )
    assert histogram.mean == 0.003
    assert histogram.buckets[LATENCY_BUCKETS.index(0.005)] == 1
    assert sum(histogram.buckets) == 1
    for q in (0.0, 0.5, 0.99, 1.0):
        assert histogram.quantile(q) == 0.003


def test_bounds_are_inclusive() -> None:
    """A value equal to a bound falls in that bound's bucket."""
    histogram = rtt_of(0.001, 10.0)
    assert histogram.buckets[1] == 1  # ≤ 0.001
    assert histogram.buckets[len(LATENCY_BUCKETS) - 1] == 1  # ≤ 10.0
    assert histogram.buckets[-1] == 0


def test_values_above_the_last_bucket() -> None:
    """Observations over the last bound go to the overflow bucket; quantiles clamp to max."""
    histogram = rtt_of(20.0, 30.0)
    assert histogram.buckets[-1] == 2
    assert sum(histogram.buckets) == 2
    assert histogram.quantile(0.5) == 30.0
    assert histogram.quantile(1.0) == 30.0
    assert histogram.mean == 25.0


def test_quantiles_of_a_mixed_distribution() -> None:
    """Quantiles are the upper bound of the bucket holding the rank, clamped to min/max."""
    histogram = rtt_of(*([0.002] * 9), 2.0)
    assert histogram.count == 10
    assert histogram.mean == pytest.approx(0.2018)
    assert histogram.minimum == 0.002
    assert histogram.maximum == 2.0
    assert histogram.quantile(0.0) == 0.0025
    assert histogram.quantile(0.5) == 0.0025
    assert histogram.quantile(0.9) == 0.0025
    assert histogram.quantile(0.95) == 2.0  # bucket bound 2.5 clamped to the max
    assert histogram.quantile(1.0) == 2.0


def test_quantile_skips_empty_leading_buckets() -> None:
    """q = 0 gives the first non-empty bucket, not the first bucket."""
    assert rtt_of(0.3, 0.4).quantile(0.0) == 0.4  # bound 0.5 clamped to the max 0.4


def test_small_values_clamp_to_the_minimum() -> None:
    """A quantile never reports less than the smallest observation... nor more than the bound."""
    histogram = rtt_of(0.0001, 0.0004)
    assert histogram.quantile(0.5) == 0.0004
    assert rtt_of(0.0001).quantile(0.5) == 0.0001


def test_each_histogram_gets_its_own_observations() -> None:
    """observe_rtt, observe_app_rtt and observe_loop_lag feed separate histograms."""
    metrics = Metrics()
    metrics.observe_rtt(0.1)
    metrics.observe_app_rtt(0.2)
    metrics.observe_app_rtt(0.3)
    metrics.observe_loop_lag(0.0)
    snapshot = metrics.snapshot()
    assert (snapshot.rtt.count, snapshot.app_rtt.count, snapshot.loop_lag.count) == (1, 2, 1)
    assert snapshot.app_rtt.total == pytest.approx(0.5)
    assert snapshot.loop_lag.buckets[0] == 1


def test_fresh_snapshot_lists_every_state() -> None:
    """A new Metrics reports zero connections in each state and empty counters."""
    snapshot = Metrics().snapshot()
    assert dict(snapshot.connections) == dict.fromkeys(State, 0)
    assert dict(snapshot.closed_by_cause) == {}
    assert dict(snapshot.http_requests) == {}
    assert snapshot.handshakes_accepted == 0
    assert snapshot.loop_stalls == 0


def test_snapshot_is_frozen() -> None:
    """A snapshot and its mappings cannot be modified."""
    metrics = Metrics()
    metrics.closed_by_cause[TerminationCause.PEER_CLOSE] += 1
    snapshot = metrics.snapshot()
    for mapping in (
        snapshot.connections,
        snapshot.handshakes_rejected,
        snapshot.closed_by_cause,
        snapshot.terminations,
        snapshot.close_codes_sent,
        snapshot.http_requests,
    ):
        assert isinstance(mapping, MappingProxyType)
    with pytest.raises(TypeError):
        snapshot.closed_by_cause[TerminationCause.PEER_CLOSE] = 5  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.pings_sent = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.rtt.count = 3  # type: ignore[misc]


def test_snapshot_is_independent_of_later_updates() -> None:
    """Updating the counters after a snapshot leaves the snapshot as it was."""
    metrics = Metrics()
    metrics.connections[State.OPEN] += 1
    metrics.close_codes_sent[1000] += 1
    metrics.handshakes_rejected[403] += 1
    metrics.terminations[TerminationCause.HEARTBEAT_TIMEOUT] += 1
    metrics.pings_sent = 4
    metrics.observe_rtt(0.1)
    before = metrics.snapshot()
    metrics.connections[State.OPEN] += 1
    metrics.close_codes_sent[1000] += 1
    metrics.close_codes_sent[1001] += 1
    metrics.handshakes_rejected[403] += 1
    metrics.terminations[TerminationCause.HEARTBEAT_TIMEOUT] += 1
    metrics.pings_sent = 9
    metrics.observe_rtt(0.2)
    assert before.connections[State.OPEN] == 1
    assert dict(before.close_codes_sent) == {1000: 1}
    assert dict(before.handshakes_rejected) == {403: 1}
    assert dict(before.terminations) == {TerminationCause.HEARTBEAT_TIMEOUT: 1}
    assert before.pings_sent == 4
    assert before.rtt.count == 1
    after = metrics.snapshot()
    assert after.connections[State.OPEN] == 2
    assert after.rtt.count == 2
    assert after != before


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_quantile_refuses_a_q_outside_zero_to_one(q: float) -> None:
    """quantile(q) needs 0 ≤ q ≤ 1."""
    metrics = Metrics()
    metrics.observe_rtt(0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        metrics.snapshot().rtt.quantile(q)


# ------------------------------------------------- plain HTTP requests (probes)


def test_probes_do_not_move_the_numbers_they_read() -> None:
    """/healthz and /metrics are requests, not connections: a scrape sees no
    connection of its own, and probes between two scrapes change no gauge,
    no closed total and no handshake counter; only http_requests counts them."""
    scrapes: list[MetricsSnapshot] = []

    def exporter(snapshot: MetricsSnapshot) -> HttpReply:
        scrapes.append(snapshot)
        return 200, "text/plain", b"metrics\n"

    hub = Hub(Config(), seeded_entropy(1), metrics_exporter=exporter)
    for path in ("/metrics", "/healthz", "/healthz", "/metrics"):
        wire = hub.open(0.0)
        wire.receive_data(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 0.0)
        assert wire.data_to_send().startswith(b"HTTP/1.1 200 ")
        # The driver is still told the connection closed (it closes the socket).
        changed, close = wire.take_actions()
        assert changed == StateChanged(
            wire.id, State.OPEN, State.CLOSED, TerminationCause.PLAIN_HTTP
        )
        assert close == CloseTransport()
    first, second = scrapes
    for snapshot in scrapes:
        assert dict(snapshot.connections) == dict.fromkeys(State, 0)
        assert dict(snapshot.closed_by_cause) == {}
        assert dict(snapshot.terminations) == {}
        assert (snapshot.handshakes_accepted, dict(snapshot.handshakes_rejected)) == (0, {})
    assert dict(first.http_requests) == {"/metrics": 1}  # the scrape itself
    assert dict(second.http_requests) == {"/metrics": 2, "/healthz": 2}
    assert len(hub.scheduler) == 0


def test_a_probe_is_a_connection_until_its_head_says_otherwise() -> None:
    """While a head is arriving nobody knows what it is: the connection is
    OPEN (and the handshake timeout guards it). Once it reads as a plain
    request it leaves the gauge; a wrong method is still a request."""
    hub = Hub(Config(), seeded_entropy(1))
    metrics = hub.scheduler.metrics
    wire = hub.open(0.0)
    wire.receive_data(b"GET /healthz HTTP/1.1\r\n", 0.0)
    assert metrics.connections[State.OPEN] == 1
    wire.receive_data(b"Host: x\r\n\r\n", 0.0)
    assert metrics.connections[State.OPEN] == 0
    post = hub.open(0.0)
    post.receive_data(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0.0)
    written = post.data_to_send()
    assert written.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nallow: GET, HEAD\r\n" in written
    assert post.ended
    snapshot = metrics.snapshot()
    assert dict(snapshot.http_requests) == {"/healthz": 1, "/metrics": 1}
    assert dict(snapshot.handshakes_rejected) == {}
    assert dict(snapshot.connections) == dict.fromkeys(State, 0)
    assert dict(snapshot.closed_by_cause) == {}
