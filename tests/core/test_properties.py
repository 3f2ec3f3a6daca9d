"""Properties of the core, proven with Hypothesis on a fake clock.

Each test states its invariant in its first docstring sentence. Runs use
injected entropy (``seeded_entropy``) and :class:`Simulation`, which plays the
driver: it fires the one scheduler timer (on time or late by a drawn amount)
and plays scripted peers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from wslifecycle import (
    Config,
    ConfigError,
    ConnectionLifecycle,
    HeartbeatMode,
    Input,
    InvalidTransition,
    LifecycleError,
    Scheduler,
    State,
    TerminationCause,
    is_sendable,
)
from wslifecycle import events as ev
from wslifecycle.actions import (
    ReleaseChannels,
    SendClose,
    SendHeartbeat,
    SendMessage,
    SendPing,
    StateChanged,
    Terminate,
)
from wslifecycle.causes import AlertKind
from wslifecycle.testing import FakeClock, ScriptedPeer, Simulation, seeded_entropy
from wslifecycle.testing.strategies import configs, events
from wslifecycle.transitions import TRANSITIONS

LIVENESS_CAUSES = {TerminationCause.HEARTBEAT_TIMEOUT, TerminationCause.APP_HEARTBEAT_TIMEOUT}

intervals = st.sampled_from([0.05, 1.0, 30.0]) | st.floats(0.01, 100.0)


@st.composite
def liveness_configs(draw: st.DrawFn) -> Config:
    """Configs that exercise every heartbeat knob (origin checks off)."""
    interval = draw(intervals)
    return Config(
        heartbeat_interval=interval,
        max_missed_pongs=draw(st.integers(1, 4)),
        heartbeat_mode=draw(st.sampled_from(HeartbeatMode)),
        activity_is_liveness=draw(st.booleans()),
        stall_threshold=draw(st.none() | st.floats(interval / 50, interval * 0.9)),
        allow_no_origin=True,
    )


def jitter(seed: int, bound: float) -> Callable[[float], float]:
    """A timer that fires late by a pseudo-random amount in [0, bound]."""
    rng = random.Random(seed)
    return lambda deadline: rng.uniform(0.0, bound)


def new_simulation(
    config: Config, seed: int, lateness: float = 0.0
) -> tuple[Simulation, FakeClock]:
    clock = FakeClock(1000.0)  # not zero: phases must not depend on the epoch
    late = jitter(seed, lateness) if lateness else None
    return Simulation(Scheduler(config, seeded_entropy(seed)), clock, lateness=late), clock


def chatter(start: float, end: float, every: float) -> list[tuple[float, str | bytes]]:
    """A peer that sends a message every ``every`` seconds in [start, end)."""
    count = int((end - start) / every) if every > 0 else 0
    return [(start + i * every, f"msg {i}") for i in range(min(count, 200))]


# ---------------------------------------------------------------- liveness bound


@given(
    config=liveness_configs(),
    seed=st.integers(0, 2**32),
    silent_after=st.floats(0.0, 5.0),
    rtt_fraction=st.floats(0.0, 0.99),
    lateness_fraction=st.floats(0.0, 0.99),
    neighbours=st.integers(0, 5),
    busy=st.booleans(),
)
@settings(max_examples=examples(300))
def test_a_silent_peer_is_terminated_within_the_bound(
    config: Config,
    seed: int,
    silent_after: float,
    rtt_fraction: float,
    lateness_fraction: float,
    neighbours: int,
    busy: bool,
) -> None:
    """A peer silent from t0 is terminated, with a heartbeat-timeout cause, no
    later than t0 + (max_missed + 1) × interval + the scheduler's slack, which
    is twice the most the timer fires late."""
    interval = config.heartbeat_interval
    lateness = lateness_fraction * config.effective_stall_threshold
    sim, clock = new_simulation(config, seed, lateness)
    for _ in range(neighbours):  # other connections share the timer
        sim.connect(ScriptedPeer(rtt=rtt_fraction * interval))
    start = clock.now
    t0 = start + silent_after * interval
    messages = chatter(start, t0, interval / 3) if busy else []
    zombie = sim.connect(
        ScriptedPeer(rtt=rtt_fraction * interval, silent_from=t0, messages=messages)
    )
    # L, the timer's lateness after a deadline, includes the timer-slack grid.
    bound = t0 + config.detection_bound + 2 * (lateness + config.effective_timer_slack)
    sim.run_until(bound + interval)

    entry = sim.trace.first(Terminate, zombie.id)
    assert entry is not None, "the silent peer was never terminated"
    assert isinstance(entry.action, Terminate)
    assert entry.action.cause in LIVENESS_CAUSES
    assert entry.time <= bound + 1e-9 * bound
    assert zombie.state is State.CLOSED


@given(
    config=liveness_configs(),
    seed=st.integers(0, 2**32),
    rtt_fractions=st.lists(st.floats(0.0, 0.999), min_size=1, max_size=6),
    open_offsets=st.lists(st.floats(0.0, 3.0), min_size=6, max_size=6),
    lateness_fraction=st.floats(0.0, 0.99),
    busy=st.booleans(),
    periods=st.integers(3, 12),
)
@settings(max_examples=examples(300))
def test_a_peer_answering_within_one_interval_is_never_terminated(
    config: Config,
    seed: int,
    rtt_fractions: list[float],
    open_offsets: list[float],
    lateness_fraction: float,
    busy: bool,
    periods: int,
) -> None:
    """A peer whose every answer arrives within one interval is never
    terminated for liveness, for any interval, threshold, phase and timer
    lateness below the stall threshold."""
    interval = config.heartbeat_interval
    lateness = lateness_fraction * (config.effective_stall_threshold - config.effective_timer_slack)
    sim, clock = new_simulation(config, seed, lateness)
    start = clock.now
    end = start + periods * interval
    healthy = []
    for rtt_fraction, offset in zip(rtt_fractions, open_offsets, strict=False):
        sim.run_until(clock.now + offset * interval)  # a different phase each
        messages = chatter(clock.now, end, interval / 2) if busy else []
        rtt = rtt_fraction * interval
        healthy.append(sim.connect(ScriptedPeer(rtt=rtt, messages=messages)))
    sim.run_until(end + interval)

    for lifecycle in healthy:
        assert lifecycle.state is State.ACTIVE
    assert not list(sim.trace.of(Terminate))


@given(
    config=liveness_configs(),
    seed=st.integers(0, 2**32),
    zombies=st.integers(1, 5),
    healthy=st.integers(0, 5),
    excess=st.floats(1.0, 20.0),
)
@settings(max_examples=examples(200))
def test_a_tick_later_than_the_stall_threshold_terminates_nobody(
    config: Config, seed: int, zombies: int, healthy: int, excess: float
) -> None:
    """A tick that comes later than the stall threshold terminates nobody
    (not even peers long past their bound) and raises a loop_stall alert
    carrying the lag."""
    sim, clock = new_simulation(config, seed)
    scheduler = sim.scheduler
    start = clock.now
    for _ in range(zombies):  # silent from the start
        sim.connect(ScriptedPeer(silent_from=start))
    for _ in range(healthy):
        sim.connect(ScriptedPeer(rtt=0.0))
    sim.run_until(start + config.heartbeat_interval * 0.5)
    handshaking = scheduler.open(clock.now)  # stays OPEN past its handshake deadline

    # The loop blocks for longer than every bound: when the timer finally
    # fires, zombies and the handshake are all overdue.
    wakeup = scheduler.next_wakeup()  # the deadline on the timer-slack grid
    assert wakeup is not None
    clock.advance(max(config.detection_bound, config.handshake_timeout) * excess)
    actions = [a for lc in scheduler.tick(clock.now) for a in lc.take_actions()]
    alerts = scheduler.take_alerts()

    assert not [a for a in actions if isinstance(a, Terminate)]
    assert [a.kind for a in alerts] == [AlertKind.LOOP_STALL]
    assert math.isclose(alerts[0].value, clock.now - wakeup)
    assert handshaking.state is State.OPEN
    assert scheduler.metrics.loop_stalls == 1
    assert len(scheduler) == zombies + healthy + 1


# ---------------------------------------------------------------- ping schedule


@given(
    interval=intervals,
    count=st.integers(1, 400),
    burst=st.booleans(),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=examples(100))
def test_pings_are_spaced_and_spread(interval: float, count: int, burst: bool, seed: int) -> None:
    """No connection is pinged twice within one interval, and with N
    connections no window of a tenth of the interval holds more than
    N/10 + 3 pings (ticks exactly at the deadlines: timer slack 0; with a
    slack g, ping times move by less than g)."""
    config = Config(
        heartbeat_interval=interval, max_missed_pongs=2, allow_no_origin=True, timer_slack=0.0
    )
    sim, clock = new_simulation(config, seed)
    rng = random.Random(seed)
    for _ in range(count):  # all at once, or arriving at random times
        if not burst:
            sim.run_until(clock.now + rng.uniform(0, interval / count))
        sim.connect(ScriptedPeer(rtt=interval / 10))
    steady = clock.now + interval
    sim.run_until(steady + 3 * interval)

    per_connection: dict[str | None, list[float]] = {}
    for entry in sim.trace.entries(SendPing):
        per_connection.setdefault(entry.connection_id, []).append(entry.time)
    for times in per_connection.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= interval * (1 - 1e-9) for gap in gaps), gaps

    window = interval / 10
    steady_times = sorted(t for ts in per_connection.values() for t in ts if t >= steady)
    steady_times = [t for t in steady_times if t < steady + interval]
    assert len(steady_times) == count  # each connection exactly once per interval
    crowd = max(
        (sum(1 for u in steady_times if t <= u < t + window) for t in steady_times), default=0
    )
    assert crowd <= count / 10 + 3, (crowd, count)


# ------------------------------------------------------ teardown over any history

misuse = (LifecycleError, ValueError)


def histories(connections: int) -> st.SearchStrategy[list[tuple[int, ev.Event]]]:
    """Up to 60 events, each for one of ``connections`` connections, in 0..50 s."""
    return st.lists(
        st.tuples(st.integers(0, connections - 1), events(st.floats(0.0, 50.0))),
        min_size=1,
        max_size=60,
    )


@given(config=configs(allow_no_origin=True), seed=st.integers(0, 2**32), script=histories(4))
@settings(max_examples=examples(300))
def test_any_history_keeps_the_teardown_rules(
    config: Config, seed: int, script: list[tuple[int, ev.Event]]
) -> None:
    """Over any sequence of inputs to a few connections: the state only moves
    forward; nothing is emitted after CLOSED; channels are released before the
    close or terminate action and nothing is sent after their release; only
    sendable close codes are emitted; and every closing connection has a
    deadline by which it reaches CLOSED."""
    clock = FakeClock()
    scheduler = Scheduler(config, seeded_entropy(seed))
    conns = [scheduler.open(0.0) for _ in range(4)]
    checker = ActionChecker()
    for lifecycle in conns:
        checker.observe(lifecycle)
    for index, event in script:
        lifecycle = conns[index]
        when = max(clock.now, event.now)
        clock.advance_to(when)
        for ran in scheduler.tick(clock.now):  # the one timer, on time
            checker.observe(ran)
        stamped = _restamp(event, clock.now)
        with contextlib.suppress(*misuse):
            lifecycle.handle(stamped)
        checker.observe(lifecycle)

    # Every connection not CLOSED has a deadline; closing ones are CLOSED by it
    # (a stall may have postponed it, by at most the stall threshold).
    slack = max(config.close_timeout, config.effective_stall_threshold)
    for lifecycle in conns:
        if lifecycle.state is State.CLOSED:
            continue
        assert lifecycle.deadline is not None
        if lifecycle.state is State.DRAINING:
            limit = lifecycle.deadline
            assert limit <= clock.now + slack + 1e-9
            while (due := scheduler.next_deadline()) is not None and due <= limit:
                clock.advance_to(due)  # fired on time: no stall
                for ran in scheduler.tick(clock.now):
                    checker.observe(ran)
            final: State = lifecycle.state  # re-read: the ticks moved it
            assert final is State.CLOSED


def _restamp(event: ev.Event, now: float) -> ev.Event:
    return dataclasses.replace(event, now=now)


class ActionChecker:
    """Watches every action of every connection and fails on a broken rule."""

    def __init__(self) -> None:
        self.rank: dict[str, int] = {}
        self.closed: set[str] = set()
        self.released: set[str] = set()
        self.channels: dict[str, set[str]] = {}

    def observe(self, lifecycle: ConnectionLifecycle) -> None:
        cid = lifecycle.id
        actions = lifecycle.take_actions()
        if cid in self.closed:
            assert not actions, f"{cid} emitted {actions} after CLOSED"
        rank = self.rank.setdefault(cid, 0)
        for action in actions:
            if isinstance(action, StateChanged):
                assert action.current.rank > action.previous.rank
                assert action.previous.rank == rank
                rank = action.current.rank
            elif isinstance(action, ReleaseChannels):
                self.released.add(cid)
            elif isinstance(action, SendMessage | SendPing | SendHeartbeat):
                assert cid not in self.released, f"{cid}: {action} after ReleaseChannels"
            elif isinstance(action, SendClose):
                assert is_sendable(action.code)
                assert cid in self.released, f"{cid}: close frame before ReleaseChannels"
            elif isinstance(action, Terminate) and lifecycle.channels:
                raise AssertionError(f"{cid}: terminated with channels held")
        assert rank == lifecycle.state.rank
        self.rank[cid] = rank
        if lifecycle.state is State.CLOSED:
            self.closed.add(cid)
            assert not lifecycle.channels


# ------------------------------------------------------------------ determinism


@given(
    config=liveness_configs(),
    seed=st.integers(0, 2**32),
    peers=st.lists(
        st.builds(
            ScriptedPeer,
            rtt=st.floats(0.0, 2.0),
            silent_from=st.floats(0.0, 200.0) | st.just(math.inf),
            reports_seq=st.booleans(),
            close_at=st.none() | st.floats(0.0, 200.0),
            lost_at=st.none() | st.floats(0.0, 200.0),
        ),
        min_size=1,
        max_size=5,
    ),
    lateness=st.floats(0.0, 0.5),
)
@settings(max_examples=examples(100))
def test_same_inputs_and_entropy_give_the_same_actions(
    config: Config, seed: int, peers: list[ScriptedPeer], lateness: float
) -> None:
    """The same inputs, clock and entropy give the same actions, in the same order."""

    def run() -> list[tuple[float, str | None, object]]:
        clock = FakeClock()
        late = jitter(seed, lateness * config.effective_stall_threshold)
        sim = Simulation(Scheduler(config, seeded_entropy(seed)), clock, lateness=late)
        for peer in peers:
            sim.connect(peer)
            sim.run_until(clock.now + 1.0)
        sim.run_until(300.0)
        return [(e.time, e.connection_id, e.action) for e in sim.trace]

    first = run()
    assert first  # every run accepts connections at least
    assert first == run()


def test_a_zero_tolerance_config_is_refused() -> None:
    """max_missed_pongs of 0 would terminate every peer at its first tick, so
    it is refused with the field named."""
    with pytest.raises(ConfigError) as refused:
        Config(max_missed_pongs=0)
    assert refused.value.field == "max_missed_pongs"


# ------------------------------------------- the lifecycle obeys its own table

#: The events a connection handles without moving, and the input each is.
#: Their fast paths do not all look the table up, so this is where the table
#: and the code could drift apart.
IN_PLACE = {
    ev.PongReceived: Input.PONG,
    ev.MessageReceived: Input.MESSAGE,
    ev.ActivitySeen: Input.ACTIVITY,
    ev.ClientSeqReported: Input.CLIENT_SEQ,
    ev.Subscribe: Input.SUBSCRIBE,
    ev.Unsubscribe: Input.UNSUBSCRIBE,
    ev.ReadingPaused: Input.READING_PAUSED,
    ev.ReadingResumed: Input.READING_RESUMED,
}


#: What may still reach a CLOSED connection from the peer, the driver or the
#: handler (late, or racing the close): all of it is ignored. The caller's
#: own misuse (sending, subscribing, upgrading after the end) raises instead.
LATE = (
    ev.PongReceived,
    ev.MessageReceived,
    ev.ActivitySeen,
    ev.ClientSeqReported,
    ev.Unsubscribe,
    ev.CloseRequested,
    ev.PeerClosed,
    ev.PeerMisbehaved,
    ev.HandlerFailed,
    ev.HandlerReturned,
    ev.ReadingPaused,
    ev.ReadingResumed,
    ev.ChannelsReleased,
    ev.ChannelReleaseFailed,
    ev.DrainRequested,
    ev.TerminateRequested,
    ev.TransportLost,
    ev.TimerFired,
)


@given(config=configs(allow_no_origin=True), seed=st.integers(0, 2**32), script=histories(3))
@settings(max_examples=examples(300))
def test_the_transition_table_is_what_the_lifecycle_does(
    config: Config, seed: int, script: list[tuple[int, ev.Event]]
) -> None:
    """Over any history, an input is accepted exactly where the transition table
    has its pair, one handled in place leaves the state where the table says, and
    a CLOSED connection ignores every late input without a word."""
    clock = FakeClock()
    scheduler = Scheduler(config, seeded_entropy(seed))
    conns = [scheduler.open(0.0) for _ in range(3)]
    for upgraded in conns[1:]:  # one stays OPEN; two start ACTIVE
        assert upgraded.request_upgrade(0.0, origin=None, host="localhost")
    for index, event in script:
        lifecycle = conns[index]
        clock.advance_to(max(clock.now, event.now))
        scheduler.tick(clock.now)
        before = lifecycle.state
        lifecycle.take_actions()
        if before is State.CLOSED and isinstance(event, LATE):
            lifecycle.handle(_restamp(event, clock.now))  # must not raise
            assert lifecycle.state is State.CLOSED
            assert not lifecycle.take_actions(), event
            continue
        refused: InvalidTransition | None = None
        try:
            lifecycle.handle(_restamp(event, clock.now))
        except InvalidTransition as error:
            refused = error
        except misuse:
            continue
        if refused is not None:
            assert (refused.state, refused.input) not in TRANSITIONS
            continue
        input_ = IN_PLACE.get(type(event))
        if input_ is not None and lifecycle.state is before:
            assert TRANSITIONS.get((before, input_)) is before, (before, input_)


#: One event of each kind a connection may get after its upgrade, and the
#: input of the table it is (the timer's depends on the state: see below).
AFTER_UPGRADE: tuple[tuple[ev.Event, Input], ...] = (
    (ev.PongReceived(2.0, b"late"), Input.PONG),
    (ev.MessageReceived(2.0, "hi"), Input.MESSAGE),
    (ev.ActivitySeen(2.0), Input.ACTIVITY),
    (ev.ClientSeqReported(2.0, 0), Input.CLIENT_SEQ),
    (ev.SendRequested(2.0, "x", False, 0), Input.SEND),
    (ev.Subscribe(2.0, "other"), Input.SUBSCRIBE),
    (ev.Unsubscribe(2.0, "room"), Input.UNSUBSCRIBE),
    (ev.CloseRequested(2.0, 1000, "bye"), Input.CLOSE),
    (ev.PeerClosed(2.0, 1000, "bye"), Input.PEER_CLOSE),
    (ev.PeerMisbehaved(2.0, TerminationCause.PROTOCOL_ERROR, 1002, "bad"), Input.PROTOCOL_ERROR),
    (ev.HandlerFailed(2.0, "boom"), Input.HANDLER_ERROR),
    (ev.HandlerReturned(2.0), Input.HANDLER_RETURNED),
    (ev.ReadingPaused(2.0), Input.READING_PAUSED),
    (ev.ReadingResumed(2.0), Input.READING_RESUMED),
    (ev.ChannelsReleased(2.0, 0), Input.CHANNELS_RELEASED),
    (ev.ChannelReleaseFailed(2.0, "down"), Input.RELEASE_FAILED),
    (ev.DrainRequested(2.0), Input.DRAIN),
    (ev.TerminateRequested(2.0, TerminationCause.SERVER_STOPPED), Input.TERMINATE),
    (ev.TransportLost(2.0, None), Input.TRANSPORT_LOST),
)


def _in_state(how: str) -> ConnectionLifecycle:
    """A connection subscribed to "room", brought to a state at time 1."""
    scheduler = Scheduler(Config(allow_no_origin=True), seeded_entropy(1))
    lifecycle = scheduler.open(0.0)
    assert lifecycle.request_upgrade(0.0, origin=None, host="localhost")
    lifecycle.subscribe("room")
    if how == "draining, releasing":
        lifecycle.close(1.0, 1000, "bye")
    elif how == "draining, close sent":
        lifecycle.close(1.0, 1000, "bye")
        lifecycle.channels_released(1.0, buffered=0)
    elif how == "closed":
        lifecycle.transport_lost(1.0)
    lifecycle.take_actions()
    return lifecycle


@pytest.mark.parametrize("how", ["active", "draining, releasing", "draining, close sent", "closed"])
def test_every_input_after_the_upgrade_agrees_with_the_table(how: str) -> None:
    """In every state after the upgrade, each input is accepted exactly where
    the table has its pair, and leaves the state where the table says (an input
    that moves the connection moves it at least as far as its row: the close
    completing may follow it); the timer too (ACTIVE: a heartbeat; DRAINING:
    the close timeout)."""
    timer_input = {State.ACTIVE: Input.HEARTBEAT, State.DRAINING: Input.CLOSE_TIMEOUT}
    cases = list(AFTER_UPGRADE)
    state = _in_state(how).state
    if state in timer_input:
        cases.append((ev.TimerFired(math.nan, False), timer_input[state]))
    for event, input_ in cases:
        lifecycle = _in_state(how)
        before = lifecycle.state
        if isinstance(event, ev.TimerFired):
            assert lifecycle.deadline is not None
            event = ev.TimerFired(lifecycle.deadline, False)
        refused: InvalidTransition | None = None
        try:
            lifecycle.handle(event)
        except InvalidTransition as error:
            refused = error
        except misuse:  # the caller's misuse (sending after the close)
            assert (before, input_) not in TRANSITIONS, (before, input_)
            continue
        if refused is not None:
            assert (refused.state, refused.input) == (before, input_)
            assert (before, input_) not in TRANSITIONS
            continue
        assert (before, input_) in TRANSITIONS, (before, input_)
        row = TRANSITIONS[before, input_]
        if lifecycle.state is before:
            assert row is before, (before, input_)
        else:
            assert row.rank <= lifecycle.state.rank, (before, input_)
