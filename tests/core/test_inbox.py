"""The inbox on its own: a FIFO that says when to pause and when to resume."""

from __future__ import annotations

import pytest

from wslifecycle.inbox import Inbox


def test_put_says_pause_exactly_when_the_high_mark_is_reached() -> None:
    """put answers True on the message that makes the queue reach the high
    mark, False before and after it."""
    inbox = Inbox(high_water=3, low_water=1)
    assert [inbox.put(m) for m in ("a", "b", "c", "d")] == [False, False, True, False]
    assert len(inbox) == 4


def test_take_is_first_in_first_out_and_caught_up_at_the_low_mark() -> None:
    """Messages come out oldest first; ``caught_up`` holds at or below the low mark."""
    inbox = Inbox(high_water=3, low_water=1)
    for message in ("a", b"b", "c"):
        inbox.put(message)
    caught_up = []
    taken = []
    for _ in range(4):
        caught_up.append(inbox.caught_up)
        taken.append(inbox.take())
    assert taken == ["a", b"b", "c", None]
    assert caught_up == [False, False, True, True]


def test_clear_drops_everything_and_counts_it() -> None:
    """clear empties the queue and says how many messages were dropped."""
    inbox = Inbox(high_water=2, low_water=0)
    inbox.put("a")
    inbox.put("b")
    assert inbox.clear() == 2
    assert (len(inbox), inbox.caught_up, inbox.take()) == (0, True, None)


@pytest.mark.parametrize(("high", "low"), [(3, 3), (3, 4), (3, -1), (0, 0)])
def test_the_marks_must_leave_room_between_them(high: int, low: int) -> None:
    """0 ≤ low < high, or the inbox would pause and never resume."""
    with pytest.raises(ValueError, match="low_water < high_water"):
        Inbox(high_water=high, low_water=low)
