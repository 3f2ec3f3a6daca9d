"""Timer slack: deadlines share wake-ups on a small grid."""

from __future__ import annotations

import pytest

from wslifecycle import Config, ConfigError, Scheduler
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


def test_a_wakeup_is_never_before_its_deadline() -> None:
    """Rounding up to the grid never wakes the timer before the deadline,
    whatever the float arithmetic does."""
    scheduler = Scheduler(
        Config(heartbeat_interval=1.0, allow_no_origin=True, timer_slack=0.1), seeded_entropy(1)
    )
    for deadline in (0.3, 0.7000000000000001, 1e6 + 0.1, 12345.678):
        assert scheduler._wakeup(deadline) >= deadline
        assert scheduler._wakeup(deadline) < deadline + 0.1 + 1e-9


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
