"""The helpers of wslifecycle.testing: FakeClock, seeded_entropy, Simulation
with ScriptedPeer, Trace, and the Hypothesis strategies."""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from wslifecycle import (
    AlertKind,
    Config,
    ConnectionClosed,
    HeartbeatMode,
    InvalidTransition,
    Scheduler,
    State,
    TerminationCause,
)
from wslifecycle import events as ev
from wslifecycle.actions import (
    AcceptUpgrade,
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
from wslifecycle.testing import (
    FakeClock,
    ScriptedPeer,
    Simulation,
    Trace,
    TraceEntry,
    seeded_entropy,
)
from wslifecycle.testing.strategies import configs, events

Cause = TerminationCause
GUARD = 1024 * 1024


def simulation(**config: Any) -> Simulation:
    """A Simulation on a fresh FakeClock; interval 10 s, no-Origin clients allowed."""
    fields: dict[str, Any] = {"heartbeat_interval": 10.0, "allow_no_origin": True}
    fields.update(config)
    return Simulation(Scheduler(Config(**fields), seeded_entropy(1)), FakeClock())


# -------------------------------------------------------------------- FakeClock


def test_fake_clock_starts_where_told_and_reads_by_call() -> None:
    """The clock starts at 0 (or the given time) and calling it reads the time."""
    assert FakeClock()() == 0.0
    clock = FakeClock(5.5)
    assert clock() == 5.5
    assert clock.now == 5.5


def test_fake_clock_advance() -> None:
    """advance moves forward by a duration (0 allowed) and returns the new time."""
    clock = FakeClock(1.0)
    assert clock.advance(2.5) == 3.5
    assert clock.advance(0.0) == 3.5
    assert clock() == 3.5


def test_fake_clock_refuses_to_go_back() -> None:
    """A negative advance or an earlier advance_to raises ValueError and leaves the time alone."""
    clock = FakeClock(10.0)
    with pytest.raises(ValueError, match=r"cannot go back \(-1.0 s\)"):
        clock.advance(-1.0)
    with pytest.raises(ValueError, match=r"cannot go back from 10\.0 to 9\.0"):
        clock.advance_to(9.0)
    assert clock() == 10.0


def test_fake_clock_advance_to() -> None:
    """advance_to moves to a later (or the same) time and returns it."""
    clock = FakeClock(1.0)
    assert clock.advance_to(4.0) == 4.0
    assert clock.advance_to(4.0) == 4.0
    assert clock.now == 4.0


# ---------------------------------------------------------------- seeded_entropy


def test_seeded_entropy_is_deterministic() -> None:
    """The same seed gives the same ids and payloads, in the same order."""
    a, b = seeded_entropy(7), seeded_entropy(7)
    assert [a.connection_id() for _ in range(5)] == [b.connection_id() for _ in range(5)]
    assert [a.probe_payload() for _ in range(5)] == [b.probe_payload() for _ in range(5)]
    assert seeded_entropy().connection_id() == seeded_entropy(0).connection_id()


def test_seeded_entropy_differs_between_seeds() -> None:
    """Different seeds give different sequences."""
    a, b = seeded_entropy(1), seeded_entropy(2)
    assert [a.probe_payload() for _ in range(3)] != [b.probe_payload() for _ in range(3)]
    assert a.connection_id() != b.connection_id()


def test_seeded_entropy_ids_are_unique_and_well_formed() -> None:
    """Ids are conn-<counter>-<8 hex digits>, unique; payloads are 8 bytes."""
    entropy = seeded_entropy(3)
    ids = [entropy.connection_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for n, connection_id in enumerate(ids[:50], start=1):
        assert re.fullmatch(rf"conn-{n}-[0-9a-f]{{8}}", connection_id)
    payloads = [entropy.probe_payload() for _ in range(100)]
    assert all(isinstance(p, bytes) and len(p) == 8 for p in payloads)
    assert len(set(payloads)) == 100


# -------------------------------------------------------------------- Trace


def test_trace_queries() -> None:
    """of / entries / first filter by action type and optionally by connection."""
    trace = Trace(
        [
            TraceEntry(0.0, "a", AcceptUpgrade("a")),
            TraceEntry(1.0, "b", AcceptUpgrade("b")),
            TraceEntry(2.0, None, Alert(AlertKind.LOOP_STALL, None, 3.0, "late")),
            TraceEntry(3.0, "b", Terminate(Cause.SLOW_CONSUMER)),
        ]
    )
    assert list(trace.of(AcceptUpgrade)) == [AcceptUpgrade("a"), AcceptUpgrade("b")]
    assert list(trace.of(AcceptUpgrade, "b")) == [AcceptUpgrade("b")]
    assert [e.time for e in trace.entries(AcceptUpgrade)] == [0.0, 1.0]
    assert trace.entries(Terminate, "a") == []
    assert trace.first(Terminate) == TraceEntry(3.0, "b", Terminate(Cause.SLOW_CONSUMER))
    assert trace.first(AcceptUpgrade, "b") == TraceEntry(1.0, "b", AcceptUpgrade("b"))
    assert trace.first(Alert) is not None
    assert trace.first(SendPing) is None
    assert trace.first(Terminate, "a") is None


# --------------------------------------------------------------- Simulation


def test_healthy_peer_stays_connected() -> None:
    """A peer that answers every ping is probed once per interval and never terminated."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer(rtt=0.05))
    sim.run_until(100.0)
    assert sim.clock() == 100.0
    assert lc.state is State.ACTIVE
    assert sim.trace.first(Terminate) is None
    accept = sim.trace.first(AcceptUpgrade, lc.id)
    assert accept is not None
    assert accept.time == 0.0
    pings = sim.trace.entries(SendPing, lc.id)
    assert len(pings) == 10
    assert all(b.time - a.time == pytest.approx(10.0) for a, b in itertools.pairwise(pings))
    assert lc.latency == pytest.approx(0.05)
    assert lc.missed_pongs == 0


def test_refused_peer_gets_nothing_scheduled() -> None:
    """A peer refused at the upgrade is CLOSED at once; its script never plays."""
    sim = simulation(allow_no_origin=False)
    peer = ScriptedPeer(
        origin="https://evil.example", messages=[(1.0, "x")], close_at=2.0, lost_at=3.0
    )
    lc = sim.connect(peer)
    assert lc.state is State.CLOSED
    (refusal,) = sim.trace.of(RejectUpgrade)
    assert refusal.status == 403
    assert refusal.reason.startswith("Origin 'https://evil.example'")
    sim.run_until(10.0)
    assert sim.trace.first(DeliverMessage) is None
    assert lc.cause is Cause.ORIGIN_REJECTED


def test_scripted_messages_are_delivered_at_their_times() -> None:
    """Messages arrive at their scripted times, in order."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer(messages=[(1.0, "a"), (2.5, b"b")]))
    sim.run_until(5.0)
    delivered = sim.trace.entries(DeliverMessage, lc.id)
    assert [(e.time, e.action) for e in delivered] == [
        (1.0, DeliverMessage("a")),
        (2.5, DeliverMessage(b"b")),
    ]


def _send_three_then_close(sim: Simulation, lc_peer: ScriptedPeer) -> tuple[str, Simulation]:
    lc = sim.connect(lc_peer)
    for data in ("m1", "m2", "m3"):
        sim.apply(lc, ev.SendRequested(sim.clock(), data, False, 0))
    sim.run_until(1.0)
    sim.apply(lc, ev.CloseRequested(sim.clock(), 1000, ""))
    sim.run_until(3.0)
    assert lc.state is State.CLOSED
    return lc.id, sim


def test_lagging_client_gets_a_state_drift_notice_on_close() -> None:
    """A client reporting seq_lag behind gets STATE_DRIFT before the close frame."""
    connection_id, sim = _send_three_then_close(
        simulation(), ScriptedPeer(reports_seq=True, seq_lag=1)
    )
    order = [type(e.action) for e in sim.trace if e.connection_id == connection_id]
    assert order.index(ReleaseChannels) < order.index(SendStateDrift) < order.index(SendClose)
    assert list(sim.trace.of(SendStateDrift)) == [SendStateDrift(3, 2)]
    assert sim.scheduler.metrics.state_drift_notices == 1
    assert sim.trace.first(CloseTransport, connection_id) is not None


def test_client_in_step_gets_no_notice() -> None:
    """A client that reports the latest seq gets only the close frame."""
    _, sim = _send_three_then_close(simulation(), ScriptedPeer(reports_seq=True))
    assert sim.trace.first(SendStateDrift) is None


def test_no_notice_when_the_simulated_buffer_is_full() -> None:
    """Simulation(buffered=guard) makes the transport too full for a notice."""
    sim = Simulation(
        Scheduler(Config(heartbeat_interval=10.0, allow_no_origin=True), seeded_entropy(1)),
        FakeClock(),
        buffered=GUARD,
    )
    _, sim = _send_three_then_close(sim, ScriptedPeer(reports_seq=True, seq_lag=2))
    assert sim.trace.first(SendStateDrift) is None
    assert sim.trace.first(SendClose) is not None


def test_peer_close_at() -> None:
    """A peer closing at a scripted time gets its code echoed and TCP closed; later events drop."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer(close_at=5.0, close_code=4000, messages=[(6.0, "late")]))
    sim.run_until(30.0)
    close = sim.trace.first(SendClose, lc.id)
    assert close is not None
    assert (close.time, close.action) == (5.0, SendClose(4000, ""))
    done = sim.trace.first(CloseTransport, lc.id)
    assert done is not None
    assert done.time == 5.0
    assert lc.cause is Cause.PEER_CLOSE
    assert sim.trace.first(DeliverMessage) is None


def test_peer_that_ignores_our_close_is_terminated() -> None:
    """answers_close=False: the close times out and the connection is terminated."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer(answers_close=False))
    sim.run_until(1.0)
    sim.apply(lc, ev.CloseRequested(sim.clock(), 1000, ""))
    sim.run_until(30.0)
    terminate = sim.trace.first(Terminate, lc.id)
    assert terminate is not None
    assert (terminate.time, terminate.action) == (11.0, Terminate(Cause.CLOSE_TIMEOUT))
    assert lc.cause is Cause.APPLICATION_CLOSE


def test_lost_transport() -> None:
    """lost_at closes with transport_lost and no Terminate; later peer events are ignored."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer(lost_at=7.0, messages=[(8.0, "after loss")]))
    sim.run_until(30.0)
    assert lc.state is State.CLOSED
    assert lc.cause is Cause.TRANSPORT_LOST
    assert sim.trace.first(Terminate) is None
    assert sim.trace.first(DeliverMessage) is None
    moved = sim.trace.entries(StateChanged, lc.id)[-1]
    assert moved.time == 7.0


def test_silent_peer_is_terminated_within_the_bound() -> None:
    """A peer silent from t0 is terminated for heartbeat_timeout by t0 + detection bound."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer(silent_from=12.0, messages=[(13.0, "lost in the void")]))
    sim.run_until(200.0)
    terminate = sim.trace.first(Terminate, lc.id)
    assert terminate is not None
    assert terminate.action == Terminate(Cause.HEARTBEAT_TIMEOUT)
    assert terminate.time <= 12.0 + sim.scheduler.config.detection_bound
    assert sim.trace.first(DeliverMessage) is None


def test_late_timer_within_threshold_still_detects() -> None:
    """A timer 1 s late (below threshold) still terminates a silent peer in bound + 1 s."""
    sim = Simulation(
        Scheduler(Config(heartbeat_interval=10.0, allow_no_origin=True), seeded_entropy(1)),
        FakeClock(),
        lateness=lambda deadline: 1.0,
    )
    lc = sim.connect(ScriptedPeer(answers_pings=False))
    sim.run_until(100.0)
    terminate = sim.trace.first(Terminate, lc.id)
    assert terminate is not None
    assert terminate.time <= sim.scheduler.config.detection_bound + 1.0
    assert sim.trace.first(Alert) is None


def test_stalled_timer_blames_nobody() -> None:
    """A timer always later than the threshold raises loop_stall alerts and terminates nobody."""
    sim = Simulation(
        Scheduler(Config(heartbeat_interval=10.0, allow_no_origin=True), seeded_entropy(1)),
        FakeClock(),
        lateness=lambda deadline: 3.0,
    )
    lc = sim.connect(ScriptedPeer(answers_pings=False))
    sim.run_until(100.0)
    assert lc.state is State.ACTIVE
    alerts = sim.trace.entries(Alert)
    assert alerts
    assert all(e.connection_id is None for e in alerts)
    assert all(isinstance(e.action, Alert) and e.action.value == pytest.approx(3.0) for e in alerts)
    assert sim.trace.first(SendPing) is None


def test_application_heartbeats_are_echoed() -> None:
    """In APPLICATION mode the scripted peer echoes JSON heartbeats and stays connected."""
    sim = simulation(heartbeat_mode=HeartbeatMode.APPLICATION)
    lc = sim.connect(ScriptedPeer())
    sim.run_until(60.0)
    assert lc.state is State.ACTIVE
    assert len(sim.trace.entries(SendHeartbeat)) == 6
    assert sim.trace.first(DeliverMessage) is None  # echoes are not delivered
    assert sim.scheduler.metrics.snapshot().app_rtt.count == 6


@pytest.mark.parametrize(
    ("pings", "echoes", "cause"),
    [
        (False, False, Cause.HEARTBEAT_TIMEOUT),
        (True, False, Cause.APP_HEARTBEAT_TIMEOUT),
        (False, True, Cause.HEARTBEAT_TIMEOUT),
    ],
)
def test_both_mode_needs_both_answers(pings: bool, echoes: bool, cause: TerminationCause) -> None:
    """In BOTH mode a peer that misses either probe is terminated, with the matching cause."""
    sim = simulation(heartbeat_mode=HeartbeatMode.BOTH)
    lc = sim.connect(ScriptedPeer(answers_pings=pings, echoes_heartbeats=echoes))
    sim.run_until(60.0)
    assert list(sim.trace.of(Terminate, lc.id)) == [Terminate(cause)]


def test_apply_feeds_driver_side_events() -> None:
    """apply() runs driver-side events now and carries out their actions."""
    sim = simulation()
    lc = sim.connect(ScriptedPeer())  # reports_seq=False: sends get no seq report
    sim.apply(lc, ev.SendRequested(0.0, "hello", False, 0))
    sim.apply(lc, ev.Subscribe(0.0, "news"))
    assert lc.channels == frozenset({"news"})
    sim.run_until(1.0)
    assert lc.client_seq is None
    # The terminate's ReleaseChannels comes from a CLOSED connection: no acknowledgement.
    sim.apply(lc, ev.TerminateRequested(1.0, Cause.SLOW_CONSUMER))
    assert [type(e.action) for e in sim.trace if e.connection_id == lc.id] == [
        StateChanged,
        AcceptUpgrade,
        SendMessage,
        StateChanged,
        ReleaseChannels,
        Terminate,
    ]
    sim.run_until(50.0)  # the pending ping answers were purged with the connection
    assert sim.trace.first(SendPing) is None


def test_run_until_with_nothing_to_do_moves_the_clock() -> None:
    """With no connection and no event, run_until just advances the clock."""
    sim = simulation()
    sim.run_until(42.0)
    assert sim.clock() == 42.0
    assert list(sim.trace) == []
    sim.run_until(10.0)  # never backwards
    assert sim.clock() == 42.0


def test_several_peers_share_one_timer() -> None:
    """A healthy and a silent peer run side by side; only the silent one is terminated."""
    sim = simulation()
    healthy = sim.connect(ScriptedPeer())
    zombie = sim.connect(ScriptedPeer(silent_from=0.0))
    sim.run_until(100.0)
    assert healthy.state is State.ACTIVE
    assert zombie.state is State.CLOSED
    assert [e.connection_id for e in sim.trace.entries(Terminate)] == [zombie.id]


# --------------------------------------------------------------- strategies


@settings(max_examples=60, deadline=None)
@given(configs())
def test_configs_always_build(config: Config) -> None:
    """configs() draws valid Configs within its documented ranges."""
    assert isinstance(config, Config)
    assert 0.05 <= config.heartbeat_interval <= 120.0
    assert 1 <= config.max_missed_pongs <= 5
    assert config.effective_stall_threshold < config.heartbeat_interval
    assert config.allowed_origins <= {"https://app.example.com", "http://localhost:8080"}


@settings(max_examples=30, deadline=None)
@given(
    configs(
        max_missed_pongs=4,
        heartbeat_mode=HeartbeatMode.BOTH,
        allow_no_origin=True,
        close_timeout=3.0,
        compression=True,
    )
)
def test_configs_fixed_fields_apply(config: Config) -> None:
    """Keyword arguments of configs() pin those fields, including ones it does not draw."""
    assert config.max_missed_pongs == 4
    assert config.heartbeat_mode is HeartbeatMode.BOTH
    assert config.allow_no_origin is True
    assert config.close_timeout == 3.0
    assert config.compression is True


EVENT_CLASSES = [getattr(ev, name) for name in ev.__all__ if name != "Event"]


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_events_draws_every_event_class(cls: type) -> None:
    """events() can produce each event class of wslifecycle.events."""
    example = find(
        events(),
        lambda event: isinstance(event, cls),
        # no shrinking: fast; a generous budget (find stops at the first hit) so
        # one branch of twenty is never missed by chance
        settings=settings(database=None, phases=[Phase.generate], max_examples=5000),
    )
    assert type(example) is cls
    assert 0.0 <= example.now <= 1000.0


@settings(max_examples=50, deadline=None)
@given(events(now=st.just(5.0), channels=st.just("only")))
def test_events_use_the_given_times_and_channels(event: ev.Event) -> None:
    """events(now=..., channels=...) draws its times and channel names from those strategies."""
    assert event.now == 5.0
    if isinstance(event, ev.Subscribe | ev.Unsubscribe):
        assert event.channel == "only"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=configs(allow_no_origin=True), script=st.lists(events(), max_size=25))
def test_handle_raises_only_documented_misuse(config: Config, script: list[ev.Event]) -> None:
    """Any event sequence raises only documented misuse and never moves backwards."""
    scheduler = Scheduler(config, seeded_entropy(1))
    lc = scheduler.open(0.0)
    assert lc.request_upgrade(0.0, origin=None, host="localhost")
    rank = lc.state.rank
    for event in script:
        with contextlib.suppress(ConnectionClosed, InvalidTransition, ValueError):
            lc.handle(event)
        lc.take_actions()
        assert lc.state.rank >= rank
        rank = lc.state.rank


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(configs(heartbeat_interval=0.5))
def test_configs_with_a_fixed_interval_always_build(config: Config) -> None:
    """configs(heartbeat_interval=...) builds a valid Config whatever else it draws."""
    assert config.heartbeat_interval == 0.5
