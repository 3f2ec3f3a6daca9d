"""What the hub tells an operator's page: pages of its own on the server's
port, the recent alerts with their time, and the channels with their sizes."""

from __future__ import annotations

import pytest

from tests.wire.helpers import parse_server_frames, upgrade_request
from wslifecycle import AlertKind, Config
from wslifecycle.actions import Alert
from wslifecycle.hub import RECENT_ALERTS, Hub, RecentAlert
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import HttpRequest, PageReply, ServerConnection


def make_hub(**changes: object) -> Hub:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 10.0}
    values.update(changes)
    return Hub(Config(**values), seeded_entropy(3))  # type: ignore[arg-type]


def connect(hub: Hub, now: float = 0.0) -> ServerConnection:
    wire = hub.open(now)
    wire.receive_data(upgrade_request(), now)
    assert wire.data_to_send().startswith(b"HTTP/1.1 101 ")
    wire.take_actions()
    return wire


def page(request: HttpRequest) -> PageReply:
    return 200, "text/html; charset=utf-8", b"<p>hi</p>", (("cache-control", "no-store"),)


# ------------------------------------------------------------------- pages


def test_a_page_answers_plain_gets_and_its_path_still_upgrades() -> None:
    """After add_page, a GET for the path gets the page with its own header
    fields; an upgrade request for the same path is a WebSocket connection."""
    hub = make_hub()
    hub.add_page("/dashboard", page)
    plain = hub.open(0.0)
    plain.receive_data(b"GET /dashboard?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    written = plain.data_to_send()
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-type: text/html; charset=utf-8\r\n" in written
    assert b"\r\ncache-control: no-store\r\n" in written
    assert written.endswith(b"\r\n\r\n<p>hi</p>")
    upgrade = connect(hub)
    assert upgrade.request is not None
    assert upgrade.request.path == "/chat"
    feed = hub.open(0.0)
    feed.receive_data(upgrade_request("/dashboard"), 0.0)
    assert feed.data_to_send().startswith(b"HTTP/1.1 101 ")
    assert feed.request is not None
    assert feed.request.path == "/dashboard"


def test_pages_keep_the_hubs_own_endpoints_and_404() -> None:
    """/healthz is still the hub's; a page path is checked when added."""
    hub = make_hub()
    hub.add_page("/dashboard", page)
    wire = hub.open(0.0)
    wire.receive_data(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    assert wire.data_to_send().endswith(b"ok\n")
    for bad, reason in (
        ("dashboard", "absolute path"),
        ("/a?b", "without a query"),
        ("/metrics", "answered by the hub"),
    ):
        with pytest.raises(ValueError, match=f"path: .*{reason}"):
            hub.add_page(bad, page)


# ------------------------------------------------------------------ alerts


def test_loop_stalls_are_recorded_with_the_time_of_the_late_tick() -> None:
    """handle_timer keeps its alerts among recent_alerts, at its ``now``."""
    hub = make_hub(heartbeat_interval=1.0, stall_threshold=0.5)
    connect(hub)
    wakeup = hub.next_wakeup()
    assert wakeup is not None
    work = hub.handle_timer(wakeup + 2.0)
    assert [alert.kind for alert in work.alerts] == [AlertKind.LOOP_STALL]
    assert list(hub.recent_alerts) == [RecentAlert(wakeup + 2.0, work.alerts[0])]


def test_recent_alerts_keep_only_the_last_ones() -> None:
    """A driver records what reaches it through wires; the record is bounded."""
    hub = make_hub()
    for i in range(RECENT_ALERTS + 5):
        hub.record_alert(float(i), Alert(AlertKind.TEARDOWN_FAILED, f"c{i}", 0.0, "broker down"))
    assert len(hub.recent_alerts) == RECENT_ALERTS
    assert hub.recent_alerts[0].at == 5.0
    assert hub.recent_alerts[-1].alert.connection_id == f"c{RECENT_ALERTS + 4}"


# ---------------------------------------------------------------- channels


def test_channel_sizes_count_members_that_can_still_be_sent_to() -> None:
    """Each channel with its size on this node; a teardown leaves its
    channels at once, and a member on its way down (release not yet run)
    does not count: a channel left with none such is not listed."""
    hub = make_hub()
    first, second, third = connect(hub), connect(hub), connect(hub)
    hub.subscribe(first, "news")
    hub.subscribe(second, "news")
    hub.subscribe(third, "sport")
    assert hub.channel_sizes() == {"news": 2, "sport": 1}
    third.close(1.0)
    assert parse_server_frames(third.data_to_send())[-1].close_code == 1000
    assert hub.channel_sizes() == {"news": 2}
    second.lifecycle.close(1.0)  # DRAINING, its release not yet pumped
    assert hub.channel_sizes() == {"news": 1}
