"""ConnectionLifecycle: every public method in every state it can meet, the
exact actions it queues, the causes it records and the metrics it keeps."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._build import wrong_type_on_compiled
from tests._hypothesis import examples
from wslifecycle import (
    AlertKind,
    CloseCode,
    ClosingStep,
    Config,
    ConnectionClosed,
    ConnectionLifecycle,
    Entropy,
    HeartbeatMode,
    Input,
    InvalidCloseCode,
    InvalidTransition,
    Scheduler,
    State,
    TerminationCause,
)
from wslifecycle import events as ev
from wslifecycle.actions import (
    AcceptUpgrade,
    Action,
    Alert,
    CloseTransport,
    DeliverMessage,
    RejectUpgrade,
    ReleaseChannels,
    SendClose,
    SendHeartbeat,
    SendMessage,
    SendPing,
    SendStateDrift,
    StateChanged,
    Terminate,
)
from wslifecycle.heartbeat import heartbeat_text
from wslifecycle.testing import seeded_entropy
from wslifecycle.testing.strategies import sendable_close_codes

from .conftest import MakeScheduler

OPEN, ACTIVE, DRAINING, CLOSED = State.OPEN, State.ACTIVE, State.DRAINING, State.CLOSED
Cause = TerminationCause
GUARD = 1024 * 1024


# ----------------------------------------------------------------------- helpers


def accept(scheduler: Scheduler, now: float = 0.0) -> ConnectionLifecycle:
    """Open and upgrade a connection at ``now``; its actions are taken."""
    lifecycle = scheduler.open(now)
    assert lifecycle.request_upgrade(now, origin=None, host="localhost")
    lifecycle.take_actions()
    return lifecycle


def in_state(scheduler: Scheduler, state: State) -> ConnectionLifecycle:
    """A connection brought to ``state`` (DRAINING: closed by the app at 1 s,
    channels not yet released; CLOSED: transport lost at 1 s)."""
    lifecycle = scheduler.open(0.0)
    if state is not OPEN:
        assert lifecycle.request_upgrade(0.0, origin=None, host="localhost")
    if state is DRAINING:
        lifecycle.close(1.0)
    elif state is CLOSED:
        lifecycle.transport_lost(1.0)
    lifecycle.take_actions()
    assert lifecycle.state is state
    return lifecycle


def fire(scheduler: Scheduler, lifecycle: ConnectionLifecycle, late: float = 0.0) -> list[Action]:
    """Tick the scheduler at the connection's deadline (plus ``late``); its actions."""
    assert lifecycle.deadline is not None
    ran = scheduler.tick(lifecycle.deadline + late)
    assert lifecycle in ran
    return lifecycle.take_actions()


def state_of(lifecycle: ConnectionLifecycle) -> State:
    """The state, read through a call so mypy does not keep an earlier narrowing."""
    return lifecycle.state


def step_of(lifecycle: ConnectionLifecycle) -> ClosingStep | None:
    """The closing step, read through a call (as ``state_of``)."""
    return lifecycle.closing_step


def paused_of(lifecycle: ConnectionLifecycle) -> bool:
    """Whether reading is paused, read through a call (as ``state_of``)."""
    return lifecycle.reading_paused


def deadline_of(lifecycle: ConnectionLifecycle) -> float | None:
    """The deadline, read through a call so mypy does not keep an earlier narrowing."""
    return lifecycle.deadline


def kinds(actions: Sequence[Action]) -> list[type]:
    """The action types, in order."""
    return [type(action) for action in actions]


def changed(
    lc: ConnectionLifecycle, previous: State, current: State, cause: Cause | None
) -> StateChanged:
    """The StateChanged action ``lc`` emits for that move."""
    return StateChanged(lc.id, previous, current, cause)


# --------------------------------------------------------------------- creation


def test_a_new_connection_is_open_with_a_handshake_deadline(scheduler: Scheduler) -> None:
    """open() gives an OPEN lifecycle, no cause, nothing queued, the handshake deadline armed."""
    lc = scheduler.open(3.0)
    assert lc.state is OPEN
    assert lc.cause is None
    assert lc.opened_at == 3.0
    assert lc.deadline == 3.0 + scheduler.config.handshake_timeout
    assert (lc.seq, lc.client_seq, lc.missed_pongs, lc.missed_echoes) == (0, None, 0, 0)
    assert lc.latency is None
    assert lc.reading_paused is False
    assert lc.closing_step is None
    assert lc.channels == frozenset()
    assert not lc.accepts_sends
    assert lc.take_actions() == []
    assert lc.id.startswith("conn-1-")


def test_repr_names_id_and_state(scheduler: Scheduler) -> None:
    """repr shows the connection id and the state's value."""
    lc = scheduler.open(0.0)
    assert repr(lc) == f"<ConnectionLifecycle {lc.id} open>"
    lc.request_upgrade(0.0, origin=None, host="localhost")
    assert repr(lc) == f"<ConnectionLifecycle {lc.id} active>"


def test_take_actions_empties_the_queue(scheduler: Scheduler) -> None:
    """take_actions returns what was queued once; the next call returns a fresh empty list."""
    lc = scheduler.open(0.0)
    lc.request_upgrade(0.0, origin=None, host="localhost")
    first = lc.take_actions()
    assert kinds(first) == [StateChanged, AcceptUpgrade]
    second = lc.take_actions()
    assert second == []
    second.append(CloseTransport())  # the caller's list is not the internal queue
    assert lc.take_actions() == []


# -------------------------------------------------------------------- handshake


def test_request_upgrade_accepts(scheduler: Scheduler) -> None:
    """An allowed request moves OPEN → ACTIVE, emits AcceptUpgrade and arms the first heartbeat."""
    lc = scheduler.open(1.0)
    assert lc.request_upgrade(2.0, origin=None, host="localhost") is True
    assert lc.take_actions() == [changed(lc, OPEN, ACTIVE, None), AcceptUpgrade(lc.id)]
    assert lc.state is ACTIVE
    assert lc.accepts_sends
    assert lc.cause is None
    assert lc.deadline is not None
    assert 2.0 < lc.deadline <= 2.0 + scheduler.config.heartbeat_interval
    metrics = scheduler.metrics
    assert metrics.handshakes_accepted == 1
    assert metrics.connections[OPEN] == 0
    assert metrics.connections[ACTIVE] == 1


def test_request_upgrade_refuses_a_foreign_origin_with_403(make_scheduler: MakeScheduler) -> None:
    """A foreign Origin gets HTTP 403 and the connection ends with cause origin_rejected."""
    scheduler = make_scheduler(allow_no_origin=False)
    lc = scheduler.open(0.0)
    assert lc.request_upgrade(0.5, origin="https://evil.example", host="app.example.com") is False
    assert lc.take_actions() == [
        changed(lc, OPEN, CLOSED, Cause.ORIGIN_REJECTED),
        RejectUpgrade(
            403,
            "Origin 'https://evil.example' not allowed: it is not the Host's origin;"
            " add it with --allow-origin or allowed_origins",
        ),
        CloseTransport(),
    ]
    assert lc.state is CLOSED
    assert lc.cause is Cause.ORIGIN_REJECTED
    assert lc.deadline is None
    assert lc not in scheduler.connections
    assert scheduler.metrics.handshakes_rejected[403] == 1
    assert scheduler.metrics.closed_by_cause[Cause.ORIGIN_REJECTED] == 1
    assert scheduler.metrics.handshakes_accepted == 0


def test_request_upgrade_accepts_the_hosts_own_origin(make_scheduler: MakeScheduler) -> None:
    """An Origin naming the request's Host (same-origin) is accepted even when
    Origin-less clients are not."""
    lc = make_scheduler(allow_no_origin=False).open(0.0)
    assert lc.request_upgrade(0.5, origin="https://app.example", host="app.example:443") is True
    assert lc.state is ACTIVE


def test_request_upgrade_without_origin_needs_allow_no_origin(
    make_scheduler: MakeScheduler,
) -> None:
    """No Origin header is refused (403) unless allow_no_origin is set."""
    lc = make_scheduler(allow_no_origin=False).open(0.0)
    assert lc.request_upgrade(0.0, origin=None, host="localhost") is False
    assert (
        RejectUpgrade(403, "Origin missing: pass --allow-no-origin or allowed_origins")
        in lc.take_actions()
    )


def test_request_upgrade_while_draining_gets_503(scheduler: Scheduler) -> None:
    """During a drain an upgrade is refused with 503 before the origin is even looked at."""
    scheduler.begin_drain(0.0)
    lc = scheduler.open(1.0)
    assert lc.request_upgrade(1.0, origin="https://evil.example", host="x") is False
    assert lc.take_actions() == [
        changed(lc, OPEN, CLOSED, Cause.SERVER_DRAINING),
        RejectUpgrade(503, "server is shutting down"),
        CloseTransport(),
    ]
    assert lc.cause is Cause.SERVER_DRAINING
    assert scheduler.metrics.handshakes_rejected == {503: 1}


def test_a_plain_http_request_ends_without_a_deadline(scheduler: Scheduler) -> None:
    """A plain HTTP request (/healthz) is CLOSED at once with cause plain_http:
    no deadline left, gone from the scheduler, counted in http_requests only."""
    lc = scheduler.open(0.0)
    lc.serve_plain_http(0.1, "/healthz")
    assert lc.take_actions() == [changed(lc, OPEN, CLOSED, Cause.PLAIN_HTTP), CloseTransport()]
    assert (lc.state, lc.cause) == (CLOSED, Cause.PLAIN_HTTP)
    assert lc.deadline is None
    assert lc not in scheduler.connections
    assert scheduler.next_deadline() is None
    metrics = scheduler.metrics
    assert metrics.http_requests == {"/healthz": 1}
    assert metrics.connections[OPEN] == 0
    assert not metrics.closed_by_cause
    assert not metrics.handshakes_rejected


@pytest.mark.parametrize("state", [ACTIVE, DRAINING, CLOSED])
def test_request_upgrade_after_open_raises(scheduler: Scheduler, state: State) -> None:
    """A second upgrade is caller misuse: InvalidTransition, nothing queued, state kept."""
    lc = in_state(scheduler, state)
    with pytest.raises(InvalidTransition) as info:
        lc.request_upgrade(2.0, origin=None, host="localhost")
    assert info.value.state is state
    assert info.value.input is Input.UPGRADE_ACCEPTED
    assert lc.take_actions() == []
    assert lc.state is state


@pytest.mark.parametrize("status", [300, 301, 400, 405, 426, 431, 500, 599])
def test_reject_upgrade(scheduler: Scheduler, status: int) -> None:
    """The wire's refusal goes out with its status; cause handshake_rejected."""
    lc = scheduler.open(0.0)
    lc.reject_upgrade(0.2, status, "bad request")
    assert lc.take_actions() == [
        changed(lc, OPEN, CLOSED, Cause.HANDSHAKE_REJECTED),
        RejectUpgrade(status, "bad request"),
        CloseTransport(),
    ]
    assert lc.cause is Cause.HANDSHAKE_REJECTED
    assert scheduler.metrics.handshakes_rejected[status] == 1
    assert scheduler.metrics.closed_by_cause[Cause.HANDSHAKE_REJECTED] == 1
    assert len(scheduler) == 0


@pytest.mark.parametrize("status", [101, 200, 299, 600, 0, True, 404.0, "404"])
def test_reject_upgrade_needs_an_error_status(scheduler: Scheduler, status: object) -> None:
    """A refusal with a status that is not an int from 300 (redirects) to 599
    raises ValueError and changes nothing: a bool, a float or a string in the
    range is refused like any other."""
    lc = scheduler.open(0.0)
    if wrong_type_on_compiled(status, lambda: lc.reject_upgrade(0.2, status, "nope")):  # type: ignore[arg-type]
        assert lc.state is OPEN
        return
    expected = f"needs an HTTP status 300-599, got {re.escape(repr(status))}$"
    with pytest.raises(ValueError, match=expected):
        lc.reject_upgrade(0.2, status, "nope")  # type: ignore[arg-type]
    assert lc.state is OPEN
    assert lc.take_actions() == []
    assert not scheduler.metrics.handshakes_rejected


def test_refusals_are_counted_per_status(scheduler: Scheduler) -> None:
    """handshakes_rejected counts every refusal under its status, however
    it came (the wire, the origin policy, a drain)."""
    for _ in range(3):
        scheduler.open(0.0).reject_upgrade(0.1, 400, "bad request")
    scheduler.open(0.0).reject_upgrade(0.1, 426, "upgrade required")
    scheduler.begin_drain(1.0)
    for _ in range(2):
        assert not scheduler.open(1.0).request_upgrade(1.0, origin=None, host="localhost")
    assert scheduler.metrics.handshakes_rejected == {400: 3, 426: 1, 503: 2}
    assert scheduler.metrics.closed_by_cause == {
        Cause.HANDSHAKE_REJECTED: 4,
        Cause.SERVER_DRAINING: 2,
    }


def test_closing_connections_count_toward_max_connections(
    make_scheduler: MakeScheduler,
) -> None:
    """max_connections counts ACTIVE and DRAINING connections alike: a slot
    is free again only once a closing connection is CLOSED."""
    scheduler = make_scheduler(max_connections=2)
    first, _second = accept(scheduler), accept(scheduler)
    first.close(1.0)
    refused = scheduler.open(1.0)
    assert refused.request_upgrade(1.0, origin=None, host="localhost") is False
    assert RejectUpgrade(503, "server is full") in refused.take_actions()
    assert refused.cause is Cause.CONNECTION_LIMIT
    first.transport_lost(2.0)
    assert accept(scheduler, 2.0).state is ACTIVE


def test_reject_upgrade_after_accept_raises(active: ConnectionLifecycle) -> None:
    """An accepted connection cannot be refused: InvalidTransition on UPGRADE_REJECTED."""
    with pytest.raises(InvalidTransition) as info:
        active.reject_upgrade(1.0, 400, "late")
    assert info.value.input is Input.UPGRADE_REJECTED
    assert active.state is ACTIVE


# ----------------------------------------------------------- misuse while OPEN

OPEN_MISUSE: list[tuple[Callable[[ConnectionLifecycle], object], Input]] = [
    (lambda lc: lc.receive_pong(1.0, b""), Input.PONG),
    (lambda lc: lc.receive_message(1.0, "hi"), Input.MESSAGE),
    (lambda lc: lc.note_activity(1.0), Input.ACTIVITY),
    (lambda lc: lc.report_client_seq(1.0, 3), Input.CLIENT_SEQ),
    (lambda lc: lc.send("x", buffered=0), Input.SEND),
    (lambda lc: lc.send("x", buffered=0, critical=True), Input.SEND),
    (lambda lc: lc.subscribe("news"), Input.SUBSCRIBE),
    (lambda lc: lc.unsubscribe("news"), Input.UNSUBSCRIBE),
    (lambda lc: lc.close(1.0), Input.CLOSE),
    (lambda lc: lc.receive_close(1.0, 1000), Input.PEER_CLOSE),
    (lambda lc: lc.fail(1.0, Cause.PROTOCOL_ERROR, 1002), Input.PROTOCOL_ERROR),
    (lambda lc: lc.handler_failed(1.0, "boom"), Input.HANDLER_ERROR),
    (lambda lc: lc.channels_released(1.0, buffered=0), Input.CHANNELS_RELEASED),
    (lambda lc: lc.channel_release_failed(1.0, "down"), Input.RELEASE_FAILED),
]


@pytest.mark.parametrize(("call", "input_"), OPEN_MISUSE, ids=[i.value for _, i in OPEN_MISUSE])
def test_connection_inputs_before_the_upgrade_raise(
    scheduler: Scheduler, call: Callable[[ConnectionLifecycle], object], input_: Input
) -> None:
    """Before the upgrade, every connection-level input is misuse: InvalidTransition."""
    lc = scheduler.open(0.0)
    with pytest.raises(InvalidTransition) as info:
        call(lc)
    assert info.value.state is OPEN
    assert info.value.input is input_
    assert lc.state is OPEN
    assert lc.take_actions() == []


# ------------------------------------------------------------------------- pong


def test_pong_with_the_latest_payload_gives_rtt(scheduler: Scheduler) -> None:
    """A pong echoing the latest ping resets missed and records its round trip."""
    lc = accept(scheduler)
    slot = lc.deadline
    assert slot is not None
    [ping] = fire(scheduler, lc)
    assert isinstance(ping, SendPing)
    assert len(ping.payload) == 8
    assert lc.missed_pongs == 1
    lc.receive_pong(slot + 0.25, ping.payload)
    assert lc.missed_pongs == 0
    assert lc.latency == pytest.approx(0.25)
    snapshot = scheduler.metrics.snapshot()
    assert snapshot.pongs_received == 1
    assert snapshot.rtt.count == 1
    assert snapshot.rtt.total == pytest.approx(0.25)
    assert lc.take_actions() == []


def test_pong_with_another_payload_resets_missed_without_rtt(scheduler: Scheduler) -> None:
    """An unsolicited or stale pong proves life (missed → 0) but yields no RTT."""
    lc = accept(scheduler)
    fire(scheduler, lc)
    lc.receive_pong(7.0, b"something else")
    assert lc.missed_pongs == 0
    assert lc.latency is None
    assert scheduler.metrics.snapshot().rtt.count == 0
    assert scheduler.metrics.pongs_received == 1


def test_a_pong_without_payload_answers_an_empty_ping() -> None:
    """receive_pong's payload defaults to the empty one, so it times a probe
    whose payload was empty (an Entropy may give those)."""
    entropy = Entropy(connection_id=lambda: "conn-1", probe_payload=lambda: b"")
    scheduler = Scheduler(Config(heartbeat_interval=10.0, allow_no_origin=True), entropy)
    lc = accept(scheduler)
    due = deadline_of(lc)
    assert due is not None
    assert fire(scheduler, lc) == [SendPing(b"")]
    lc.receive_pong(due + 0.25)
    assert lc.latency == pytest.approx(0.25)
    assert scheduler.metrics.snapshot().rtt.count == 1


def test_pong_before_any_ping_gives_no_rtt(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """With no ping out, even an empty pong yields no round trip."""
    active.receive_pong(1.0)
    assert active.latency is None
    assert scheduler.metrics.snapshot().rtt.count == 0


def test_a_payload_gives_rtt_only_once(scheduler: Scheduler) -> None:
    """A duplicate pong of the same ping does not record a second round trip."""
    lc = accept(scheduler)
    [ping] = fire(scheduler, lc)
    assert isinstance(ping, SendPing)
    lc.receive_pong(7.0, ping.payload)
    lc.receive_pong(8.0, ping.payload)
    assert scheduler.metrics.snapshot().rtt.count == 1
    assert scheduler.metrics.pongs_received == 2


def test_pong_while_draining_still_counts(scheduler: Scheduler) -> None:
    """A pong arriving during teardown is counted and measured."""
    lc = accept(scheduler)
    [ping] = fire(scheduler, lc)
    assert isinstance(ping, SendPing)
    lc.close(7.0)
    lc.take_actions()
    lc.receive_pong(7.5, ping.payload)
    assert lc.missed_pongs == 0
    assert lc.latency is not None
    assert lc.take_actions() == []
    assert lc.state is DRAINING


def test_pong_after_close_is_ignored(scheduler: Scheduler) -> None:
    """A late pong on a CLOSED connection changes nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.receive_pong(5.0, b"late")
    assert scheduler.metrics.pongs_received == 0
    assert lc.take_actions() == []


# --------------------------------------------------------------------- messages


def test_message_is_delivered(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """Text and binary messages reach the application in order."""
    active.receive_message(1.0, "hello")
    active.receive_message(1.5, b"\x00\x01")
    assert active.take_actions() == [DeliverMessage("hello"), DeliverMessage(b"\x00\x01")]
    assert scheduler.metrics.messages_received == 2


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
def test_message_while_closing_is_dropped(scheduler: Scheduler, state: State) -> None:
    """Once teardown began, messages are not delivered nor counted."""
    lc = in_state(scheduler, state)
    lc.receive_message(2.0, "too late")
    assert lc.take_actions() == []
    assert scheduler.metrics.messages_received == 0
    assert lc.state is state


def test_heartbeat_lookalike_is_delivered_in_protocol_mode(active: ConnectionLifecycle) -> None:
    """Without application heartbeats, a heartbeat-shaped message is ordinary data."""
    text = heartbeat_text("abc")
    active.receive_message(1.0, text)
    assert active.take_actions() == [DeliverMessage(text)]


def test_application_heartbeat_probe_and_echo(make_scheduler: MakeScheduler) -> None:
    """APPLICATION mode probes with a JSON heartbeat; its echo is swallowed and timed."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = accept(scheduler)
    slot = lc.deadline
    assert slot is not None
    [probe] = fire(scheduler, lc)
    assert isinstance(probe, SendHeartbeat)
    assert lc.missed_echoes == 1
    assert lc.missed_pongs == 0
    lc.receive_message(slot + 0.5, probe.text)
    assert lc.take_actions() == []
    assert lc.missed_echoes == 0
    metrics = scheduler.metrics
    assert metrics.app_heartbeats_sent == 1
    assert metrics.app_heartbeat_echoes == 1
    assert metrics.pings_sent == 0
    assert metrics.messages_received == 1
    snapshot = metrics.snapshot()
    assert snapshot.app_rtt.count == 1
    assert snapshot.app_rtt.total == pytest.approx(0.5)
    assert snapshot.rtt.count == 0


def test_echo_with_another_id_resets_without_rtt(make_scheduler: MakeScheduler) -> None:
    """An echo of an old probe proves life but yields no RTT."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = accept(scheduler)
    fire(scheduler, lc)
    lc.receive_message(7.0, heartbeat_text("not-the-latest"))
    assert lc.take_actions() == []
    assert lc.missed_echoes == 0
    assert scheduler.metrics.app_heartbeat_echoes == 1
    assert scheduler.metrics.snapshot().app_rtt.count == 0


def test_answered_application_heartbeats_are_never_counted_missed(
    make_scheduler: MakeScheduler,
) -> None:
    """A JSON heartbeat whose echo came back is not counted in
    missed_app_heartbeats when the next one goes out, and its round trip is
    timed once: a later echo without an id proves life but times nothing."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = accept(scheduler)
    for _ in range(3):
        due = deadline_of(lc)
        assert due is not None
        [probe] = fire(scheduler, lc)
        assert isinstance(probe, SendHeartbeat)
        lc.receive_message(due + 0.5, probe.text)
        lc.receive_message(due + 0.7, '{"type":"heartbeat"}')
    assert lc.take_actions() == []
    metrics = scheduler.metrics
    assert metrics.app_heartbeats_sent == 3
    assert metrics.app_heartbeat_echoes == 6
    assert metrics.missed_app_heartbeats == 0
    assert metrics.snapshot().app_rtt.count == 3
    assert metrics.snapshot().app_rtt.total == pytest.approx(1.5)


def test_ordinary_messages_are_delivered_in_application_mode(
    make_scheduler: MakeScheduler,
) -> None:
    """Only heartbeat echoes are swallowed; other text and binary data are delivered."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = accept(scheduler)
    lc.receive_message(1.0, '{"type":"chat"}')
    lc.receive_message(1.0, b'{"type":"heartbeat","id":"x"}')
    assert lc.take_actions() == [
        DeliverMessage('{"type":"chat"}'),
        DeliverMessage(b'{"type":"heartbeat","id":"x"}'),
    ]
    assert scheduler.metrics.app_heartbeat_echoes == 0


def test_both_mode_sends_ping_and_heartbeat_with_the_same_payload(
    make_scheduler: MakeScheduler,
) -> None:
    """BOTH mode probes with a ping and a JSON heartbeat whose id is the ping payload in hex."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.BOTH)
    lc = accept(scheduler)
    actions = fire(scheduler, lc)
    assert kinds(actions) == [SendPing, SendHeartbeat]
    ping, probe = actions
    assert isinstance(ping, SendPing)
    assert probe == SendHeartbeat(heartbeat_text(ping.payload.hex()))
    assert (lc.missed_pongs, lc.missed_echoes) == (1, 1)
    lc.receive_pong(7.0, ping.payload)
    assert (lc.missed_pongs, lc.missed_echoes) == (0, 1)
    lc.receive_message(7.0, probe.text)
    assert (lc.missed_pongs, lc.missed_echoes) == (0, 0)


def test_activity_is_liveness_resets_counters_on_messages(make_scheduler: MakeScheduler) -> None:
    """With activity_is_liveness, an inbound message resets both missed counters."""
    scheduler = make_scheduler(activity_is_liveness=True)
    lc = accept(scheduler)
    fire(scheduler, lc)
    assert lc.missed_pongs == 1
    lc.receive_message(7.0, "data")
    assert lc.missed_pongs == 0
    assert lc.take_actions() == [DeliverMessage("data")]


def test_messages_do_not_prove_life_by_default(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """Without activity_is_liveness, a message leaves the missed count alone."""
    fire(scheduler, active)
    active.receive_message(7.0, "data")
    assert active.missed_pongs == 1


def test_deeply_nested_message_never_raises(make_scheduler: MakeScheduler) -> None:
    """A 10 KB message of nested arrays mentioning "heartbeat" is delivered, not raised."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = accept(scheduler)
    data = "[" * 5000 + '"heartbeat"' + "]" * 5000
    lc.receive_message(1.0, data)
    assert lc.take_actions() == [DeliverMessage(data)]


# --------------------------------------------------------------------- activity


def test_note_activity_proves_life_only_when_configured(make_scheduler: MakeScheduler) -> None:
    """note_activity resets missed with activity_is_liveness, and does nothing without it."""
    plain = make_scheduler()
    lc = accept(plain)
    fire(plain, lc)
    lc.note_activity(7.0)
    assert lc.missed_pongs == 1

    lively = make_scheduler(activity_is_liveness=True)
    lc = accept(lively)
    fire(lively, lc)
    lc.note_activity(7.0)
    assert lc.missed_pongs == 0
    assert lc.take_actions() == []


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
def test_note_activity_while_closing_is_ignored(
    make_scheduler: MakeScheduler, state: State
) -> None:
    """Activity after teardown began neither raises nor emits anything."""
    scheduler = make_scheduler(activity_is_liveness=True)
    lc = in_state(scheduler, state)
    lc.note_activity(2.0)
    assert lc.take_actions() == []
    assert lc.state is state


# ------------------------------------------------------------------- client seq


@pytest.mark.parametrize("seq", [-1, True, False, 1.0, "3", None])
def test_report_client_seq_validates(active: ConnectionLifecycle, seq: object) -> None:
    """A client sequence number must be an int ≥ 0 (not a bool): ValueError otherwise."""
    if wrong_type_on_compiled(seq, lambda: active.report_client_seq(1.0, seq)):  # type: ignore[arg-type]
        assert active.client_seq is None
        return
    with pytest.raises(ValueError, match="a client sequence number is an int ≥ 0"):
        active.report_client_seq(1.0, seq)  # type: ignore[arg-type]
    assert active.client_seq is None


def test_report_client_seq_validates_before_the_state_check(scheduler: Scheduler) -> None:
    """A bad number is a ValueError even in OPEN (validation first)."""
    with pytest.raises(ValueError, match="got -5"):
        scheduler.open(0.0).report_client_seq(0.0, -5)


@pytest.mark.parametrize("state", [ACTIVE, DRAINING])
def test_report_client_seq_records(scheduler: Scheduler, state: State) -> None:
    """ACTIVE and DRAINING connections keep the latest reported number."""
    lc = in_state(scheduler, state)
    lc.report_client_seq(2.0, 0)
    assert lc.client_seq == 0
    lc.report_client_seq(2.0, 12)
    assert lc.client_seq == 12
    assert lc.take_actions() == []


def test_report_client_seq_after_close_is_ignored(scheduler: Scheduler) -> None:
    """A CLOSED connection ignores the report."""
    lc = in_state(scheduler, CLOSED)
    lc.report_client_seq(2.0, 4)
    assert lc.client_seq is None


# ------------------------------------------------------------------------- send


def test_send_numbers_messages(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """Each sent message takes the next sequence number, from 1."""
    assert active.send("a", buffered=0) == 1
    assert active.send(b"b", buffered=10) == 2
    assert active.send("c", buffered=0, critical=True) == 3
    assert active.take_actions() == [SendMessage("a", 1), SendMessage(b"b", 2), SendMessage("c", 3)]
    assert active.seq == 3
    assert scheduler.metrics.messages_sent == 3


def test_write_buffer_guard_skips_non_critical_sends(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """At or above the guard a non-critical send is skipped and counted; below it goes out."""
    assert active.send("below", buffered=GUARD - 1) == 1
    assert active.send("at", buffered=GUARD) is None
    assert active.send("above", buffered=GUARD * 3) is None
    assert active.take_actions() == [SendMessage("below", 1)]
    assert active.seq == 1
    assert scheduler.metrics.sends_skipped == 2
    assert scheduler.metrics.messages_sent == 1


def test_critical_sends_ignore_the_guard(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """A critical send goes out above the guard (up to the slow-consumer limit)."""
    assert active.send("urgent", buffered=GUARD * 3, critical=True) == 1
    assert active.take_actions() == [SendMessage("urgent", 1)]
    assert scheduler.metrics.sends_skipped == 0


def test_zero_guard_skips_every_non_critical_send(make_scheduler: MakeScheduler) -> None:
    """write_buffer_guard=0 means even an empty buffer skips non-critical sends."""
    scheduler = make_scheduler(write_buffer_guard=0)
    lc = accept(scheduler)
    assert lc.send("x", buffered=0) is None
    assert lc.send("y", buffered=0, critical=True) == 1


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
@pytest.mark.parametrize("critical", [False, True])
def test_send_while_closing_raises_connection_closed(
    scheduler: Scheduler, state: State, critical: bool
) -> None:
    """Sending after teardown began raises ConnectionClosed naming the state."""
    lc = in_state(scheduler, state)
    with pytest.raises(ConnectionClosed) as info:
        lc.send("x", buffered=0, critical=critical)
    assert str(info.value) == f"connection {lc.id} is {state.value}; cannot send"
    assert lc.take_actions() == []
    assert scheduler.metrics.messages_sent == 0
    assert not lc.accepts_sends


# ------------------------------------------------------------ subscribe / unsubscribe


def test_subscribe_and_unsubscribe(active: ConnectionLifecycle) -> None:
    """Channels are recorded, deduplicated, and forgotten; absent ones are ignored."""
    active.unsubscribe("never")  # before any subscription
    active.subscribe("news")
    active.subscribe("chat")
    active.subscribe("news")
    assert active.channels == frozenset({"news", "chat"})
    active.unsubscribe("news")
    active.unsubscribe("absent")
    assert active.channels == frozenset({"chat"})
    assert active.take_actions() == []


def test_channels_is_a_snapshot(active: ConnectionLifecycle) -> None:
    """The channels property is a frozenset copy, not the live set."""
    active.subscribe("a")
    view = active.channels
    active.subscribe("b")
    assert view == frozenset({"a"})


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
def test_subscribe_while_closing_raises(scheduler: Scheduler, state: State) -> None:
    """No new channel once teardown began: ConnectionClosed."""
    lc = in_state(scheduler, state)
    with pytest.raises(ConnectionClosed, match=f"is {state.value}; cannot subscribe"):
        lc.subscribe("news")
    assert lc.channels == frozenset()


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
def test_unsubscribe_while_closing_is_harmless(scheduler: Scheduler, state: State) -> None:
    """Unsubscribing after the release is a no-op, not an error."""
    lc = in_state(scheduler, state)
    lc.unsubscribe("news")
    assert lc.take_actions() == []


@pytest.mark.parametrize(
    "end",
    [
        lambda lc: lc.terminate(1.0, Cause.SLOW_CONSUMER),
        lambda lc: lc.transport_lost(1.0, "reset"),
    ],
    ids=["terminate", "transport lost"],
)
def test_unsubscribe_after_an_abrupt_end_is_harmless(
    active: ConnectionLifecycle, end: Callable[[ConnectionLifecycle], object]
) -> None:
    """Channels released at once by a terminate or a lost transport are gone:
    a late unsubscribe is a no-op and the connection lists no channel."""
    active.subscribe("news")
    end(active)
    active.take_actions()
    active.unsubscribe("news")
    assert active.take_actions() == []
    assert active.channels == frozenset()


# ------------------------------------------------------------------------ close


def test_close_runs_teardown_in_order(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """close: DRAINING, release, close frame, then the peer's answer closes TCP."""
    active.subscribe("news")
    active.subscribe("chat")
    active.close(2.0, 4000, "bye")
    assert active.take_actions() == [
        changed(active, ACTIVE, DRAINING, Cause.APPLICATION_CLOSE),
        ReleaseChannels(("chat", "news")),
    ]
    assert active.state is DRAINING
    assert active.cause is Cause.APPLICATION_CLOSE
    assert active.channels == frozenset()
    assert active.deadline == 2.0 + scheduler.config.close_timeout
    active.channels_released(2.1, buffered=0)
    assert active.take_actions() == [SendClose(4000, "bye")]
    assert scheduler.metrics.close_codes_sent == {4000: 1}
    active.receive_close(2.2, 4000, "bye")
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        CloseTransport(),
    ]
    assert state_of(active) is CLOSED
    assert deadline_of(active) is None
    assert active not in scheduler.connections
    assert scheduler.metrics.closed_by_cause == {Cause.APPLICATION_CLOSE: 1}
    assert not scheduler.metrics.terminations


def test_close_defaults_to_1000(active: ConnectionLifecycle) -> None:
    """close() defaults to 1000 and an empty reason; no channels gives an empty release."""
    active.close(1.0)
    assert active.take_actions()[1] == ReleaseChannels(())
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(1000, "")]


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (1005, "", "close code 1005 may not be sent"),
        (1006, "", "close code 1006 may not be sent"),
        (999, "", "close code 999 may not be sent"),
        (1000, "x" * 124, "close reason is 124 bytes"),
    ],
)
@pytest.mark.parametrize("state", [OPEN, ACTIVE, DRAINING, CLOSED])
def test_close_validates_first(
    scheduler: Scheduler, state: State, code: int, reason: str, message: str
) -> None:
    """An invalid code or reason raises InvalidCloseCode in every state, before any change."""
    lc = in_state(scheduler, state)
    with pytest.raises(InvalidCloseCode, match=message):
        lc.close(2.0, code, reason)
    assert lc.state is state
    assert lc.take_actions() == []


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
def test_close_is_idempotent(scheduler: Scheduler, state: State) -> None:
    """Closing a closing or closed connection does nothing (cause and deadline kept)."""
    lc = in_state(scheduler, state)
    cause, deadline = lc.cause, lc.deadline
    lc.close(3.0, 4001, "again")
    assert lc.take_actions() == []
    assert (lc.state, lc.cause, lc.deadline) == (state, cause, deadline)


def test_close_after_close_frame_sent_does_nothing(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A second close while waiting for the peer's answer sends no second frame."""
    active.close(1.0, 1000)
    active.channels_released(1.0, buffered=0)
    active.take_actions()
    active.close(1.5, 4000)
    assert active.take_actions() == []
    assert scheduler.metrics.close_codes_sent == {1000: 1}


# ---------------------------------------------------------------- receive_close


@pytest.mark.parametrize(
    ("code", "echo"),
    [
        (1000, 1000),
        (1001, 1001),
        (4000, 4000),
        (1011, 1011),
        (None, 1000),
        (1005, 1000),
        (1004, 1000),
    ],
)
def test_peer_close_from_active_is_echoed(
    active: ConnectionLifecycle, scheduler: Scheduler, code: int | None, echo: int
) -> None:
    """The peer's code is echoed after the release (None or unsendable → 1000), then TCP closes."""
    active.subscribe("news")
    active.receive_close(1.0, code, "peer reason")
    assert active.take_actions() == [
        changed(active, ACTIVE, DRAINING, Cause.PEER_CLOSE),
        ReleaseChannels(("news",)),
    ]
    active.channels_released(1.1, buffered=0)
    assert active.take_actions() == [
        SendClose(echo, ""),
        changed(active, DRAINING, CLOSED, Cause.PEER_CLOSE),
        CloseTransport(),
    ]
    assert active.cause is Cause.PEER_CLOSE
    assert scheduler.metrics.close_codes_sent == {echo: 1}
    assert scheduler.metrics.closed_by_cause == {Cause.PEER_CLOSE: 1}


def test_peer_close_sends_no_drift_notice(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A peer that closes first gets its echo only, even if its sequence number lags."""
    active.send("a", buffered=0)
    active.report_client_seq(0.5, 0)
    active.take_actions()
    active.receive_close(1.0, 1000)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert kinds(active.take_actions()) == [SendClose, StateChanged, CloseTransport]
    assert scheduler.metrics.state_drift_notices == 0


def test_peer_close_while_draining_before_our_frame(active: ConnectionLifecycle) -> None:
    """If the peer closes while we still await the release, our frame completes the handshake."""
    active.close(1.0, 4000, "bye")
    active.take_actions()
    active.receive_close(1.2, 1000, "")
    assert active.take_actions() == []
    assert active.state is DRAINING
    active.channels_released(1.3, buffered=0)
    assert active.take_actions() == [
        SendClose(4000, "bye"),
        changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        CloseTransport(),
    ]


def test_peer_close_while_draining_after_our_frame(active: ConnectionLifecycle) -> None:
    """The peer's answer to our close frame completes the handshake at once."""
    active.close(1.0)
    active.channels_released(1.0, buffered=0)
    active.take_actions()
    active.receive_close(1.5, None)
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        CloseTransport(),
    ]


def test_peer_close_after_closed_is_ignored(scheduler: Scheduler) -> None:
    """A close frame arriving after CLOSED emits nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.receive_close(2.0, 1000)
    assert lc.take_actions() == []
    assert lc.cause is Cause.TRANSPORT_LOST


# ------------------------------------------------------------------------- fail


def test_fail_from_active_closes_without_drift_notice(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """Peer misbehaviour closes with its code and cause; a broken peer gets no STATE_DRIFT."""
    active.send("a", buffered=0)
    active.report_client_seq(0.5, 0)
    active.subscribe("news")
    active.take_actions()
    active.fail(1.0, Cause.MESSAGE_TOO_BIG, 1009, "message too big")
    assert active.take_actions() == [
        changed(active, ACTIVE, DRAINING, Cause.MESSAGE_TOO_BIG),
        ReleaseChannels(("news",)),
    ]
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(1009, "message too big")]
    assert active.cause is Cause.MESSAGE_TOO_BIG
    assert scheduler.metrics.state_drift_notices == 0


@settings(max_examples=examples(60))
@given(code=sendable_close_codes, sent=st.integers(0, 3), reported=st.integers(0, 3))
def test_a_failed_peer_never_gets_a_drift_notice(code: int, sent: int, reported: int) -> None:
    """Whatever close code a misbehaving peer is failed with, and however far
    its sequence number is off, its close frame comes with no STATE_DRIFT notice."""
    scheduler = Scheduler(Config(heartbeat_interval=10.0, allow_no_origin=True), seeded_entropy(1))
    lc = accept(scheduler)
    for _ in range(sent):
        lc.send("x", buffered=0)
    lc.report_client_seq(0.5, reported)
    lc.take_actions()
    lc.fail(1.0, Cause.POLICY_VIOLATION, code, "bad peer")
    lc.take_actions()
    lc.channels_released(1.0, buffered=0)
    assert lc.take_actions() == [SendClose(code, "bad peer")]
    assert scheduler.metrics.state_drift_notices == 0


def test_fail_without_a_reason_closes_with_an_empty_one(active: ConnectionLifecycle) -> None:
    """fail() with no reason sends the close code alone (an empty reason)."""
    active.fail(1.0, Cause.PROTOCOL_ERROR, 1002)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(1002, "")]


def test_fail_validates_the_code_first(active: ConnectionLifecycle) -> None:
    """fail() with an unsendable code raises InvalidCloseCode and changes nothing."""
    with pytest.raises(InvalidCloseCode):
        active.fail(1.0, Cause.PROTOCOL_ERROR, 1006)
    assert active.state is ACTIVE
    assert active.take_actions() == []


def test_fail_while_draining_terminates(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """Misbehaving while closing is terminated at once; the first cause is kept."""
    active.close(1.0)
    active.take_actions()
    active.fail(1.5, Cause.PROTOCOL_ERROR, 1002, "bad frame")
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        Terminate(Cause.PROTOCOL_ERROR),
    ]
    assert active.cause is Cause.APPLICATION_CLOSE
    assert scheduler.metrics.terminations == {Cause.PROTOCOL_ERROR: 1}
    assert scheduler.metrics.closed_by_cause == {Cause.APPLICATION_CLOSE: 1}


def test_fail_after_closed_is_ignored(scheduler: Scheduler) -> None:
    """A protocol error reported after CLOSED emits nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.fail(2.0, Cause.PROTOCOL_ERROR, 1002)
    assert lc.take_actions() == []


# --------------------------------------------------------------- handler_failed


def test_close_codes_sent_counts_every_close_frame(scheduler: Scheduler) -> None:
    """close_codes_sent counts each close frame under its code, across connections."""
    for code in (1000, 1000, 4000):
        lc = accept(scheduler)
        lc.close(1.0, code)
        lc.channels_released(1.0, buffered=0)
    lc = accept(scheduler)
    lc.receive_close(1.0, 4000)
    lc.channels_released(1.0, buffered=0)
    assert scheduler.metrics.close_codes_sent == {1000: 2, 4000: 2}


def test_handler_failed_closes_with_1011(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """A handler exception closes with 1011 'internal error', cause handler_error."""
    active.handler_failed(1.0, "ZeroDivisionError")
    assert active.take_actions() == [
        changed(active, ACTIVE, DRAINING, Cause.HANDLER_ERROR),
        ReleaseChannels(()),
    ]
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(1011, "internal error")]
    assert scheduler.metrics.close_codes_sent == {1011: 1}


def test_handler_failed_sends_drift_notice(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """The server's own failure still tells a lagging client about the drift."""
    active.send("a", buffered=0)
    active.send("b", buffered=0)
    active.report_client_seq(0.5, 1)
    active.take_actions()
    active.handler_failed(1.0, "boom")
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendStateDrift(2, 1), SendClose(1011, "internal error")]


@pytest.mark.parametrize("state", [DRAINING, CLOSED])
def test_handler_failed_while_closing_changes_nothing(scheduler: Scheduler, state: State) -> None:
    """A handler failing during teardown emits nothing and keeps the first cause."""
    lc = in_state(scheduler, state)
    cause = lc.cause
    lc.handler_failed(2.0, "boom")
    assert lc.take_actions() == []
    assert (lc.state, lc.cause) == (state, cause)


# ------------------------------------------------------------------------ drain


def test_drain_refuses_a_pending_upgrade_with_503(scheduler: Scheduler) -> None:
    """Draining an OPEN connection refuses it with 503, cause server_draining."""
    lc = scheduler.open(0.0)
    lc.drain(1.0)
    assert lc.take_actions() == [
        changed(lc, OPEN, CLOSED, Cause.SERVER_DRAINING),
        RejectUpgrade(503, "server is shutting down"),
        CloseTransport(),
    ]
    assert scheduler.metrics.handshakes_rejected == {503: 1}


def test_drain_closes_an_active_connection_with_1001(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """Draining an ACTIVE connection closes it with 1001 'server shutting down'."""
    active.drain(1.0)
    assert active.take_actions() == [
        changed(active, ACTIVE, DRAINING, Cause.SERVER_DRAINING),
        ReleaseChannels(()),
    ]
    assert active.deadline == 1.0 + scheduler.config.close_timeout
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(CloseCode.GOING_AWAY, "server shutting down")]


def test_a_drain_tells_a_lagging_client_about_the_drift(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A drain is the server's own close: a client behind on its sequence gets
    the STATE_DRIFT notice before the 1001, so it resyncs on reconnecting."""
    active.send("a", buffered=0)
    active.send("b", buffered=0)
    active.report_client_seq(0.5, 1)
    active.take_actions()
    active.drain(1.0)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [
        SendStateDrift(2, 1),
        SendClose(CloseCode.GOING_AWAY, "server shutting down"),
    ]
    assert scheduler.metrics.state_drift_notices == 1


def test_drain_deadline_caps_an_existing_close_deadline(make_scheduler: MakeScheduler) -> None:
    """A connection already closing gets its close deadline moved up to the drain deadline."""
    scheduler = make_scheduler(close_timeout=10.0, drain_timeout=3.0)
    lc = accept(scheduler)
    lc.close(1.0)
    lc.take_actions()
    assert lc.deadline == 11.0
    scheduler.begin_drain(5.0)
    assert lc.deadline == 8.0
    assert lc.take_actions() == []
    assert scheduler.tick(8.0) == [lc]
    assert lc.take_actions() == [
        changed(lc, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        Terminate(Cause.DRAIN_DEADLINE),
    ]
    assert scheduler.metrics.terminations == {Cause.DRAIN_DEADLINE: 1}


def test_drain_deadline_later_than_close_deadline_changes_nothing(
    make_scheduler: MakeScheduler,
) -> None:
    """A drain deadline after the close deadline leaves the close deadline alone."""
    scheduler = make_scheduler(close_timeout=10.0, drain_timeout=30.0)
    lc = accept(scheduler)
    lc.close(1.0)
    scheduler.begin_drain(5.0)
    assert lc.deadline == 11.0


def test_close_timeout_during_a_drain_is_not_the_drain_deadline(
    make_scheduler: MakeScheduler,
) -> None:
    """A close that times out long before the drain deadline is a close_timeout."""
    scheduler = make_scheduler(close_timeout=5.0, drain_timeout=30.0)
    lc = accept(scheduler)
    scheduler.begin_drain(1.0)  # close deadline 6 s, drain deadline 31 s
    lc.channels_released(1.0, buffered=0)
    lc.take_actions()
    assert scheduler.tick(6.0) == [lc]
    assert lc.take_actions()[-1] == Terminate(Cause.CLOSE_TIMEOUT)


def test_drain_on_a_closing_connection_without_server_drain(active: ConnectionLifecycle) -> None:
    """lifecycle.drain() on a DRAINING connection with no server drain keeps its deadline."""
    active.close(1.0)
    active.take_actions()
    deadline = active.deadline
    active.drain(2.0)
    assert active.deadline == deadline
    assert active.take_actions() == []
    assert active.cause is Cause.APPLICATION_CLOSE


def test_drain_after_closed_is_ignored(scheduler: Scheduler) -> None:
    """Draining a CLOSED connection emits nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.drain(2.0)
    assert lc.take_actions() == []


def test_close_deadline_is_capped_by_an_earlier_drain_deadline(
    make_scheduler: MakeScheduler,
) -> None:
    """During a drain, a new close gets min(now + close_timeout, drain deadline)."""
    scheduler = make_scheduler(close_timeout=10.0, drain_timeout=4.0)
    lc = accept(scheduler)
    scheduler.begin_drain(1.0)
    assert lc.deadline == 5.0
    late = make_scheduler(close_timeout=2.0, drain_timeout=4.0)
    lc = accept(late)
    late.begin_drain(1.0)
    assert lc.deadline == 3.0


# ------------------------------------------------------------ channels_released


def _drifted(lc: ConnectionLifecycle) -> None:
    """Send two messages; the client reports having processed only the first."""
    lc.send("a", buffered=0)
    lc.send("b", buffered=0)
    lc.report_client_seq(0.5, 1)
    lc.take_actions()


def test_drift_notice_precedes_the_close(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """A client behind and room in the buffer: STATE_DRIFT goes out before the close frame."""
    _drifted(active)
    active.close(1.0)
    active.take_actions()
    active.channels_released(1.0, buffered=GUARD - 1)
    notice, close = active.take_actions()
    assert notice == SendStateDrift(server_seq=2, client_seq=1)
    assert notice.text == '{"type":"STATE_DRIFT","serverSeq":2,"clientSeq":1}'
    assert close == SendClose(1000, "")
    assert scheduler.metrics.state_drift_notices == 1


def test_drift_notice_skipped_when_buffer_at_guard(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A full write buffer gets no notice, only the close frame."""
    _drifted(active)
    active.close(1.0)
    active.take_actions()
    active.channels_released(1.0, buffered=GUARD)
    assert active.take_actions() == [SendClose(1000, "")]
    assert scheduler.metrics.state_drift_notices == 0


@pytest.mark.parametrize("reported", [None, 0])
def test_no_drift_notice_when_in_step_or_unknown(
    active: ConnectionLifecycle, scheduler: Scheduler, reported: int | None
) -> None:
    """No notice when the client reported the server's seq, or never reported."""
    if reported is not None:
        active.report_client_seq(0.5, reported)
    active.close(1.0)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(1000, "")]
    assert scheduler.metrics.state_drift_notices == 0


def test_drift_notice_when_client_is_ahead(active: ConnectionLifecycle) -> None:
    """Any mismatch is drift, also a client claiming more than was sent."""
    active.report_client_seq(0.5, 5)
    active.close(1.0)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions()[0] == SendStateDrift(0, 5)


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1009, 1010])
def test_app_close_with_a_policy_code_sends_no_drift_notice(
    active: ConnectionLifecycle, code: int
) -> None:
    """Closes that fail the peer (1002/1003/1007-1010) carry no notice, even from the app."""
    _drifted(active)
    active.close(1.0, code)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(code, "")]


def test_channels_released_twice_does_nothing(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A second acknowledgement sends no second close frame."""
    active.close(1.0)
    active.channels_released(1.0, buffered=0)
    active.take_actions()
    active.channels_released(1.1, buffered=0)
    assert active.take_actions() == []
    assert scheduler.metrics.close_codes_sent == {1000: 1}


def test_channels_released_in_active_raises(active: ConnectionLifecycle) -> None:
    """Acknowledging a release that was never asked for is misuse."""
    with pytest.raises(InvalidTransition) as info:
        active.channels_released(1.0, buffered=0)
    assert (info.value.state, info.value.input) == (ACTIVE, Input.CHANNELS_RELEASED)


def test_channels_released_after_closed_is_ignored(scheduler: Scheduler) -> None:
    """An acknowledgement after CLOSED (e.g. after a terminate) emits nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.channels_released(2.0, buffered=0)
    assert lc.take_actions() == []


# ------------------------------------------------------- channel_release_failed


def test_channel_release_failure_closes_with_1011(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A failed release alerts TEARDOWN_FAILED and closes with 1011; cause teardown_error."""
    _drifted(active)
    active.subscribe("news")
    active.close(1.0, 4000, "bye")
    active.take_actions()
    active.channel_release_failed(1.0, "broker down")
    assert active.take_actions() == [
        Alert(AlertKind.TEARDOWN_FAILED, active.id, 0.0, "broker down"),
        SendClose(1011, "server error during teardown"),
    ]
    assert active.cause is Cause.TEARDOWN_ERROR
    assert scheduler.metrics.state_drift_notices == 0
    assert scheduler.metrics.close_codes_sent == {1011: 1}
    active.receive_close(1.5, 1011)
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.TEARDOWN_ERROR),
        CloseTransport(),
    ]
    assert scheduler.metrics.closed_by_cause == {Cause.TEARDOWN_ERROR: 1}


def test_channel_release_failure_after_peer_close_completes(active: ConnectionLifecycle) -> None:
    """When the peer closed first, the 1011 frame completes the handshake."""
    active.receive_close(1.0, 1000)
    active.take_actions()
    active.channel_release_failed(1.0, "down")
    assert kinds(active.take_actions()) == [Alert, SendClose, StateChanged, CloseTransport]
    assert active.state is CLOSED


def test_channel_release_failure_when_not_awaiting_does_nothing(
    active: ConnectionLifecycle,
) -> None:
    """After the release was acknowledged, a failure report changes nothing."""
    active.close(1.0)
    active.channels_released(1.0, buffered=0)
    active.take_actions()
    active.channel_release_failed(1.1, "late")
    assert active.take_actions() == []
    assert active.cause is Cause.APPLICATION_CLOSE


def test_channel_release_failure_after_closed_is_ignored(scheduler: Scheduler) -> None:
    """A failure report after CLOSED emits nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.channel_release_failed(2.0, "late")
    assert lc.take_actions() == []
    assert lc.cause is Cause.TRANSPORT_LOST


def test_channel_release_failure_in_active_raises(active: ConnectionLifecycle) -> None:
    """Reporting a failed release that was never asked for is misuse."""
    with pytest.raises(InvalidTransition) as info:
        active.channel_release_failed(1.0, "x")
    assert info.value.input is Input.RELEASE_FAILED


# -------------------------------------------------------------------- terminate


def test_terminate_open(scheduler: Scheduler) -> None:
    """Terminating before the upgrade drops the connection with the given cause."""
    lc = scheduler.open(0.0)
    lc.terminate(1.0, Cause.CONNECTION_LIMIT)
    assert lc.take_actions() == [
        changed(lc, OPEN, CLOSED, Cause.CONNECTION_LIMIT),
        Terminate(Cause.CONNECTION_LIMIT),
    ]
    assert scheduler.metrics.terminations == {Cause.CONNECTION_LIMIT: 1}
    assert scheduler.metrics.closed_by_cause == {Cause.CONNECTION_LIMIT: 1}


def test_terminate_active_releases_channels_first(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """Terminate releases the channels (sorted) before the RST."""
    active.subscribe("b")
    active.subscribe("a")
    active.terminate(1.0, Cause.SLOW_CONSUMER)
    assert active.take_actions() == [
        changed(active, ACTIVE, CLOSED, Cause.SLOW_CONSUMER),
        ReleaseChannels(("a", "b")),
        Terminate(Cause.SLOW_CONSUMER),
    ]
    assert active.channels == frozenset()


def test_terminate_active_without_channels_emits_no_release(active: ConnectionLifecycle) -> None:
    """With nothing subscribed there is nothing to release before the RST."""
    active.terminate(1.0, Cause.SLOW_CONSUMER)
    assert kinds(active.take_actions()) == [StateChanged, Terminate]


def test_terminate_draining_keeps_the_first_cause(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A terminate during teardown records its own cause in terminations only."""
    active.close(1.0)
    active.take_actions()
    active.terminate(1.5, Cause.SLOW_CONSUMER)
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        Terminate(Cause.SLOW_CONSUMER),
    ]
    assert active.cause is Cause.APPLICATION_CLOSE


def test_terminate_closed_does_nothing(scheduler: Scheduler) -> None:
    """Terminating a CLOSED connection emits nothing and counts nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.terminate(2.0, Cause.SLOW_CONSUMER)
    assert lc.take_actions() == []
    assert not scheduler.metrics.terminations


# --------------------------------------------------------------- transport_lost


def test_transport_lost_open(scheduler: Scheduler) -> None:
    """Losing TCP before the upgrade closes the connection; no Terminate (the socket is gone)."""
    lc = scheduler.open(0.0)
    lc.transport_lost(1.0, "reset")
    assert lc.take_actions() == [changed(lc, OPEN, CLOSED, Cause.TRANSPORT_LOST)]
    assert lc.cause is Cause.TRANSPORT_LOST
    assert not scheduler.metrics.terminations
    assert scheduler.metrics.closed_by_cause == {Cause.TRANSPORT_LOST: 1}


def test_transport_lost_active_releases_channels(active: ConnectionLifecycle) -> None:
    """Losing TCP releases the channels and emits nothing else."""
    active.subscribe("news")
    active.transport_lost(1.0)
    assert active.take_actions() == [
        changed(active, ACTIVE, CLOSED, Cause.TRANSPORT_LOST),
        ReleaseChannels(("news",)),
    ]
    assert active.deadline is None


def test_transport_lost_draining_keeps_the_first_cause(active: ConnectionLifecycle) -> None:
    """Losing TCP while closing keeps the cause that began the teardown."""
    active.close(1.0)
    active.take_actions()
    active.transport_lost(1.5, None)
    assert active.take_actions() == [changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE)]


def test_transport_lost_closed_does_nothing(scheduler: Scheduler) -> None:
    """A second loss report emits nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.transport_lost(2.0)
    assert lc.take_actions() == []
    assert scheduler.metrics.closed_by_cause == {Cause.TRANSPORT_LOST: 1}


# ------------------------------------------------------------------- timers


def test_handshake_timeout(scheduler: Scheduler) -> None:
    """An upgrade not done by the handshake deadline is terminated (slowloris guard)."""
    lc = scheduler.open(0.0)
    assert scheduler.tick(10.0) == [lc]
    assert lc.take_actions() == [
        changed(lc, OPEN, CLOSED, Cause.HANDSHAKE_TIMEOUT),
        Terminate(Cause.HANDSHAKE_TIMEOUT),
    ]
    assert scheduler.metrics.terminations == {Cause.HANDSHAKE_TIMEOUT: 1}


def test_handle_timer_is_on_time_unless_told_stalled(scheduler: Scheduler) -> None:
    """handle_timer(now) with no ``stalled`` is an on-time tick: a handshake
    past its deadline is terminated, not given more time."""
    lc = scheduler.open(0.0)
    lc.handle_timer(10.0)
    assert lc.take_actions()[-1] == Terminate(Cause.HANDSHAKE_TIMEOUT)


@pytest.mark.parametrize("state", [OPEN, DRAINING])
def test_stalled_timer_terminates_nobody_before_or_after_active(
    scheduler: Scheduler, state: State
) -> None:
    """A late tick on an OPEN or DRAINING connection waits one stall threshold more."""
    lc = in_state(scheduler, state)
    lc.handle_timer(20.0, stalled=True)
    assert lc.state is state
    assert lc.take_actions() == []
    assert lc.deadline == 20.0 + scheduler.config.effective_stall_threshold


def test_close_timeout_terminates(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """A peer that never answers our close frame is terminated at the close deadline."""
    active.close(1.0)
    active.channels_released(1.0, buffered=0)
    active.take_actions()
    assert scheduler.tick(11.0) == [active]
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.APPLICATION_CLOSE),
        Terminate(Cause.CLOSE_TIMEOUT),
    ]
    assert scheduler.metrics.terminations == {Cause.CLOSE_TIMEOUT: 1}


def test_drain_deadline_terminates_stragglers(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """At the drain deadline an unfinished close is terminated with cause drain_deadline."""
    scheduler.begin_drain(1.0)
    active.take_actions()
    assert scheduler.drain_deadline == 11.0
    assert scheduler.tick(11.0) == [active]
    assert active.take_actions() == [
        changed(active, DRAINING, CLOSED, Cause.SERVER_DRAINING),
        Terminate(Cause.DRAIN_DEADLINE),
    ]
    assert scheduler.drained


def test_timer_on_closed_connection_does_nothing(scheduler: Scheduler) -> None:
    """handle_timer on a CLOSED connection emits nothing and arms nothing."""
    lc = in_state(scheduler, CLOSED)
    lc.handle_timer(50.0)
    lc.handle_timer(50.0, stalled=True)
    assert lc.take_actions() == []
    assert lc.deadline is None


def test_heartbeat_probe_schedules_the_next_slot(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """Each slot counts a miss, sends a ping, and arms slot + interval."""
    slot = active.deadline
    assert slot is not None
    first = fire(scheduler, active)
    assert kinds(first) == [SendPing]
    assert active.missed_pongs == 1
    assert active.deadline == slot + 10.0
    second = fire(scheduler, active)
    assert kinds(second) == [SendPing]
    assert first != second  # a fresh payload per probe
    assert active.missed_pongs == 2
    assert active.deadline == slot + 20.0
    assert scheduler.metrics.pings_sent == 2
    assert scheduler.metrics.missed_pongs == 1  # the first ping went unanswered


def test_answered_pings_never_time_out(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """A peer that answers every ping within the interval stays ACTIVE."""
    for _ in range(10):
        [ping] = fire(scheduler, active)
        assert isinstance(ping, SendPing)
        assert active.deadline is not None
        active.receive_pong(active.deadline - 9.0, ping.payload)
    assert active.state is ACTIVE
    assert scheduler.metrics.missed_pongs == 0


def test_heartbeat_timeout_terminates_a_silent_peer(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """After max_missed unanswered pings and one more interval, the peer is terminated."""
    active.subscribe("news")
    slot = active.deadline
    assert slot is not None
    fire(scheduler, active)
    fire(scheduler, active)
    actions = fire(scheduler, active)
    assert actions == [
        changed(active, ACTIVE, CLOSED, Cause.HEARTBEAT_TIMEOUT),
        ReleaseChannels(("news",)),
        Terminate(Cause.HEARTBEAT_TIMEOUT),
    ]
    assert scheduler.metrics.missed_pongs == 2
    assert scheduler.metrics.terminations == {Cause.HEARTBEAT_TIMEOUT: 1}
    assert scheduler.metrics.closed_by_cause == {Cause.HEARTBEAT_TIMEOUT: 1}
    assert slot + 20.0 <= scheduler.config.detection_bound


def test_heartbeat_defers_when_the_last_probe_was_late(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """A late probe gets one full interval (DEFER) before TIMEOUT, exactly on time."""
    slot = active.deadline
    assert slot is not None
    fire(scheduler, active)
    fire(scheduler, active, late=2.0)  # below the 2.5 s stall threshold: a real, late probe
    assert active.missed_pongs == 2
    assert active.deadline == slot + 20.0
    assert fire(scheduler, active) == []  # DEFER
    assert active.state is ACTIVE
    assert active.deadline == (slot + 10.0 + 2.0) + 10.0
    actions = fire(scheduler, active)
    assert actions[-1] == Terminate(Cause.HEARTBEAT_TIMEOUT)


def test_pong_during_deferral_saves_the_peer(
    active: ConnectionLifecycle, scheduler: Scheduler
) -> None:
    """An answer arriving within one interval of a late probe resets the count."""
    fire(scheduler, active)
    [ping] = fire(scheduler, active, late=2.0)
    assert isinstance(ping, SendPing)
    assert fire(scheduler, active) == []
    assert active.deadline is not None
    active.receive_pong(active.deadline - 0.1, ping.payload)
    assert kinds(fire(scheduler, active)) == [SendPing]
    assert active.state is ACTIVE
    assert active.missed_pongs == 1


def test_stalled_tick_blames_no_peer(active: ConnectionLifecycle, scheduler: Scheduler) -> None:
    """A stalled tick sends nothing, counts no miss and skips to the next slot."""
    slot = active.deadline
    assert slot is not None
    fire(scheduler, active)
    fire(scheduler, active)
    assert active.missed_pongs == 2
    actions = fire(scheduler, active, late=25.0)  # stalled, with the count at the threshold
    assert actions == []
    assert active.state is ACTIVE
    assert active.missed_pongs == 2
    assert active.deadline == slot + 20.0 + 30.0
    alerts = scheduler.take_alerts()
    assert [a.kind for a in alerts] == [AlertKind.LOOP_STALL]


def test_stalled_tick_exactly_on_a_later_slot(active: ConnectionLifecycle) -> None:
    """A stalled tick landing exactly on a later slot arms the one after it."""
    slot = active.deadline
    assert slot is not None
    active.handle_timer(slot + 20.0, stalled=True)
    assert active.deadline == slot + 30.0


@pytest.mark.parametrize(
    ("mode", "pongs", "echoes"),
    [
        (HeartbeatMode.PROTOCOL, 1, 0),
        (HeartbeatMode.APPLICATION, 0, 1),
        (HeartbeatMode.BOTH, 1, 1),
    ],
)
def test_quiet_slot_after_activity(
    make_scheduler: MakeScheduler, mode: HeartbeatMode, pongs: int, echoes: int
) -> None:
    """After activity a slot sends no probe but counts a miss on each counter in use."""
    scheduler = make_scheduler(activity_is_liveness=True, max_missed_pongs=3, heartbeat_mode=mode)
    lc = accept(scheduler)
    slot = lc.deadline
    assert slot is not None
    lc.note_activity(1.0)
    assert fire(scheduler, lc) == []
    assert (lc.missed_pongs, lc.missed_echoes) == (pongs, echoes)
    assert lc.deadline == slot + 10.0
    assert scheduler.metrics.pings_sent == 0
    assert scheduler.metrics.app_heartbeats_sent == 0
    # The activity was used up: the next slot probes.
    assert len(fire(scheduler, lc)) == (2 if mode is HeartbeatMode.BOTH else 1)


def test_quiet_never_reaches_the_threshold(make_scheduler: MakeScheduler) -> None:
    """Busy but silent-to-pings peers are still probed before any timeout."""
    scheduler = make_scheduler(activity_is_liveness=True, max_missed_pongs=2)
    lc = accept(scheduler)
    lc.note_activity(1.0)
    assert fire(scheduler, lc) == []  # QUIET: missed 1
    assert lc.missed_pongs == 1
    lc.note_activity(11.0)  # resets to 0
    assert fire(scheduler, lc) == []
    assert kinds(fire(scheduler, lc)) == [SendPing]  # no activity: a real probe, missed 2
    assert lc.missed_pongs == 2
    assert fire(scheduler, lc)[-1] == Terminate(Cause.HEARTBEAT_TIMEOUT)


def test_application_heartbeat_timeout(make_scheduler: MakeScheduler) -> None:
    """APPLICATION mode: unanswered JSON heartbeats end in app_heartbeat_timeout."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = accept(scheduler)
    fire(scheduler, lc)
    fire(scheduler, lc)
    assert fire(scheduler, lc) == [
        changed(lc, ACTIVE, CLOSED, Cause.APP_HEARTBEAT_TIMEOUT),
        Terminate(Cause.APP_HEARTBEAT_TIMEOUT),
    ]
    assert scheduler.metrics.missed_app_heartbeats == 2
    assert scheduler.metrics.missed_pongs == 0


def test_both_mode_timeout_blames_the_silent_probe(make_scheduler: MakeScheduler) -> None:
    """BOTH mode: pongs answered but echoes not → app_heartbeat_timeout."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.BOTH)
    lc = accept(scheduler)
    for _ in range(2):
        due = deadline_of(lc)
        assert due is not None
        ping, _probe = fire(scheduler, lc)
        assert isinstance(ping, SendPing)
        lc.receive_pong(due + 0.1, ping.payload)
    assert fire(scheduler, lc)[-1] == Terminate(Cause.APP_HEARTBEAT_TIMEOUT)


def test_both_mode_timeout_prefers_the_protocol_cause(make_scheduler: MakeScheduler) -> None:
    """BOTH mode with neither probe answered: heartbeat_timeout."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.BOTH)
    lc = accept(scheduler)
    fire(scheduler, lc)
    fire(scheduler, lc)
    assert fire(scheduler, lc)[-1] == Terminate(Cause.HEARTBEAT_TIMEOUT)
    assert scheduler.metrics.missed_pongs == 2
    assert scheduler.metrics.missed_app_heartbeats == 1


@pytest.mark.parametrize("mode", [HeartbeatMode.PROTOCOL, HeartbeatMode.APPLICATION])
def test_every_unanswered_probe_is_counted_missed(
    make_scheduler: MakeScheduler, mode: HeartbeatMode
) -> None:
    """missed_pongs (pings) or missed_app_heartbeats (JSON heartbeats) counts
    each unanswered probe once: a silent peer timed out after M probes adds M."""
    scheduler = make_scheduler(heartbeat_mode=mode, max_missed_pongs=4)
    lc = accept(scheduler)
    for _ in range(4):
        assert len(fire(scheduler, lc)) == 1
    assert fire(scheduler, lc)[-1] == Terminate(
        Cause.HEARTBEAT_TIMEOUT if mode is HeartbeatMode.PROTOCOL else Cause.APP_HEARTBEAT_TIMEOUT
    )
    metrics = scheduler.metrics
    assert (metrics.missed_pongs, metrics.missed_app_heartbeats) == (
        (4, 0) if mode is HeartbeatMode.PROTOCOL else (0, 4)
    )


def test_max_missed_one_times_out_after_two_intervals(make_scheduler: MakeScheduler) -> None:
    """max_missed_pongs=1: one unanswered ping, then terminate one interval later."""
    scheduler = make_scheduler(max_missed_pongs=1)
    lc = accept(scheduler)
    assert kinds(fire(scheduler, lc)) == [SendPing]
    assert fire(scheduler, lc)[-1] == Terminate(Cause.HEARTBEAT_TIMEOUT)


# ----------------------------------------------------- handle(event) dispatch

Prep = Callable[[Scheduler], ConnectionLifecycle]


def _open(s: Scheduler) -> ConnectionLifecycle:
    return s.open(0.0)


def _active(s: Scheduler) -> ConnectionLifecycle:
    return accept(s)


def _probed(s: Scheduler) -> ConnectionLifecycle:
    lc = accept(s)
    fire(s, lc)
    return lc


def _subscribed(s: Scheduler) -> ConnectionLifecycle:
    lc = accept(s)
    lc.subscribe("news")
    lc.subscribe("chat")
    return lc


def _paused(s: Scheduler) -> ConnectionLifecycle:
    lc = accept(s)
    lc.pause_reading(0.5)
    return lc


def _draining(s: Scheduler) -> ConnectionLifecycle:
    lc = accept(s)
    lc.send("a", buffered=0)
    lc.report_client_seq(0.5, 0)
    lc.close(1.0)
    lc.take_actions()
    return lc


Direct = Callable[[ConnectionLifecycle], object]

DISPATCH: list[tuple[Prep, ev.Event, Direct]] = [
    (
        _open,
        ev.UpgradeRequested(0.5, None, "localhost"),
        lambda lc: lc.request_upgrade(0.5, origin=None, host="localhost"),
    ),
    (
        _open,
        ev.UpgradeRequested(0.5, "https://evil.example", "localhost"),
        lambda lc: lc.request_upgrade(0.5, origin="https://evil.example", host="localhost"),
    ),
    (
        _open,
        ev.UpgradeRequested(0.5, "https://app.example", "app.example"),
        lambda lc: lc.request_upgrade(0.5, origin="https://app.example", host="app.example"),
    ),
    (
        _open,
        ev.UpgradeInvalid(0.5, 431, "too big"),
        lambda lc: lc.reject_upgrade(0.5, 431, "too big"),
    ),
    (_probed, ev.PongReceived(7.0, b"x"), lambda lc: lc.receive_pong(7.0, b"x")),
    (_active, ev.MessageReceived(1.0, "hi"), lambda lc: lc.receive_message(1.0, "hi")),
    (_probed, ev.ActivitySeen(7.0), lambda lc: lc.note_activity(7.0)),
    (_active, ev.ClientSeqReported(1.0, 7), lambda lc: lc.report_client_seq(1.0, 7)),
    (
        _active,
        ev.SendRequested(1.0, "x", False, GUARD),
        lambda lc: lc.send("x", buffered=GUARD, critical=False),
    ),
    (
        _active,
        ev.SendRequested(1.0, "x", True, GUARD),
        lambda lc: lc.send("x", buffered=GUARD, critical=True),
    ),
    (_active, ev.Subscribe(1.0, "news"), lambda lc: lc.subscribe("news")),
    (_subscribed, ev.Unsubscribe(1.0, "news"), lambda lc: lc.unsubscribe("news")),
    (_active, ev.CloseRequested(1.0, 4000, "bye"), lambda lc: lc.close(1.0, 4000, "bye")),
    (_active, ev.PeerClosed(1.0, 1001, "away"), lambda lc: lc.receive_close(1.0, 1001, "away")),
    (
        _active,
        ev.PeerMisbehaved(1.0, Cause.MESSAGE_TOO_BIG, 1009, "big"),
        lambda lc: lc.fail(1.0, Cause.MESSAGE_TOO_BIG, 1009, "big"),
    ),
    (_active, ev.HandlerFailed(1.0, "boom"), lambda lc: lc.handler_failed(1.0, "boom")),
    (_active, ev.HandlerReturned(1.0), lambda lc: lc.handler_returned(1.0)),
    (_active, ev.ReadingPaused(1.0), lambda lc: lc.pause_reading(1.0)),
    (_paused, ev.ReadingResumed(1.0), lambda lc: lc.resume_reading(1.0)),
    (_draining, ev.ChannelsReleased(2.0, 0), lambda lc: lc.channels_released(2.0, buffered=0)),
    (
        _draining,
        ev.ChannelsReleased(2.0, GUARD),
        lambda lc: lc.channels_released(2.0, buffered=GUARD),
    ),
    (
        _draining,
        ev.ChannelReleaseFailed(2.0, "down"),
        lambda lc: lc.channel_release_failed(2.0, "down"),
    ),
    (_active, ev.DrainRequested(1.0), lambda lc: lc.drain(1.0)),
    (
        _subscribed,
        ev.TerminateRequested(1.0, Cause.SLOW_CONSUMER),
        lambda lc: lc.terminate(1.0, Cause.SLOW_CONSUMER),
    ),
    (_subscribed, ev.TransportLost(1.0, "reset"), lambda lc: lc.transport_lost(1.0, "reset")),
    (_active, ev.TimerFired(6.5, False), lambda lc: lc.handle_timer(6.5, stalled=False)),
    (_active, ev.TimerFired(6.5, True), lambda lc: lc.handle_timer(6.5, stalled=True)),
]


def _observe(scheduler: Scheduler, lc: ConnectionLifecycle, result: object) -> tuple[object, ...]:
    """Everything a caller can see of a connection and its scheduler."""
    return (
        result,
        lc.take_actions(),
        lc.state,
        lc.cause,
        lc.seq,
        lc.client_seq,
        lc.channels,
        lc.missed_pongs,
        lc.missed_echoes,
        lc.latency,
        lc.deadline,
        lc.reading_paused,
        lc.closing_step,
        scheduler.metrics.snapshot(),
    )


@pytest.mark.parametrize(
    ("prep", "event", "direct"), DISPATCH, ids=[type(e).__name__ for _, e, _ in DISPATCH]
)
def test_handle_calls_the_events_method(
    make_scheduler: MakeScheduler, prep: Prep, event: ev.Event, direct: Direct
) -> None:
    """handle(event) has exactly the visible effect and result of its method."""
    via_event, via_method = (
        make_scheduler(activity_is_liveness=True),
        make_scheduler(activity_is_liveness=True),
    )
    lc_event, lc_method = prep(via_event), prep(via_method)
    before = _observe(via_event, lc_event, None)
    after_event = _observe(via_event, lc_event, lc_event.handle(event))
    after_method = _observe(via_method, lc_method, direct(lc_method))
    assert after_event == after_method
    assert after_event != before
    # A teardown's close frame is decided by its input too: finish it and compare.
    if lc_event.state is DRAINING:
        lc_event.channels_released(3.0, buffered=0)
        lc_method.channels_released(3.0, buffered=0)
        assert lc_event.take_actions() == lc_method.take_actions()


def test_handle_times_the_answers_to_a_probe(make_scheduler: MakeScheduler) -> None:
    """handle() passes a pong's payload and an echo's arrival time on: the
    latest probe's answers, given as events, measure both round trips."""
    scheduler = make_scheduler(heartbeat_mode=HeartbeatMode.BOTH)
    lc = accept(scheduler)
    due = deadline_of(lc)
    assert due is not None
    ping, probe = fire(scheduler, lc)
    assert isinstance(ping, SendPing)
    assert isinstance(probe, SendHeartbeat)
    lc.handle(ev.PongReceived(due + 0.25, ping.payload))
    lc.handle(ev.MessageReceived(due + 0.5, probe.text))
    assert lc.take_actions() == []
    assert lc.latency == pytest.approx(0.25)
    snapshot = scheduler.metrics.snapshot()
    assert (snapshot.rtt.count, snapshot.app_rtt.count) == (1, 1)
    assert snapshot.rtt.total == pytest.approx(0.25)
    assert snapshot.app_rtt.total == pytest.approx(0.5)


def test_dispatch_table_covers_every_event_class() -> None:
    """Every event class of wslifecycle.events is exercised by the dispatch test."""
    classes = {getattr(ev, name) for name in ev.__all__ if name != "Event"}
    assert {type(event) for _, event, _ in DISPATCH} == classes


def test_handle_returns_what_the_method_returns(scheduler: Scheduler) -> None:
    """handle returns the upgrade decision and the send's sequence number; None otherwise."""
    lc = scheduler.open(0.0)
    assert lc.handle(ev.UpgradeRequested(0.0, None, "localhost")) is True
    assert lc.handle(ev.SendRequested(1.0, "a", False, 0)) == 1
    assert lc.handle(ev.SendRequested(1.0, "b", False, GUARD)) is None
    assert lc.handle(ev.MessageReceived(1.0, "x")) is None
    refused = scheduler.open(0.0)
    assert refused.handle(ev.UpgradeRequested(0.0, "https://evil.example", "localhost")) is False


def test_handle_propagates_misuse(scheduler: Scheduler) -> None:
    """Errors of the underlying method surface unchanged through handle."""
    lc = scheduler.open(0.0)
    with pytest.raises(InvalidTransition):
        lc.handle(ev.SendRequested(0.0, "x", False, 0))
    with pytest.raises(InvalidCloseCode):
        lc.handle(ev.CloseRequested(0.0, 1005, ""))
    with pytest.raises(ValueError, match="HTTP status 300-599"):
        lc.handle(ev.UpgradeInvalid(0.0, 200, "ok"))


def test_events_and_actions_are_frozen_and_slotted() -> None:
    """Events and actions are immutable, slotted dataclasses."""
    event = ev.TimerFired(1.0, False)
    action = SendClose(1000, "")
    assert not hasattr(event, "__dict__")
    assert not hasattr(action, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.now = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        action.code = 1001  # type: ignore[misc]
    assert dataclasses.replace(event, now=3.0) == ev.TimerFired(3.0, False)


# ---------------------------------------------- ReleaseChannels precedes the end

Teardown = Callable[[Scheduler, ConnectionLifecycle], None]


def _by_close(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.close(1.0)
    lc.channels_released(1.0, buffered=0)


def _by_peer_close(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.receive_close(1.0, 1000)
    lc.channels_released(1.0, buffered=0)


def _by_fail(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.fail(1.0, Cause.INVALID_PAYLOAD, 1007)
    lc.channels_released(1.0, buffered=0)


def _by_handler(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.handler_failed(1.0, "boom")
    lc.channels_released(1.0, buffered=0)


def _by_drain(s: Scheduler, lc: ConnectionLifecycle) -> None:
    s.begin_drain(1.0)
    lc.channels_released(1.0, buffered=0)


def _by_release_failure(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.close(1.0)
    lc.channel_release_failed(1.0, "down")


def _by_close_timeout(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.close(1.0)
    s.tick(11.0)


def _by_terminate(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.terminate(1.0, Cause.SLOW_CONSUMER)


def _by_heartbeat_timeout(s: Scheduler, lc: ConnectionLifecycle) -> None:
    for _ in range(3):
        assert lc.deadline is not None
        s.tick(lc.deadline)


def _by_transport_loss(s: Scheduler, lc: ConnectionLifecycle) -> None:
    lc.transport_lost(1.0)


TEARDOWNS: list[Teardown] = [
    _by_close,
    _by_peer_close,
    _by_fail,
    _by_handler,
    _by_drain,
    _by_release_failure,
    _by_close_timeout,
    _by_terminate,
    _by_heartbeat_timeout,
    _by_transport_loss,
]


@pytest.mark.parametrize("teardown", TEARDOWNS, ids=lambda f: f.__name__)
def test_release_channels_precedes_close_and_terminate(
    scheduler: Scheduler, teardown: Teardown
) -> None:
    """Every teardown releases channels once, before drift/close/terminate, then sends nothing."""
    lc = accept(scheduler)
    lc.subscribe("news")
    lc.subscribe("chat")
    teardown(scheduler, lc)
    actions = lc.take_actions()
    releases = [i for i, a in enumerate(actions) if isinstance(a, ReleaseChannels)]
    assert [actions[i] for i in releases] == [ReleaseChannels(("chat", "news"))]
    ends = [
        i for i, a in enumerate(actions) if isinstance(a, SendClose | Terminate | SendStateDrift)
    ]
    assert all(releases[0] < i for i in ends)
    assert not any(isinstance(a, SendMessage) for a in actions[releases[0] :])
    assert lc.channels == frozenset()
    assert not lc.accepts_sends
    with pytest.raises(ConnectionClosed):
        lc.send("late", buffered=0)


# ----------------------------------------------------------------------- metrics


def test_terminations_and_drift_notices_are_counted_each_time(scheduler: Scheduler) -> None:
    """terminations counts every terminate under its cause, and
    state_drift_notices every notice sent, across connections."""
    for _ in range(3):
        accept(scheduler).terminate(1.0, Cause.SLOW_CONSUMER)
    for _ in range(2):
        lc = accept(scheduler)
        lc.send("a", buffered=0)
        lc.report_client_seq(0.5, 0)
        lc.close(1.0)
        lc.channels_released(1.0, buffered=0)
    metrics = scheduler.metrics
    assert metrics.terminations == {Cause.SLOW_CONSUMER: 3}
    assert metrics.state_drift_notices == 2


def test_metrics_follow_a_mixed_population(make_scheduler: MakeScheduler) -> None:
    """Counters by state, causes, terminations, close codes and drift notices add up."""
    scheduler = make_scheduler()
    still_open = scheduler.open(0.0)
    healthy = accept(scheduler)
    closing = accept(scheduler)
    zombie = accept(scheduler)
    refused = scheduler.open(0.0)
    refused.reject_upgrade(0.0, 400, "bad")
    closing.send("x", buffered=0)
    closing.report_client_seq(0.5, 0)
    closing.close(1.0, 4000)
    closing.channels_released(1.0, buffered=0)
    zombie.terminate(1.0, Cause.SLOW_CONSUMER)
    snapshot = scheduler.metrics.snapshot()
    assert dict(snapshot.connections) == {OPEN: 1, ACTIVE: 1, DRAINING: 1, CLOSED: 2}
    assert snapshot.handshakes_accepted == 3
    assert dict(snapshot.handshakes_rejected) == {400: 1}
    assert dict(snapshot.closed_by_cause) == {
        Cause.HANDSHAKE_REJECTED: 1,
        Cause.SLOW_CONSUMER: 1,
    }
    assert dict(snapshot.terminations) == {Cause.SLOW_CONSUMER: 1}
    assert dict(snapshot.close_codes_sent) == {4000: 1}
    assert snapshot.state_drift_notices == 1
    assert snapshot.messages_sent == 1
    assert len(scheduler) == 3
    assert set(scheduler.connections) == {still_open, healthy, closing}
    assert math.isclose(snapshot.loop_lag.mean, 0.0)


# ------------------------------------------- the handler's end, reading pauses


def test_a_handler_that_returns_closes_with_1000_after_releasing(
    active: ConnectionLifecycle,
) -> None:
    """handler_returned from ACTIVE starts the normal close: DRAINING, channels
    released, then close 1000, with the application-close cause."""
    active.subscribe("news")
    active.handler_returned(1.0)
    actions = active.take_actions()
    assert kinds(actions) == [StateChanged, ReleaseChannels]
    assert active.cause is Cause.APPLICATION_CLOSE
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendClose(1000, "")]


def test_a_handler_that_returns_while_closing_adds_nothing(scheduler: Scheduler) -> None:
    """Once the connection is DRAINING or CLOSED the handler's return changes
    nothing; before the upgrade there is no handler, so it is misuse."""
    for state in (DRAINING, CLOSED):
        lc = in_state(scheduler, state)
        lc.handler_returned(2.0)
        assert lc.take_actions() == []
        assert lc.state is state
    with pytest.raises(InvalidTransition):
        in_state(scheduler, OPEN).handler_returned(1.0)


def test_a_returning_handler_of_a_lagging_client_sends_the_drift_notice(
    active: ConnectionLifecycle,
) -> None:
    """The normal close of a returned handler is graceful: a client behind on
    its sequence gets the STATE_DRIFT notice before the close frame."""
    active.send("a", buffered=0)
    active.report_client_seq(0.5, 0)
    active.handler_returned(1.0)
    active.take_actions()
    active.channels_released(1.0, buffered=0)
    assert active.take_actions() == [SendStateDrift(1, 0), SendClose(1000, "")]


def test_a_stalled_handlers_close_tells_a_lagging_client_about_the_drift(
    make_scheduler: MakeScheduler,
) -> None:
    """The stalled-handler close is the server's own (1013 'server handler
    stalled'): a client behind on its sequence gets the STATE_DRIFT notice first."""
    scheduler = make_scheduler(max_missed_pongs=2)
    lc = accept(scheduler)
    lc.send("a", buffered=0)
    lc.report_client_seq(0.5, 0)
    lc.pause_reading(0.5)
    lc.take_actions()
    for _ in range(2):
        fire(scheduler, lc)
    assert kinds(fire(scheduler, lc)) == [StateChanged, ReleaseChannels]
    assert lc.cause is Cause.HANDLER_STALLED
    lc.channels_released(40.0, buffered=0)
    assert lc.take_actions() == [
        SendStateDrift(1, 0),
        SendClose(CloseCode.TRY_AGAIN_LATER, "server handler stalled"),
    ]


def test_reading_pauses_only_while_active(scheduler: Scheduler) -> None:
    """pause_reading takes effect in ACTIVE only: a closing connection must
    read the peer's close frame; before the upgrade it is misuse."""
    lc = accept(scheduler)
    lc.pause_reading(1.0)
    assert lc.reading_paused
    assert lc.take_actions() == []
    lc.resume_reading(1.5)
    # Exactly False, as on a new connection: drivers compare it by identity.
    assert paused_of(lc) is False
    for state in (DRAINING, CLOSED):
        other = in_state(scheduler, state)
        other.pause_reading(2.0)
        assert not paused_of(other)
        other.resume_reading(2.0)
    with pytest.raises(InvalidTransition):
        in_state(scheduler, OPEN).pause_reading(1.0)
    with pytest.raises(InvalidTransition):
        in_state(scheduler, OPEN).resume_reading(1.0)


@pytest.mark.parametrize(
    "leave",
    [
        lambda lc: lc.close(2.0),
        lambda lc: lc.receive_close(2.0, 1000, ""),
        lambda lc: lc.handler_failed(2.0, "boom"),
        lambda lc: lc.terminate(2.0, Cause.SLOW_CONSUMER),
    ],
    ids=["close", "peer close", "handler error", "terminate"],
)
def test_leaving_active_resumes_reading(
    active: ConnectionLifecycle, leave: Callable[[ConnectionLifecycle], object]
) -> None:
    """Whatever ends ACTIVE, reading_paused is False afterwards (exactly:
    drivers compare it by identity)."""
    active.pause_reading(1.0)
    leave(active)
    assert paused_of(active) is False


def test_the_closing_steps_of_our_close(active: ConnectionLifecycle) -> None:
    """Our close: RELEASING, then CLOSE_SENT once released, then CLOSED (no
    step) when the peer's close frame arrives."""
    active.close(1.0)
    assert active.closing_step is ClosingStep.RELEASING
    active.channels_released(1.0, buffered=0)
    assert step_of(active) is ClosingStep.CLOSE_SENT
    active.channels_released(1.1, buffered=0)  # a late second acknowledgement
    assert step_of(active) is ClosingStep.CLOSE_SENT
    active.receive_close(1.2, 1000, "")
    assert (state_of(active), step_of(active)) == (CLOSED, None)
    assert kinds(active.take_actions())[-2:] == [StateChanged, CloseTransport]


def test_the_closing_steps_of_the_peers_close(active: ConnectionLifecycle) -> None:
    """The peer's close: RELEASING_PEER_CLOSED until the channels are released,
    then our echo goes out and the connection is CLOSED at once."""
    active.receive_close(1.0, 4001, "bye")
    assert active.closing_step is ClosingStep.RELEASING_PEER_CLOSED
    active.receive_close(1.1, 4001, "again")  # nothing follows a close; ignored
    assert active.closing_step is ClosingStep.RELEASING_PEER_CLOSED
    active.take_actions()
    active.channels_released(1.2, buffered=0)
    assert kinds(active.take_actions()) == [SendClose, StateChanged, CloseTransport]
    assert (state_of(active), step_of(active)) == (CLOSED, None)


def test_a_failed_release_after_the_peers_close_still_completes(
    active: ConnectionLifecycle,
) -> None:
    """The peer closed, then releasing the channels failed: our close goes out
    with 1011 and the handshake is complete."""
    active.receive_close(1.0, 1000, "")
    active.take_actions()
    active.channel_release_failed(1.1, "broker down")
    actions = active.take_actions()
    assert SendClose(1011, "server error during teardown") in actions
    assert active.state is CLOSED
