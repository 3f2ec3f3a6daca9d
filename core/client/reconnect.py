"""The retry count across connections: :class:`Reconnector`.

It remembers how many retries in a row have failed and when the current
connection came up, and answers each ending with :class:`Retry` (how long
to wait) or :class:`Stop` (why not), by the :class:`ReconnectPolicy`.
"""

from __future__ import annotations

import dataclasses

from .outcome import Outcome
from .policy import ReconnectPolicy

__all__ = ["Reconnector", "Retry", "Stop"]


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Connect again after ``delay`` seconds; this is retry ``attempt`` (0 first)."""

    delay: float
    attempt: int
    outcome: Outcome


@dataclasses.dataclass(frozen=True, slots=True)
class Stop:
    """Do not reconnect: ``reason`` says why, ``outcome`` how it ended."""

    reason: str
    outcome: Outcome


class Reconnector:
    """Counts retries for one client (see the module docstring)."""

    __slots__ = ("_connected_at", "attempt", "policy")

    def __init__(self, policy: ReconnectPolicy) -> None:
        self.policy = policy
        #: Retries in a row since the last connection that stayed up.
        self.attempt = 0
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        """The handshake succeeded at ``now``."""
        self._connected_at = now

    def ended(self, now: float, outcome: Outcome, draw: float) -> Retry | Stop:
        """A connection (or an attempt at one) ended at ``now``. ``draw`` is
        uniform in [0, 1)."""
        policy = self.policy
        connected_at = self._connected_at
        self._connected_at = None
        if connected_at is not None and now - connected_at >= policy.reset_after:
            self.attempt = 0
        if not policy.should_reconnect(outcome):
            return Stop(f"not reconnecting after {outcome}", outcome)
        attempt = self.attempt
        if policy.max_attempts is not None and attempt >= policy.max_attempts:
            return Stop(f"gave up after {attempt} retries in a row; last: {outcome}", outcome)
        self.attempt = attempt + 1
        return Retry(policy.delay(attempt, draw, outcome.retry_after), attempt, outcome)
