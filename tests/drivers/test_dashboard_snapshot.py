"""What the operator's page is told, built from a hub on a fake clock: no
sockets, no driver (drivers/dashboard.py's Dashboard and its page)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest

from tests.wire.helpers import frame, parse_server_frames, upgrade_request
from wslifecycle import AlertKind, Config, TerminationCause
from wslifecycle.actions import Alert
from wslifecycle.drivers import dashboard
from wslifecycle.drivers.dashboard import Dashboard
from wslifecycle.hub import Hub
from wslifecycle.metrics import LATENCY_BUCKETS
from wslifecycle.testing import FakeClock, seeded_entropy
from wslifecycle.wire import HttpRequest, ServerConnection

SNAPSHOT = '{"type":"snapshot"}'


def make_hub(**changes: object) -> Hub:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 10.0}
    values.update(changes)
    return Hub(Config(**values), seeded_entropy(7))  # type: ignore[arg-type]


def connect(hub: Hub, now: float) -> ServerConnection:
    wire = hub.open(now)
    wire.receive_data(upgrade_request(), now)
    assert wire.data_to_send().startswith(b"HTTP/1.1 101 ")
    wire.take_actions()
    return wire


def answer_ping(hub: Hub, wire: ServerConnection, rtt: float) -> float:
    """Run the timer until ``wire`` sends a ping (each connection has its own
    phase); answer it ``rtt`` seconds later. Returns that time."""
    for _ in range(10):
        wakeup = hub.next_wakeup()
        assert wakeup is not None
        work = hub.handle_timer(wakeup)
        for pinged, ping in work.pings:  # the timer's fast lane: the driver writes it
            pinged.queue_frame(ping)
        pings = [f for f in parse_server_frames(wire.data_to_send()) if f.opcode == 0x9]
        if pings:
            wire.receive_data(frame(0xA, pings[0].payload), wakeup + rtt)
            return wakeup + rtt
    raise AssertionError("no ping in ten wake-ups")


# ----------------------------------------------------- connections and RTT


def test_connections_by_state_and_the_rtt_of_each_last_pong() -> None:
    """Open, active and draining are counted; each active connection's last
    pong RTT lands in the /metrics bucket that holds it; one that has not
    answered a ping yet is counted as waiting."""
    hub = make_hub(handshake_timeout=60.0)
    clock = FakeClock()
    hub.open(clock())  # still in its handshake
    answered = connect(hub, clock())
    silent = connect(hub, clock())
    closing = connect(hub, clock())
    clock.advance_to(answer_ping(hub, answered, 0.003))
    silent.data_to_send()
    closing.close(clock())
    snapshot = Dashboard().snapshot(hub, clock())
    assert snapshot["connections"] == {"open": 1, "active": 2, "draining": 1}
    rtt = snapshot["rtt"]
    assert rtt["bounds"] == list(LATENCY_BUCKETS)
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    expected[LATENCY_BUCKETS.index(0.005)] = 1
    assert rtt["counts"] == expected
    assert rtt["waiting"] == 1
    assert rtt["median"] == rtt["p90"] == rtt["max"] == pytest.approx(0.003)
    assert snapshot["draining"] is False
    assert json.loads(json.dumps(snapshot)) == snapshot  # JSON as it is


def test_an_idle_server_has_empty_ranks() -> None:
    """No connection: zero counts and no median (None, drawn as a dash)."""
    snapshot = Dashboard().snapshot(make_hub(), 0.0)
    assert snapshot["connections"] == {"open": 0, "active": 0, "draining": 0}
    assert snapshot["rtt"]["median"] is None
    assert snapshot["rtt"]["max"] is None
    assert snapshot["channels"] == {"listed": True, "count": 0, "members": 0, "top": []}
    assert snapshot["alerts"] == []


# -------------------------------------------------------- closes over time


def test_closes_are_filed_under_the_interval_of_the_snapshot_that_saw_them() -> None:
    """The first snapshot is the baseline; closes between two snapshots go
    to the later one's interval; old intervals slide out; plain HTTP
    requests are counted apart; totals include the closes before the first
    snapshot."""
    hub = make_hub()
    board = Dashboard(interval=5.0, slots=4)
    clock = FakeClock(100.0)
    early = connect(hub, clock())
    early.receive_data(frame(0x8, b"\x03\xe8"), clock())  # the peer closes: 1000
    board.snapshot(hub, clock())  # baseline: that close happened before it

    for _ in range(2):
        connect(hub, clock()).receive_eof(clock())
    plain = hub.open(clock())
    plain.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", clock())
    clock.advance(6.0)  # 106: the next interval
    closes = board.snapshot(hub, clock())["closes"]
    assert closes["interval"] == 5.0
    assert closes["series"] == [{}, {}, {}, {"transport_lost": 2}]
    assert closes["totals"] == {"peer_close": 1, "transport_lost": 2}
    assert closes["http_requests"] == 1

    connect(hub, clock()).receive_eof(clock())
    clock.advance(1.0)  # 107: the same interval
    assert board.snapshot(hub, clock())["closes"]["series"][-1] == {"transport_lost": 3}

    hub.open(clock()).receive_data(upgrade_request(extra=[("Origin", "https://evil.test")]), 0)
    clock.advance(10.0)  # 117: two intervals on
    series = board.snapshot(hub, clock())["closes"]["series"]
    assert series == [{}, {"transport_lost": 3}, {}, {"origin_rejected": 1}]
    clock.advance(20.0)  # the window has moved past them all
    assert board.snapshot(hub, clock())["closes"]["series"] == [{}, {}, {}, {}]


def test_a_clock_that_goes_back_files_closes_under_the_newest_interval() -> None:
    """Closes are never lost, even if the driver's clock misbehaves."""
    hub = make_hub()
    board = Dashboard(interval=1.0, slots=3)
    board.snapshot(hub, 50.0)
    connect(hub, 50.0).receive_eof(50.0)
    board.snapshot(hub, 50.5)
    connect(hub, 50.0).receive_eof(50.0)
    assert board.snapshot(hub, 49.0)["closes"]["totals"] == {"transport_lost": 2}
    assert board.snapshot(hub, 50.2)["closes"]["series"][-1] == {"transport_lost": 2}


# ------------------------------------------------------ alerts and channels


def test_recent_alerts_come_newest_first_with_their_age() -> None:
    """Each alert with how long ago it was raised; at most ``alerts`` of
    them, and how many the hub keeps."""
    hub = make_hub()
    for at, kind in ((1.0, AlertKind.LOOP_STALL), (2.0, AlertKind.SLOW_CONSUMER)):
        hub.record_alert(at, Alert(kind, None if at == 1.0 else "c-2", at, f"detail {at}"))
    hub.record_alert(3.0, Alert(AlertKind.TEARDOWN_FAILED, "c-3", 0.0, "broker down"))
    snapshot = Dashboard(alerts=2).snapshot(hub, 10.0)
    assert snapshot["alerts_kept"] == 3
    assert snapshot["alerts"] == [
        {"ago": 7.0, "kind": "teardown_failed", "connection": "c-3", "value": 0.0,
         "detail": "broker down"},
        {"ago": 8.0, "kind": "slow_consumer", "connection": "c-2", "value": 2.0,
         "detail": "detail 2.0"},
    ]  # fmt: skip


def test_channels_largest_first_with_their_sizes() -> None:
    """The ``channels`` largest (ties by name), with the count of all of them."""
    hub = make_hub()
    wires = [connect(hub, 0.0) for _ in range(3)]
    for wire in wires:
        hub.subscribe(wire, "all")
    hub.subscribe(wires[0], "b-pair")
    hub.subscribe(wires[1], "b-pair")
    hub.subscribe(wires[0], "a-pair")
    hub.subscribe(wires[2], "a-pair")
    hub.subscribe(wires[2], "solo")
    channels = Dashboard(channels=3).snapshot(hub, 1.0)["channels"]
    assert channels == {
        "listed": True,
        "count": 4,
        "members": 8,
        "top": [["all", 3], ["a-pair", 2], ["b-pair", 2]],
    }


# ---------------------------------------------------------------- the feed


def test_the_feed_answers_snapshot_requests_at_most_every_min_refresh() -> None:
    """Requests closer than ``min_refresh`` get the last snapshot again; a
    request that is not one gets an error naming what to send."""
    hub = make_hub()
    board = Dashboard(min_refresh=0.5)
    first = json.loads(board.answer(hub, SNAPSHOT, 1.0))
    assert (first["type"], first["connections"]["active"]) == ("snapshot", 0)
    connect(hub, 1.1)
    assert json.loads(board.answer(hub, SNAPSHOT, 1.2)) == first
    assert json.loads(board.answer(hub, SNAPSHOT, 1.5))["connections"]["active"] == 1
    for other in ("hello", '{"type": "subscribe"}', "{broken", "[1]", b"\x00"):
        error = json.loads(board.answer(hub, other, 2.0))
        assert error == {"type": "error", "reason": 'send {"type": "snapshot"}'}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interval", 0),
        ("interval", float("nan")),
        ("interval", True),
        ("min_refresh", -1),
        ("min_refresh", "1"),
        ("slots", 0),
        ("channels", 2.5),
        ("alerts", False),
    ],
)
def test_bad_settings_name_the_argument(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        Dashboard(**{field: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------- the page


def test_the_page_is_self_contained_and_its_policy_allows_only_itself() -> None:
    """One HTML document: nothing loaded from anywhere (no src, no
    stylesheet link, no URL but its own WebSocket); the CSP names the
    SHA-256 of its one script and one style, and connections to itself."""
    request = HttpRequest("GET", "/dashboard", "1.1", (("host", "x"),))
    status, content_type, body, headers = dashboard.page(request)
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    html = body.decode()
    assert re.findall(r"\bsrc=", html) == []
    assert re.findall(r"<link\b[^>]*>", html) == ['<link rel="icon" href="data:,">']
    assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", html) == []
    fields = dict(headers)
    assert fields["cache-control"] == "no-store"
    policy = fields["content-security-policy"]
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe" not in policy
    with pytest.raises(ValueError, match=r"^html: the page has no <script> block"):
        dashboard.content_security_policy(b"<style>p{}</style>")


def test_add_page_serves_it_on_the_hub() -> None:
    """add_page makes GET /dashboard the page; an upgrade there is the feed."""
    hub = make_hub()
    dashboard.add_page(hub)
    wire = hub.open(0.0)
    wire.receive_data(b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    written = wire.data_to_send()
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-security-policy: default-src 'none'; " in written
    feed = hub.open(0.0)
    feed.receive_data(upgrade_request(dashboard.PATH), 0.0)
    assert feed.data_to_send().startswith(b"HTTP/1.1 101 ")


def test_plain_http_requests_are_counted_apart_from_closes() -> None:
    """Only WebSocket closes are in the series: plain HTTP has a cause but
    is reported as a request count."""
    hub = make_hub()
    board = Dashboard()
    board.snapshot(hub, 0.0)
    plain = hub.open(0.0)
    plain.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert plain.lifecycle.cause is TerminationCause.PLAIN_HTTP
    closes = board.snapshot(hub, 1.0)["closes"]
    assert (closes["totals"], closes["series"][-1], closes["http_requests"]) == ({}, {}, 1)
