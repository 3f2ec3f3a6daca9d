"""Shared fixtures for the core unit tests: a scheduler on a small interval
with seeded entropy, and a connection already upgraded on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from wslifecycle import Config, ConnectionLifecycle, Scheduler
from wslifecycle.testing import seeded_entropy

#: ``make_scheduler(**config_overrides)``: interval 10 s, no-Origin clients allowed.
MakeScheduler = Callable[..., Scheduler]


@pytest.fixture
def make_scheduler() -> MakeScheduler:
    """A factory of schedulers whose Config starts from interval 10 s and
    ``allow_no_origin=True``; keyword arguments override Config fields."""

    def make(**overrides: Any) -> Scheduler:
        fields: dict[str, Any] = {"heartbeat_interval": 10.0, "allow_no_origin": True}
        fields.update(overrides)
        return Scheduler(Config(**fields), seeded_entropy(1))

    return make


@pytest.fixture
def scheduler(make_scheduler: MakeScheduler) -> Scheduler:
    """The default test scheduler (interval 10 s, 2 missed pongs, guard 1 MiB)."""
    return make_scheduler()


@pytest.fixture
def active(scheduler: Scheduler) -> ConnectionLifecycle:
    """A connection opened and upgraded at t=0, its actions already taken."""
    lifecycle = scheduler.open(0.0)
    assert lifecycle.request_upgrade(0.0, origin=None, host="localhost")
    lifecycle.take_actions()
    return lifecycle
