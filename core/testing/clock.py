"""A clock that only moves when a test says so."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic seconds under test control; call it to read the time."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (≥ 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self.now += seconds
        return self.now

    def advance_to(self, when: float) -> float:
        """Move forward to ``when``; a time in the past is an error."""
        if when < self.now:
            raise ValueError(f"a monotonic clock cannot go back from {self.now} to {when}")
        self.now = when
        return self.now
