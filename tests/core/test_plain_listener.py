"""A listener for probes and scrapes only (``Hub.open(now, plain_only=True)``):
/healthz and /metrics are answered, every other path is 404, no upgrade is
accepted, and none of it counts in the server's metrics."""

from __future__ import annotations

import pytest

from tests.wire.helpers import upgrade_request
from wslifecycle import Config, MetricsSnapshot, State, TerminationCause
from wslifecycle.actions import Terminate
from wslifecycle.hub import Hub
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import HttpReply, ServerConnection


def exporter(snapshot: MetricsSnapshot) -> HttpReply:
    opened = sum(snapshot.connections.values())
    return 200, "text/plain", f"connections {opened}\n".encode()


def make_hub(**changes: object) -> Hub:
    values: dict[str, object] = {
        "allow_no_origin": True,
        "heartbeat_interval": 10.0,
        "handshake_timeout": 2.0,
    }
    values.update(changes)
    return Hub(Config(**values), seeded_entropy(3), metrics_exporter=exporter)  # type: ignore[arg-type]


def status_of(written: bytes) -> int:
    return int(written.split(b" ", 2)[1])


def nothing_counted(hub: Hub) -> None:
    """The main scheduler's metrics show no connection at all."""
    snapshot = hub.scheduler.metrics.snapshot()
    assert sum(snapshot.connections.values()) == 0
    assert dict(snapshot.closed_by_cause) == {}
    assert dict(snapshot.handshakes_rejected) == {}
    assert dict(snapshot.terminations) == {}
    assert snapshot.handshakes_accepted == 0


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /chat?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (upgrade_request("/chat"), 404),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"\x16\x03\x01\x02\x00", 400),
    ],
)
def test_a_plain_only_wire_answers_the_endpoints_and_nothing_else(
    request_: bytes, status: int
) -> None:
    """Every request is answered over HTTP, then the connection closes;
    an upgrade request is never accepted (404 on a WebSocket path)."""
    hub = make_hub()
    wire = hub.open(0.0, plain_only=True)
    wire.receive_data(request_, 0.0)
    written = wire.data_to_send()
    assert status_of(written) == status
    assert b"\r\nconnection: close\r\n" in written
    assert wire.state is State.CLOSED
    assert wire.request is None
    nothing_counted(hub)


def test_the_plain_listener_reports_the_websocket_metrics_only() -> None:
    """/metrics on the plain listener shows the main listener's connections,
    not itself; /healthz follows the main listener's drain."""
    hub = make_hub()
    hub.open(0.0)  # a WebSocket-listener connection, handshake pending
    scrape = hub.open(0.0, plain_only=True)
    scrape.receive_data(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert scrape.data_to_send().endswith(b"connections 1\n")
    assert len(hub.connections) == 1
    assert len(hub.scheduler) == 1


def test_a_silent_plain_connection_is_cut_at_the_handshake_timeout_uncounted() -> None:
    """The plain listener's connections have the handshake deadline too: the
    hub's one timer covers them; the cut counts nowhere."""
    hub = make_hub()
    changes = hub.changes
    wire = hub.open(0.0, plain_only=True)
    assert hub.changes > changes  # its deadline moved the timer
    assert hub.next_wakeup() == pytest.approx(2.0, abs=0.05)
    assert hub.handle_timer(1.0).flush == []
    work = hub.handle_timer(2.1)
    assert work.flush == [wire]
    assert work.alerts == []
    assert wire.lifecycle.cause is TerminationCause.HANDSHAKE_TIMEOUT
    assert any(isinstance(action, Terminate) for action in wire.take_actions())
    assert hub.next_wakeup() is None
    nothing_counted(hub)


def test_the_timer_takes_the_earliest_deadline_of_both_listeners() -> None:
    """next_wakeup is the earlier of the two schedulers' wake-ups, whichever
    listener it belongs to."""
    hub = make_hub()
    hub.open(0.0)  # main: due at 2.0
    hub.open(1.0, plain_only=True)  # plain: due at 3.0 (later)
    assert hub.next_wakeup() == pytest.approx(2.0, abs=0.05)
    other = make_hub()
    other.open(1.0)  # main: due at 3.0
    other.open(0.0, plain_only=True)  # plain: due at 2.0 (earlier)
    assert other.next_wakeup() == pytest.approx(2.0, abs=0.05)


def test_a_tick_limit_covers_both_listeners() -> None:
    """At most ``limit`` connections per call in all; the plain listener's
    wait for the next call when the main listener used the budget up."""
    hub = make_hub(timer_slack=0.0)
    main = [hub.open(0.0) for _ in range(2)]
    plain = hub.open(0.0, plain_only=True)
    first = hub.handle_timer(5.0, limit=2)
    assert first.flush == main
    assert hub.next_wakeup() == 2.0  # still due
    second = hub.handle_timer(5.0, limit=2)
    assert second.flush == [plain]
    both = make_hub(timer_slack=0.0)
    wires = [both.open(0.0), both.open(0.0, plain_only=True)]
    assert both.handle_timer(5.0, limit=5).flush == wires


def test_a_loop_stall_seen_by_the_plain_listener_is_not_reported_twice() -> None:
    """A late tick that only the plain listener's connection notices blames
    nobody and raises no alert (the main scheduler reports stalls)."""
    hub = make_hub(stall_threshold=0.5, timer_slack=0.0)
    wire = hub.open(0.0, plain_only=True)
    work = hub.handle_timer(10.0)  # 8 s late
    assert work.flush == [wire]
    assert work.alerts == []
    assert wire.state is State.OPEN  # a late tick terminates nobody
    nothing_counted(hub)


def test_a_drain_covers_the_plain_listener_and_stop_terminates_it() -> None:
    """A drain refuses a pending plain request with 503 like any handshake,
    and the hub is drained only when the plain connections are closed too;
    stop terminates plain connections still open."""
    hub = make_hub()
    pending = hub.open(0.0, plain_only=True)
    touched = hub.begin_drain(1.0)
    assert touched == [pending]
    assert status_of(pending.data_to_send()) == 503
    drained = [hub.drained]
    late = hub.open(1.5, plain_only=True)  # a scrape during the drain is served
    drained.append(hub.drained)
    late.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1.6)
    assert status_of(late.data_to_send()) == 503  # draining: take it out of rotation
    drained.append(hub.drained)
    assert drained == [True, False, True]

    stopped = make_hub()
    wires: list[ServerConnection] = [stopped.open(0.0), stopped.open(0.0, plain_only=True)]
    assert stopped.stop(1.0) == wires
    assert all(wire.lifecycle.cause is TerminationCause.SERVER_STOPPED for wire in wires)
    assert stopped.scheduler.metrics.terminations[TerminationCause.SERVER_STOPPED] == 1
