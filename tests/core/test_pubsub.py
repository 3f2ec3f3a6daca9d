"""The hub and the relay protocol: pub/sub without sockets (the fleet
engine's own rules are tests/core/test_fleet.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.wire.helpers import connect, parse_server_frames, upgrade_request
from wslifecycle import Config, ConnectionClosed, MetricsSnapshot, State, TerminationCause
from wslifecycle.actions import Terminate
from wslifecycle.hub import Hub
from wslifecycle.relay import MAX_CHANNEL_LENGTH, handle_relay_message
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import HttpReply, ServerConnection


def make_hub(**changes: object) -> Hub:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 10.0}
    values.update(changes)
    return Hub(Config(**values), seeded_entropy(5))  # type: ignore[arg-type]


def texts(wire: ServerConnection) -> list[object]:
    """Text frames the wire wrote: JSON decoded where it is JSON."""
    out: list[object] = []
    for sent in parse_server_frames(wire.data_to_send()):
        if sent.opcode == 0x1:
            try:
                out.append(json.loads(sent.payload))
            except (ValueError, RecursionError):
                out.append(sent.payload.decode())
    return out


def publish(hub: Hub, channel: str, data: object, now: float) -> list[ServerConnection]:
    """Publish from the server side; the wires that got output."""
    hub.publish(channel, data, now)
    return hub.take_output(now)


# --------------------------------------------------------------------- hub


def test_teardown_releases_channels_in_the_broker_before_the_close_frame() -> None:
    """After close, the broker no longer lists the connection."""
    hub = make_hub()
    wire = connect(hub)
    hub.subscribe(wire, "news")
    assert hub.members("news") == [wire]
    wire.close(1.0)
    assert hub.members("news") == []
    assert hub.fleet.channel_sizes() == {}
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1000]


def test_members_never_include_a_closing_connection() -> None:
    """A member that is closing is filtered out even before its release runs."""
    hub = make_hub()
    a, b = connect(hub), connect(hub)
    for wire in (a, b):
        hub.subscribe(wire, "news")
    b.lifecycle.close(1.0)  # DRAINING, release not yet pumped
    assert hub.members("news") == [a]
    hub.unsubscribe(a, "news")
    assert hub.members("news") == []


def test_subscribing_a_closing_connection_raises() -> None:
    """Caller misuse: a connection on its way down takes no channels."""
    hub = make_hub()
    wire = connect(hub)
    wire.close(1.0)
    with pytest.raises(ConnectionClosed):
        hub.subscribe(wire, "news")


def test_the_timer_and_drain_pump_the_wires_they_touch() -> None:
    """handle_timer() returns a wire whose only work is a ping in its fast
    lane (the frame to write), and begin_drain() wires with their bytes ready."""
    hub = make_hub()
    wire = connect(hub)
    assert hub.connections == [wire]
    wakeup = hub.next_wakeup()
    assert wakeup is not None
    work = hub.handle_timer(wakeup)
    assert (work.flush, work.reset, work.alerts) == ([], [], [])
    [(pinged, frame)] = work.pings
    assert pinged is wire
    assert wire.data_to_send() == b""  # the caller writes the lane's frame
    assert parse_server_frames(frame)[0].opcode == 0x9
    assert hub.begin_drain(wakeup) == [wire]
    assert hub.draining
    assert not hub.drained
    assert parse_server_frames(wire.data_to_send())[-1].close_code == 1001
    assert hub.config.heartbeat_interval == 10.0


def test_metrics_are_served_by_the_exporter_or_404() -> None:
    """/metrics goes to the driver's exporter; without one it is 404."""

    def exporter(snapshot: MetricsSnapshot) -> HttpReply:
        return 200, "text/plain", f"accepted {snapshot.handshakes_accepted}\n".encode()

    for hub, expected in (
        (make_hub(), b"404"),
        (Hub(Config(), seeded_entropy(1), metrics_exporter=exporter), b"accepted 0"),
    ):
        wire = hub.open(0.0)
        wire.receive_data(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
        assert expected in wire.data_to_send()
        wire = hub.open(0.0)
        wire.receive_data(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
        assert wire.data_to_send().endswith(b"ok\n")


# ------------------------------------------------------------------- relay


def test_publish_reaches_every_subscriber_with_the_channel_sequence_number() -> None:
    """A publish fans out one message with the channel's next seq (the same
    for every member, whatever else they were sent); the publisher learns
    the seq and how many members the channel had; replies are not
    sequenced, messages are (the connection's count, for ``ack``)."""
    hub = make_hub()
    a, b, c = connect(hub), connect(hub), connect(hub)
    handle_relay_message(hub, a, '{"type":"subscribe","channel":"news"}', 1.0)
    handle_relay_message(hub, b, '{"type":"subscribe","channel":"news"}', 1.0)
    epoch = texts(a)[0]["epoch"]  # type: ignore[index]
    assert texts(b) == [{"type": "subscribed", "channel": "news", "seq": 0, "epoch": epoch}]
    b.send("before", 1.0)  # b's connection count is now 1
    touched = handle_relay_message(
        hub, c, '{"type":"publish","channel":"news","data":{"n":1}}', 1.0
    )
    assert touched == [a, b, c]
    assert texts(a)[-1] == {"type": "message", "channel": "news", "seq": 1, "data": {"n": 1}}
    assert texts(b)[-1] == {"type": "message", "channel": "news", "seq": 1, "data": {"n": 1}}
    assert (a.lifecycle.seq, b.lifecycle.seq) == (1, 2)
    assert texts(c) == [{"type": "published", "channel": "news", "seq": 1, "receivers": 2}]
    assert c.lifecycle.seq == 0


def test_a_slow_subscriber_is_skipped_not_blocked_and_told_at_once() -> None:
    """A member whose write buffer is at the guard misses the
    (non-critical) channel message, and gets a ``drift`` for it at once
    (critical: past the guard); the others get the message."""
    hub = make_hub(write_buffer_guard=1000)
    fast, slow = connect(hub), connect(hub)
    for wire in (fast, slow):
        hub.subscribe(wire, "news")
    slow.write_buffer_size = 1000
    assert publish(hub, "news", "x", 1.0) == [fast, slow]
    assert hub.scheduler.metrics.sends_skipped == 1
    assert texts(fast)[-1] == {"type": "message", "channel": "news", "seq": 1, "data": "x"}
    drift: Any = texts(slow)[-1]
    assert drift == {
        "type": "drift",
        "channel": "news",
        "since": 0,
        "oldest": 2,
        "epoch": drift["epoch"],
        "reason": "slow",
    }


def test_relay_requests_and_their_answers() -> None:
    """subscribe, unsubscribe, members, ack, errors and echoes."""
    hub = make_hub()
    wire = connect(hub)
    for request in (
        '{"type":"subscribe","channel":"a"}',
        '{"type":"members","channel":"a"}',
        '{"type":"unsubscribe","channel":"a"}',
        '{"type":"subscribe","channel":""}',
        '{"type":"subscribe","channel":"' + "x" * (MAX_CHANNEL_LENGTH + 1) + '"}',
        '{"type":"ack","seq":-1}',
        '{"type":"ack","seq":true}',
        '{"type":"something else"}',
        "[1, 2]",
        "{not json",
        "[" * 5000,
    ):
        assert handle_relay_message(hub, wire, request, 1.0) in ([], [wire])
    handle_relay_message(hub, wire, b"\x00binary", 1.0)
    answers: Any = texts(wire)
    assert answers[0] == {
        "type": "subscribed",
        "channel": "a",
        "seq": 0,
        "epoch": answers[0]["epoch"],
    }
    assert answers[1] == {"type": "members", "channel": "a", "ids": [wire.lifecycle.id]}
    assert answers[2] == {"type": "unsubscribed", "channel": "a"}
    assert [a["type"] for a in answers[3:7]] == ["error"] * 4
    assert answers[7] == {"type": "something else"}
    assert answers[8:] == [[1, 2], "{not json", "[" * 5000]  # echoed unchanged


def test_an_ack_that_lags_produces_a_state_drift_notice() -> None:
    """The client acks seq 1 of 2: at teardown it is told it drifted."""
    hub = make_hub()
    a, b = connect(hub), connect(hub)
    handle_relay_message(hub, a, '{"type":"subscribe","channel":"n"}', 1.0)
    publish(hub, "n", 1, 1.0)
    publish(hub, "n", 2, 1.0)
    handle_relay_message(hub, a, '{"type":"ack","seq":1}', 1.0)
    a.data_to_send()
    a.close(2.0)
    assert texts(a) == [{"type": "STATE_DRIFT", "serverSeq": 2, "clientSeq": 1}]
    assert b.lifecycle.state is State.ACTIVE
    assert a.lifecycle.cause is TerminationCause.APPLICATION_CLOSE


# ------------------------------------------------------------- guard rails


def test_a_peer_that_stops_reading_is_terminated_as_a_slow_consumer() -> None:
    """Slow-consumer policy (docs/limits.md): non-critical sends are skipped at the
    guard; any send that finds max_write_buffer unwritten terminates."""
    hub = make_hub(write_buffer_guard=1000, max_write_buffer=4000)
    wire = connect(hub)
    hub.subscribe(wire, "news")
    wire.write_buffer_size = 1500
    assert wire.send("skipped", 1.0) is None
    assert wire.send("critical goes out", 1.0, critical=True) == 1
    wire.data_to_send()
    wire.write_buffer_size = 4000
    assert wire.send("one too many", 1.0, critical=True) is None
    assert wire.lifecycle.cause is TerminationCause.SLOW_CONSUMER
    assert hub.members("news") == []
    with pytest.raises(ConnectionClosed):
        wire.send("after", 1.0)


def test_upgrades_beyond_max_connections_get_503() -> None:
    """A flood beyond max_connections is refused with 503 before the upgrade;
    a slot freed by a close is usable again."""
    hub = make_hub(max_connections=2)
    first, second = connect(hub), connect(hub)
    third = hub.open(0.0)
    third.receive_data(upgrade_request(), 0.0)
    assert third.data_to_send().startswith(b"HTTP/1.1 503 ")
    assert third.lifecycle.cause is TerminationCause.CONNECTION_LIMIT
    first.lifecycle.terminate(1.0, TerminationCause.SLOW_CONSUMER)
    first.pump(1.0)
    fourth = hub.open(1.0)
    fourth.receive_data(upgrade_request(), 1.0)
    assert fourth.data_to_send().startswith(b"HTTP/1.1 101 ")
    assert second.lifecycle.state is State.ACTIVE


def test_a_graceful_close_that_cannot_flush_is_bounded() -> None:
    """A socket closed with bytes unsent is handed back for dropping after
    close_timeout, and the one timer covers it."""
    hub = make_hub(close_timeout=0.5)
    first, second = connect(hub), connect(hub)
    hub.closing(first, 0.0)
    hub.closing(second, 0.25)
    assert hub.next_wakeup() == 0.5  # before any heartbeat (10 s interval)
    assert hub.handle_timer(0.4).reset == []
    assert hub.handle_timer(0.5).reset == [first]
    assert hub.handle_timer(5.0).reset == [second]
    assert hub.handle_timer(9.0).reset == []
    late = make_hub(close_timeout=30.0)
    wire = connect(late)
    heartbeat = late.next_wakeup()
    late.closing(wire, 0.0)
    assert late.next_wakeup() == heartbeat


def test_a_handler_stalled_past_the_bound_gets_1013() -> None:
    """While reading is paused nobody is blamed for unread pongs, but after
    max_missed_pongs + 1 paused slots the connection closes with 1013; a slot
    with reading resumed starts the count again; a loop stall counts nothing."""
    hub = make_hub(max_missed_pongs=2)
    wire = connect(hub)
    lifecycle = wire.lifecycle
    lifecycle.pause_reading(0.0)
    slot = lifecycle.deadline
    assert slot is not None
    for _ in range(2):
        hub.handle_timer(slot)
        slot = lifecycle.deadline
        assert slot is not None
    lifecycle.resume_reading(slot)
    hub.handle_timer(slot)  # resumed: the count starts again
    lifecycle.pause_reading(slot)
    for _ in range(2):
        slot = lifecycle.deadline
        assert slot is not None
        hub.handle_timer(slot)
    slot = lifecycle.deadline
    assert slot is not None
    lifecycle.handle_timer(slot + 100.0, stalled=True)  # a loop stall: not counted
    assert lifecycle.state is State.ACTIVE
    slot = lifecycle.deadline
    assert slot is not None
    hub.handle_timer(slot)
    assert lifecycle.cause is TerminationCause.HANDLER_STALLED
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames if f.opcode == 0x8] == [1013]
    assert hub.scheduler.metrics.terminations == {}


def test_the_hub_does_not_keep_a_closed_wire_alive() -> None:
    """A wire the driver has forgotten is not held by the close bound."""
    import gc

    hub = make_hub(close_timeout=0.5)
    wire = connect(hub)
    wire.lifecycle.terminate(0.0, TerminationCause.SLOW_CONSUMER)
    wire.pump(0.0)
    hub.closing(wire, 0.0)
    del wire
    gc.collect()
    assert hub.handle_timer(100.0).reset == []  # its stale heartbeat entry goes too


def test_changes_count_what_can_move_the_next_deadline() -> None:
    """A new deadline or a bounded close bumps ``changes``; a pong does not
    (so a driver re-arms its timer only when it may have to)."""
    hub = make_hub()
    before = hub.changes
    wire = connect(hub)  # a handshake deadline, then a heartbeat slot
    assert hub.changes > before
    settled = hub.changes
    wire.lifecycle.receive_pong(1.0, b"unsolicited")
    assert hub.changes == settled
    hub.closing(wire, 1.0)
    assert hub.changes == settled + 1


def test_stop_terminates_what_is_open_and_releases_its_channels_first() -> None:
    """A server that stops undrained: every open connection is terminated
    (cause server_stopped) after leaving its channels; the hub forgets it."""
    hub = make_hub()
    subscriber, idle = connect(hub), connect(hub)
    hub.subscribe(subscriber, "news")
    assert sorted(w.id for w in hub.stop(1.0)) == sorted([subscriber.id, idle.id])
    assert hub.members("news") == []
    assert hub.channel_sizes() == {}
    assert hub.connections == []
    for wire in (subscriber, idle):
        assert wire.lifecycle.cause is TerminationCause.SERVER_STOPPED
        assert isinstance(wire.take_actions()[-1], Terminate)
    assert hub.stop(2.0) == []


def test_the_hub_forgets_a_wire_when_it_closes() -> None:
    """Closed connections leave the hub's books (no wire is kept for ever)."""
    hub = make_hub()
    wires = [connect(hub) for _ in range(3)]
    wires[1].receive_eof(1.0)
    assert hub.connections == [wires[0], wires[2]]
    assert len(hub._wires) == 2
