"""Timer slack: deadlines share wake-ups on a small grid."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from wslifecycle import Config, ConfigError, Scheduler, State
from wslifecycle.testing import seeded_entropy


def accepted(scheduler: Scheduler, now: float) -> None:
    lifecycle = scheduler.open(now)
    lifecycle.request_upgrade(now, origin=None, host="localhost")
    lifecycle.take_actions()


def test_a_thousand_spread_connections_cost_at_most_interval_over_slack_wakeups() -> None:
    """1,000 connections with their own phases wake the timer at most
    interval / slack times per interval, and each wake-up runs everything due."""
    config = Config(heartbeat_interval=1.0, allow_no_origin=True)  # slack 50 ms
    scheduler = Scheduler(config, seeded_entropy(3))
    for _ in range(1000):
        accepted(scheduler, 0.0)
    wakeups = 0
    pinged = 0
    while pinged < 1000:  # the first slot of every connection is in (0, 1]
        wakeup = scheduler.next_wakeup()
        assert wakeup is not None
        assert wakeup <= 1.0 + config.effective_timer_slack
        ran = scheduler.tick(wakeup)
        assert ran, "a wake-up with nothing due"
        pinged += len(ran)
        wakeups += 1
    assert pinged == 1000
    assert wakeups <= 1.0 / config.effective_timer_slack + 1
    assert scheduler.take_alerts() == []  # on the grid, no tick counts as late


#: Timer slacks whose multiples are not exact in binary floating point.
SLACKS = st.sampled_from([0.1, 0.05, 0.02, 0.3, 0.07])


def near(value: float, ulps: int) -> float:
    """``value`` moved by ``ulps`` units in the last place."""
    for _ in range(abs(ulps)):
        value = math.nextafter(value, math.inf if ulps > 0 else -math.inf)
    return value


def handshaking(slack: float, deadline: float) -> Scheduler:
    """A scheduler whose connections opened at time 0 are due at exactly ``deadline``."""
    config = Config(
        heartbeat_interval=10.0, allow_no_origin=True, timer_slack=slack, handshake_timeout=deadline
    )
    return Scheduler(config, seeded_entropy(1))


@example(slack=0.1, k=9, ulps=1)  # 9 × 0.1 rounds to 0.9, below the deadline
@example(slack=0.1, k=35, ulps=1)
@given(slack=SLACKS, k=st.integers(1, 10**6), ulps=st.integers(-2, 2))
@settings(max_examples=examples(100))
def test_a_wakeup_is_never_before_its_deadline(slack: float, k: int, ulps: int) -> None:
    """A deadline on or beside a grid point wakes the timer at or after it and
    less than one slack later, whatever the float arithmetic of the grid does."""
    deadline = near(k * slack, ulps)
    scheduler = handshaking(slack, deadline)
    scheduler.open(0.0)
    wakeup = scheduler.next_wakeup()
    assert wakeup is not None
    assert deadline <= wakeup < deadline + slack + 1e-9


@example(slack=0.1, k=2, earlier=False)  # 0.2000…04: its cell is 0.3000…04, one slack above
@example(slack=0.1, k=2, earlier=True)
@given(slack=SLACKS, k=st.integers(1, 10**6), earlier=st.booleans())
@settings(max_examples=examples(100))
def test_a_tick_at_a_deadline_runs_it(slack: float, k: int, earlier: bool) -> None:
    """A tick at exactly a connection's deadline runs it, also when the deadline
    is one slack below a grid point and float rounding files it in that point's
    cell, and also when an earlier cell is due in the same tick."""
    deadline = (k + 1) * slack - slack
    scheduler = handshaking(slack, deadline)
    due = [scheduler.open(-3 * slack)] if earlier else []  # due three slacks sooner
    due.append(scheduler.open(0.0))
    assert scheduler.next_deadline() == min(lc.deadline for lc in due if lc.deadline is not None)
    assert scheduler.tick(deadline) == due
    assert all(lc.state is State.CLOSED for lc in due)
    assert scheduler.next_wakeup() is None


def test_zero_slack_wakes_at_the_deadline() -> None:
    """timer_slack=0 turns coalescing off."""
    scheduler = Scheduler(
        Config(heartbeat_interval=1.0, allow_no_origin=True, timer_slack=0), seeded_entropy(1)
    )
    accepted(scheduler, 0.0)
    assert scheduler.next_wakeup() == scheduler.next_deadline()
    assert Scheduler(Config(), seeded_entropy(1)).next_wakeup() is None


@pytest.mark.parametrize(
    ("slack", "reason"),
    [(-1.0, "0 or more"), (float("nan"), "0 or more"), (True, "number"), (7.5, "stall threshold")],
)
def test_a_bad_timer_slack_is_refused(slack: object, reason: str) -> None:
    """The slack is a finite number of seconds below the stall threshold."""
    with pytest.raises(ConfigError, match=reason) as raised:
        Config(timer_slack=slack)  # type: ignore[arg-type]
    assert raised.value.field == "timer_slack"
    assert Config().effective_timer_slack == 0.05
    assert Config(heartbeat_interval=0.4).effective_timer_slack == 0.02


def test_a_tick_with_a_limit_runs_that_many_and_leaves_the_rest_due() -> None:
    """tick(now, limit) runs at most ``limit`` due connections, splitting a
    cell if it must; the rest stay due and run on the next calls."""
    config = Config(
        heartbeat_interval=1.0, allow_no_origin=True, stall_threshold=0.9, timer_slack=0.5
    )
    scheduler = Scheduler(config, seeded_entropy(3))
    for _ in range(100):
        accepted(scheduler, 0.0)  # first slots in (0, 1]: cells 0.5 and 1.0
    batches = []
    while (due := scheduler.next_wakeup()) is not None and due <= 1.0:
        batches.append(len(scheduler.tick(1.0, limit=30)))
    assert batches == [30, 30, 30, 10]
    assert scheduler.next_wakeup() == 1.5  # every one of them is now a slot later


def test_a_limited_tick_off_the_grid_runs_that_many() -> None:
    """A tick between grid points runs the deadlines already passed in the
    next cell, but no more than its limit; the rest run at the cell's wake-up."""
    scheduler = Scheduler(
        Config(heartbeat_interval=10.0, allow_no_origin=True, timer_slack=2.0), seeded_entropy(1)
    )
    first, second, third = (scheduler.open(start) for start in (3.5, 3.6, 3.7))  # all in cell 14
    assert scheduler.tick(13.8, limit=2) == [first, second]
    assert scheduler.next_wakeup() == 14.0
    assert scheduler.tick(14.0) == [third]
