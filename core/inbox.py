"""Messages waiting for the application handler: ``Inbox``.

The backpressure rule every driver shares, in one place: a handler that
falls ``inbox_high_water`` messages behind makes the connection stop reading
its socket (so a fast peer cannot grow the queue without bound, and its
unread pongs blame nobody); reading resumes once the handler has taken the
queue down to ``inbox_low_water``. Two marks, not one, so a handler working
at the edge does not flip reading on and off for every message.

The inbox only counts and answers; the wire turns its answers into the
lifecycle's ``pause_reading`` / ``resume_reading`` inputs.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Inbox"]


class Inbox:
    """A FIFO of complete messages with a high and a low mark (counts, not bytes)."""

    __slots__ = ("_messages", "high_water", "low_water")

    def __init__(self, high_water: int, low_water: int) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(
                f"need 0 ≤ low_water < high_water, got low {low_water}, high {high_water}"
            )
        self.high_water = high_water
        self.low_water = low_water
        self._messages: deque[str | bytes] = deque()

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: str | bytes) -> bool:
        """Queue ``message``; True exactly when the queue has just reached the
        high mark (the moment to pause reading)."""
        messages = self._messages
        messages.append(message)
        return len(messages) == self.high_water

    def take(self) -> str | bytes | None:
        """The oldest message (None when empty)."""
        messages = self._messages
        return messages.popleft() if messages else None

    @property
    def caught_up(self) -> bool:
        """At or below the low mark: the handler has caught up, reading may resume."""
        return len(self._messages) <= self.low_water

    def clear(self) -> int:
        """Drop every queued message; how many there were."""
        count = len(self._messages)
        self._messages.clear()
        return count
