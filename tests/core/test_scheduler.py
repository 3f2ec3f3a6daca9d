"""Scheduler: one heap of deadlines for every connection, stall detection,
server drain, and the spreading of heartbeat phases."""

from __future__ import annotations

from collections.abc import Set

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from wslifecycle import (
    AlertKind,
    Config,
    ConnectionLifecycle,
    HeartbeatMode,
    Metrics,
    Scheduler,
    State,
    TerminationCause,
)
from wslifecycle.actions import Alert, CloseTransport, SendClose, StateChanged, Terminate
from wslifecycle.testing import seeded_entropy

from .conftest import MakeScheduler

GOLDEN = 0.6180339887498949


def accept(scheduler: Scheduler, now: float) -> ConnectionLifecycle:
    """Open and upgrade a connection at ``now``; its actions are taken."""
    lifecycle = scheduler.open(now)
    assert lifecycle.request_upgrade(now, origin=None, host="localhost")
    lifecycle.take_actions()
    return lifecycle


def state_of(lifecycle: ConnectionLifecycle) -> State:
    """The state, read through a call so mypy does not keep an earlier narrowing."""
    return lifecycle.state


def test_open_registers_a_connection_with_its_handshake_deadline(scheduler: Scheduler) -> None:
    """open() makes an OPEN lifecycle, counts it and makes its deadline the next one."""
    assert scheduler.next_deadline() is None
    assert len(scheduler) == 0
    lc = scheduler.open(2.0)
    assert lc.state is State.OPEN
    assert len(scheduler) == 1
    assert lc in scheduler.connections
    assert scheduler.next_deadline() == 12.0
    assert scheduler.metrics.connections[State.OPEN] == 1


def test_changes_counts_each_deadline_change_once(scheduler: Scheduler) -> None:
    """``changes`` starts at 0 and grows by one whenever a connection's deadline
    is set (opened, upgraded, probed, closing), so a driver comparing it with
    the count its timer was armed at re-arms after every change; a pong or a
    message sets no deadline and leaves it as it was."""
    assert scheduler.changes == 0
    lc = scheduler.open(0.0)
    assert scheduler.changes == 1  # the handshake deadline
    assert lc.request_upgrade(0.0, origin=None, host="localhost")
    assert scheduler.changes == 2  # the first heartbeat slot
    slot = lc.deadline
    assert slot is not None
    lc.receive_message(1.0, "hello")
    lc.receive_pong(1.0, b"")
    assert scheduler.changes == 2
    assert scheduler.tick(slot) == [lc]  # probed: the next slot
    assert scheduler.changes == 3
    lc.close(slot)
    assert scheduler.changes == 4  # the close deadline
    scheduler.open(slot)
    assert scheduler.changes == 5


def test_ids_come_from_the_entropy(make_scheduler: MakeScheduler) -> None:
    """Connection ids are drawn from the injected entropy, in order."""
    entropy = seeded_entropy(1)
    expected = [entropy.connection_id() for _ in range(3)]
    scheduler = make_scheduler()
    assert [scheduler.open(0.0).id for _ in range(3)] == expected


def test_tick_with_nothing_due_returns_nothing(scheduler: Scheduler) -> None:
    """A tick with nothing due (empty, or too early) runs nobody and observes no lag."""
    assert scheduler.tick(100.0) == []
    lc = scheduler.open(0.0)
    assert scheduler.tick(9.999) == []
    assert lc.state is State.OPEN
    assert scheduler.metrics.snapshot().loop_lag.count == 0
    assert scheduler.take_alerts() == []


def test_tick_runs_every_due_connection_in_deadline_order(scheduler: Scheduler) -> None:
    """A tick runs the connections due at or before now, earliest first, and no others."""
    late = scheduler.open(2.0)
    early = scheduler.open(0.0)
    middle = scheduler.open(1.0)
    assert scheduler.tick(11.0) == [early, middle]
    assert early.state is State.CLOSED
    assert middle.state is State.CLOSED
    assert late.state is State.OPEN
    lag = scheduler.metrics.snapshot().loop_lag
    assert (lag.count, lag.total) == (1, 1.0)  # one tick, 1 s after the earliest deadline
    assert scheduler.next_deadline() == 12.0
    assert len(scheduler) == 1


def test_next_deadline_skips_stale_entries(scheduler: Scheduler) -> None:
    """Superseded deadlines (handshake after the upgrade, heartbeat after a close) are ignored."""
    lc = accept(scheduler, 0.0)
    slot = lc.deadline
    assert slot is not None
    assert scheduler.next_deadline() == slot  # the handshake entry at 10 s is stale
    lc.close(1.0)
    assert scheduler.next_deadline() == 11.0  # slot (6.18 s) and 10 s both stale now


def test_tick_skips_stale_entries_below_now(scheduler: Scheduler) -> None:
    """A stale entry that surfaces inside a tick is skipped, not run."""
    due = scheduler.open(-1.0)  # deadline 9
    gone = scheduler.open(0.0)  # deadline 10, made stale below
    gone.transport_lost(1.0)
    gone.take_actions()
    assert scheduler.tick(10.5) == [due]
    assert gone.take_actions() == []
    assert scheduler.next_deadline() is None


def test_loop_stall_alert(scheduler: Scheduler) -> None:
    """A tick later than the stall threshold queues one loop_stall alert and blames nobody."""
    lc = scheduler.open(0.0)
    assert scheduler.config.effective_stall_threshold == 2.5
    assert scheduler.tick(13.0) == [lc]
    assert lc.state is State.OPEN  # the handshake timeout was not applied
    assert lc.take_actions() == []
    assert lc.deadline == 13.0 + 2.5
    assert scheduler.take_alerts() == [
        Alert(
            AlertKind.LOOP_STALL,
            None,
            3.0,
            "timer fired 3.000 s late; no peer was charged a missed heartbeat",
        )
    ]
    assert scheduler.take_alerts() == []
    assert scheduler.metrics.loop_stalls == 1
    assert scheduler.metrics.snapshot().loop_lag.maximum == 3.0
    # Once the backlog is read, the next on-time tick applies the timeout.
    assert scheduler.tick(15.5) == [lc]
    assert state_of(lc) is State.CLOSED


def test_lag_equal_to_the_threshold_is_not_a_stall(scheduler: Scheduler) -> None:
    """Exactly the stall threshold late is still on time."""
    lc = scheduler.open(0.0)
    scheduler.tick(12.5)
    assert lc.state is State.CLOSED
    assert scheduler.take_alerts() == []
    assert scheduler.metrics.loop_stalls == 0


def test_every_connection_of_a_stalled_tick_is_spared(scheduler: Scheduler) -> None:
    """The stall is judged on the earliest deadline and applies to every connection of the tick."""
    first = scheduler.open(0.0)
    second = scheduler.open(2.0)
    assert scheduler.tick(13.0) == [first, second]  # second is only 1 s late
    assert first.state is State.OPEN
    assert second.state is State.OPEN
    assert len(scheduler.take_alerts()) == 1


def test_every_stalled_tick_counts_one_loop_stall(scheduler: Scheduler) -> None:
    """metrics.loop_stalls counts the stalled ticks, one each, as their alerts do."""
    for start in (0.0, 20.0):
        scheduler.open(start)
        scheduler.tick(start + 13.0)  # 3 s late
    assert scheduler.metrics.loop_stalls == 2
    assert len(scheduler.take_alerts()) == 2


def test_a_stalled_tick_spares_what_it_runs_off_the_grid_too(make_scheduler: MakeScheduler) -> None:
    """A late tick also spares a connection due before now whose grid cell
    lies after now (run off the grid): it was held up by the same stall."""
    scheduler = make_scheduler(timer_slack=2.0)  # stall threshold 2.5
    first = scheduler.open(0.0)  # deadline 10: cell 10
    second = scheduler.open(3.5)  # deadline 13.5: cell 14
    assert scheduler.tick(13.6) == [first, second]  # 3.6 s after cell 10
    assert [first.state, second.state] == [State.OPEN, State.OPEN]
    assert first.deadline == second.deadline == 13.6 + 2.5
    assert len(scheduler.take_alerts()) == 1


def test_begin_drain(scheduler: Scheduler) -> None:
    """begin_drain refuses pending upgrades (503), closes active ones (1001), sets the deadline."""
    before = (scheduler.draining, scheduler.drain_deadline, scheduler.drained)
    assert before == (False, None, False)
    pending = scheduler.open(0.0)
    active = accept(scheduler, 0.0)
    touched = scheduler.begin_drain(1.0)
    assert set(touched) == {pending, active}
    assert scheduler.draining
    assert scheduler.drain_deadline == 11.0
    assert pending.state is State.CLOSED
    assert pending.cause is TerminationCause.SERVER_DRAINING
    assert active.state is State.DRAINING
    assert active.cause is TerminationCause.SERVER_DRAINING
    assert not scheduler.drained
    active.channels_released(1.0, buffered=0)
    assert SendClose(1001, "server shutting down") in active.take_actions()
    active.receive_close(1.2, 1001)
    assert active.take_actions()[-1] == CloseTransport()
    assert scheduler.drained


def test_begin_drain_twice_keeps_the_first_deadline(scheduler: Scheduler) -> None:
    """A second begin_drain does not push the deadline back and touches what is left."""
    lc = accept(scheduler, 0.0)
    scheduler.begin_drain(1.0)
    lc.take_actions()
    assert scheduler.begin_drain(5.0) == [lc]
    assert scheduler.drain_deadline == 11.0
    assert lc.take_actions() == []
    assert lc.deadline == 11.0


def test_new_connections_during_a_drain_are_refused(scheduler: Scheduler) -> None:
    """While draining, open() still works and the upgrade is refused with 503."""
    scheduler.begin_drain(0.0)
    drained = [scheduler.drained]  # nothing was open
    lc = scheduler.open(1.0)
    drained.append(scheduler.drained)
    assert lc.request_upgrade(1.0, origin=None, host="localhost") is False
    drained.append(scheduler.drained)
    assert drained == [True, False, True]


def test_a_drain_caps_the_handshake_deadline(make_scheduler: MakeScheduler) -> None:
    """A connection opened while draining must finish its handshake by the
    drain deadline; one whose handshake timeout ends sooner keeps it."""
    scheduler = make_scheduler(handshake_timeout=4.0, drain_timeout=10.0)
    scheduler.begin_drain(0.0)
    quick = scheduler.open(1.0)
    late = scheduler.open(7.0)
    assert (quick.deadline, late.deadline) == (5.0, 10.0)
    assert scheduler.tick(5.0) == [quick]
    assert scheduler.tick(10.0) == [late]
    assert late.cause is TerminationCause.HANDSHAKE_TIMEOUT


def test_drain_deadline_terminates_stragglers(scheduler: Scheduler) -> None:
    """What has not finished closing at the drain deadline is terminated."""
    lc = accept(scheduler, 0.0)
    scheduler.begin_drain(1.0)
    lc.channels_released(1.0, buffered=0)  # close frame sent, peer never answers
    lc.take_actions()
    assert scheduler.tick(11.0) == [lc]
    assert lc.take_actions() == [
        StateChanged(lc.id, State.DRAINING, State.CLOSED, TerminationCause.SERVER_DRAINING),
        Terminate(TerminationCause.DRAIN_DEADLINE),
    ]
    assert scheduler.drained


def test_connections_is_a_read_only_set_view(scheduler: Scheduler) -> None:
    """connections is a Set of the connections not yet CLOSED."""
    a = scheduler.open(0.0)
    b = accept(scheduler, 0.0)
    view = scheduler.connections
    assert isinstance(view, Set)
    assert set(view) == {a, b}
    b.transport_lost(1.0)
    assert set(scheduler.connections) == {a}
    assert len(scheduler) == 1


def test_timer_entries_are_compacted_when_stale_ones_pile_up(scheduler: Scheduler) -> None:
    """Many connections opened and refused leave no unbounded pile of stale timer entries."""
    for i in range(1000):
        scheduler.open(float(i)).reject_upgrade(float(i), 400, "bad")
    assert len(scheduler) == 0
    assert scheduler._entries <= 65  # compaction keeps entries near 2 × live + 64
    assert scheduler.next_deadline() is None


def test_compaction_keeps_live_deadlines(scheduler: Scheduler) -> None:
    """Compaction drops only stale entries: live connections still fire on time."""
    live = [scheduler.open(0.0) for _ in range(10)]
    for i in range(500):
        scheduler.open(1.0).transport_lost(1.0 + i / 1000)
    assert scheduler._entries <= 2 * len(live) + 65
    assert scheduler.next_deadline() == 10.0
    assert scheduler.tick(10.0) == live
    assert all(lc.state is State.CLOSED for lc in live)


def entries_held(scheduler: Scheduler) -> int:
    """The timer entries the scheduler's cells hold, stale ones included."""
    return sum(len(cell.members) for cell in scheduler._cells.values())


def test_cells_are_rebuilt_exactly_when_entries_pass_twice_the_live_ones_plus_64(
    scheduler: Scheduler,
) -> None:
    """Each new deadline adds one timer entry, until the entries would pass
    2 × live + 64 (docs/theory.md): then the cells are rebuilt and hold one
    entry per live connection. This holds at every rebuild, not only the first."""
    live = [scheduler.open(float(i)) for i in range(5)]  # five cells
    assert entries_held(scheduler) == len(live)
    rebuilds = 0
    for _ in range(300):
        before = entries_held(scheduler)
        churn = scheduler.open(5.0)  # files one deadline
        if before + 1 > 2 * len(scheduler) + 64:
            assert entries_held(scheduler) == len(scheduler)
            rebuilds += 1
        else:
            assert entries_held(scheduler) == before + 1
        churn.transport_lost(5.0)  # its entry goes stale
    assert rebuilds >= 3


def test_compaction_counts_a_connection_re_armed_within_its_cell_once(
    make_scheduler: MakeScheduler,
) -> None:
    """A connection whose deadline moved within its grid cell is one live
    entry there after compaction: once it moves on, that cell is empty, and
    the next wake-up and deadline are the connection's new ones."""
    scheduler = make_scheduler(timer_slack=2.0)
    lc = scheduler.open(0.0)  # handshake deadline 10: cell 10
    assert lc.request_upgrade(3.0, origin=None, host="localhost")
    assert lc.deadline == pytest.approx(3.0 + 10 * GOLDEN)  # 9.18: cell 10 too
    for _ in range(100):  # churn until the cells are rebuilt
        scheduler.open(3.0).reject_upgrade(3.0, 400, "bad")
    lc.close(4.0)  # close deadline 14: cell 14
    assert scheduler.next_wakeup() == 14.0
    assert scheduler.next_deadline() == 14.0


def test_a_limited_tick_keeps_the_rest_of_a_cell_due(make_scheduler: MakeScheduler) -> None:
    """tick(now, 1) runs one connection of a cell of three; the others stay
    due and run one per call, in order, and then nothing is left."""
    scheduler = make_scheduler(timer_slack=2.0)
    a, b, c = (scheduler.open(t) for t in (0.1, 0.2, 0.3))  # deadlines 10.1-10.3: cell 12
    assert scheduler.tick(12.0, limit=1) == [a]
    assert scheduler.next_wakeup() == 12.0
    assert scheduler.next_deadline() == b.deadline
    assert scheduler.tick(12.0, limit=1) == [b]
    assert scheduler.next_deadline() == c.deadline
    assert scheduler.tick(12.0, limit=1) == [c]
    assert scheduler.next_wakeup() is None


def test_a_limited_tick_drops_a_cell_left_with_stale_entries_only(
    make_scheduler: MakeScheduler,
) -> None:
    """When a limited tick leaves only stale entries in the cell it split
    (connections gone since), no deadline is left there: the next wake-up and
    deadline are the next live connection's."""
    scheduler = make_scheduler(timer_slack=2.0)
    due, gone = scheduler.open(0.1), scheduler.open(0.2)  # both in cell 12
    gone.transport_lost(0.3)
    later = scheduler.open(5.0)  # deadline 15: cell 16
    assert scheduler.tick(12.0, limit=1) == [due]
    assert scheduler.next_wakeup() == 16.0
    assert scheduler.next_deadline() == later.deadline == 15.0


def test_a_tick_limit_counts_connections_run_not_stale_entries(
    make_scheduler: MakeScheduler,
) -> None:
    """``limit`` is how many connections a tick runs: an entry left in a cell
    by a connection that has since closed is dropped on the way and spends
    none of it, on the grid as off it."""
    for now in (12.0, 11.0):  # at the cell's wake-up, and off the grid before it
        scheduler = make_scheduler(timer_slack=2.0)
        gone, a, b = scheduler.open(0.1), scheduler.open(0.2), scheduler.open(0.3)  # cell 12
        gone.transport_lost(0.4)
        assert scheduler.tick(now, limit=2) == [a, b]
        assert scheduler.next_wakeup() is None


#: A driver's and its peers' doings: (what, how many or which, or tenths of a second).
CHURN = st.lists(
    st.tuples(
        st.sampled_from(["open", "refuse", "upgrade", "close", "lose", "wait", "drain"]),
        st.integers(0, 80),
    ),
    min_size=10,
    max_size=60,
)


@given(slack=st.sampled_from([0.0, 0.05, 2.0]), doings=CHURN)
@example(  # a re-arm inside a tick rebuilds every cell (found by Hypothesis)
    slack=0.0,
    doings=[
        *[("refuse", 0)] * 2,
        *[("open", 0)] * 4,
        ("refuse", 25),
        ("upgrade", 0),
        ("upgrade", 1),
        ("close", 0),
    ],
)
@settings(max_examples=examples(100), deadline=None)
def test_the_next_deadline_is_the_earliest_live_one(
    slack: float, doings: list[tuple[str, int]]
) -> None:
    """Whatever connections come, move their deadlines and go (through rebuilds
    of the cells and limited ticks too), and then as the timer runs until all
    have ended, next_deadline is the earliest deadline of a live connection
    and next_wakeup lies on it or within one slack after it."""
    config = Config(heartbeat_interval=10.0, allow_no_origin=True, timer_slack=slack)
    scheduler = Scheduler(config, seeded_entropy(1))
    now = 0.0
    kept: list[ConnectionLifecycle] = []

    def check() -> float | None:
        # Its tally of timer entries, which decides when to rebuild, is true.
        assert scheduler._entries == entries_held(scheduler)
        deadlines = [lc.deadline for lc in scheduler.connections if lc.deadline is not None]
        earliest = min(deadlines, default=None)
        assert scheduler.next_deadline() == earliest
        wakeup = scheduler.next_wakeup()
        if earliest is None:
            assert wakeup is None
        else:
            assert wakeup is not None
            assert earliest <= wakeup <= earliest + slack + 1e-9
        return wakeup

    for what, n in doings:
        some = kept[n % len(kept)] if kept else None
        if what == "open":
            kept.append(scheduler.open(now))
        elif what == "refuse":  # 40 to 120 stale entries: the cells get rebuilt
            for _ in range(40 + n):
                scheduler.open(now).reject_upgrade(now, 400, "bad")
        elif what == "upgrade" and some is not None and state_of(some) is State.OPEN:
            some.request_upgrade(now, origin=None, host="localhost")
        elif what == "close" and some is not None and state_of(some) is State.ACTIVE:
            some.close(now)
        elif what == "lose" and some is not None and state_of(some) is not State.CLOSED:
            some.transport_lost(now)
        elif what == "wait":  # a driver's tick, maybe limited, called while due
            now += n / 10
            limit = n % 4 + 1
            for _ in range(1000):  # each call runs or drops something: it ends
                assert len(scheduler.tick(now, limit)) <= limit
                if (wakeup := scheduler.next_wakeup()) is None or wakeup > now:
                    break
            scheduler.tick(now)  # and at last without a limit: all due have run
            assert all(lc.deadline is None or lc.deadline > now for lc in scheduler.connections)
        elif what == "drain":
            scheduler.begin_drain(now)
        check()
    while (wakeup := check()) is not None:  # nobody answers: all end in time
        now = max(now, wakeup)
        assert scheduler.tick(now), "a wake-up with nothing due"


@pytest.mark.parametrize("now", [0.0, 0.1, 3.7, 9.99, 100.0, 12345.678, 1e6 + 0.5])
def test_first_heartbeat_slot_lies_within_one_interval(scheduler: Scheduler, now: float) -> None:
    """Each accepted connection's first heartbeat is in (now, now + interval]."""
    for _ in range(20):
        lc = accept(scheduler, now)
        assert lc.deadline is not None
        assert now < lc.deadline <= now + 10.0


def test_first_heartbeat_slot_on_the_phase_itself_is_one_interval_away(
    scheduler: Scheduler,
) -> None:
    """Accepted exactly at its phase, a connection waits a full interval, not zero.
    (Phases count from the first accepted connection: here time 0.)"""
    first = scheduler.open(0.0)
    first.request_upgrade(0.0, origin=None, host="localhost")
    assert first.deadline == (1 * GOLDEN) % 1.0 * 10.0
    phase = (2 * GOLDEN) % 1.0 * 10.0
    lc = scheduler.open(0.0)
    lc.request_upgrade(phase, origin=None, host="localhost")
    assert lc.deadline == phase + 10.0


@given(
    interval=st.floats(0.1, 100.0),
    epoch=st.floats(0.0, 1e6),
    k=st.integers(2, 200),
)
@settings(max_examples=examples(100))
def test_a_connection_accepted_at_its_phase_waits_a_full_interval(
    interval: float, epoch: float, k: int
) -> None:
    """The k-th accepted connection, accepted exactly at its phase
    epoch + frac(k·φ)·interval, gets its first probe one full interval later."""
    scheduler = Scheduler(
        Config(heartbeat_interval=interval, allow_no_origin=True), seeded_entropy(1)
    )
    for _ in range(k - 1):
        accept(scheduler, epoch)  # the first one sets the epoch
    phase = epoch + (k * GOLDEN) % 1.0 * interval
    lc = accept(scheduler, phase)
    assert lc.deadline == phase + interval


def test_phases_count_from_the_first_connection_not_the_clock_zero(
    scheduler: Scheduler,
) -> None:
    """The same arrivals get the same slots, relative to the first one,
    whatever the clock reads; the first probe is never right after accept."""
    late = 123_456.0
    slots = [accept(scheduler, late).deadline for _ in range(300)]
    assert all(slot is not None and slot - late >= 0.0019 * 10.0 for slot in slots)


def test_first_heartbeats_are_spread_over_the_interval(scheduler: Scheduler) -> None:
    """Ten connections accepted at once get one first ping in each tenth of the interval."""
    slots = [accept(scheduler, 0.0).deadline for _ in range(10)]
    assert sorted(int(slot) for slot in slots if slot is not None) == list(range(10))


def test_each_connection_keeps_its_phase(scheduler: Scheduler) -> None:
    """Slots repeat every interval at the connection's own phase."""
    lc = accept(scheduler, 0.0)
    first = lc.deadline
    assert first is not None
    for k in range(1, 5):
        scheduler.tick(first + 10.0 * (k - 1))
        lc.receive_pong(first + 10.0 * (k - 1))  # keep it alive
        assert lc.deadline == pytest.approx(first + 10.0 * k)
    assert lc.state is State.ACTIVE


def test_a_given_metrics_object_is_used() -> None:
    """Several schedulers may share one Metrics."""
    metrics = Metrics()
    config = Config(allow_no_origin=True)
    Scheduler(config, seeded_entropy(1), metrics=metrics).open(0.0)
    other = Scheduler(config, seeded_entropy(2), metrics=metrics)
    other.open(0.0)
    assert other.metrics is metrics
    assert metrics.connections[State.OPEN] == 2


@pytest.mark.parametrize(
    ("mode", "protocol", "application"),
    [
        (HeartbeatMode.PROTOCOL, True, False),
        (HeartbeatMode.APPLICATION, False, True),
        (HeartbeatMode.BOTH, True, True),
    ],
)
def test_heartbeat_flags_follow_the_mode(
    make_scheduler: MakeScheduler, mode: HeartbeatMode, protocol: bool, application: bool
) -> None:
    """protocol_heartbeat / app_heartbeat say which probes the mode sends."""
    scheduler = make_scheduler(heartbeat_mode=mode)
    assert scheduler.protocol_heartbeat is protocol
    assert scheduler.app_heartbeat is application
