"""The wire's inbox: messages wait for the handler in order, and a handler
that falls behind pauses reading (high mark) until it catches up (low mark).

All on a fake clock: no sockets, no sleeps. The marks are small (3 and 1) so
every edge is a few frames away."""

from __future__ import annotations

from tests.wire.helpers import (
    close_frame,
    config,
    frame,
    open_wire,
    parse_server_frames,
    take_messages,
    text,
)
from wslifecycle import State
from wslifecycle.testing import FakeClock
from wslifecycle.wire import ServerConnection

HIGH, LOW = 3, 1


def small_inbox() -> tuple[ServerConnection, FakeClock]:
    """An ACTIVE wire whose inbox pauses reading at 3 messages and resumes at 1."""
    wire = open_wire(config(inbox_high_water=HIGH, inbox_low_water=LOW))
    assert wire.state is State.ACTIVE
    return wire, FakeClock(1.0)


def paused(wire: ServerConnection) -> bool:
    """Whether the driver must stop reading (a call, so mypy does not narrow
    the property between inputs)."""
    return wire.reading_paused


def receive(wire: ServerConnection, clock: FakeClock, *messages: str) -> None:
    """The client's text messages arrive, one read each, a little later."""
    for message in messages:
        wire.receive_data(text(message), clock.advance(0.1))


def test_messages_come_out_in_the_order_they_arrived() -> None:
    """take_message returns the messages oldest first, text and binary alike,
    then None once the inbox is empty."""
    wire, clock = small_inbox()
    assert wire.take_message(clock.now) is None  # nothing yet
    wire.receive_data(text("one"), clock.advance(0.1))
    wire.receive_data(frame(0x2, b"\x02"), clock.advance(0.1))
    assert wire.messages_waiting == 2
    assert wire.take_message(clock.advance(0.1)) == "one"
    assert wire.messages_waiting == 1
    wire.receive_data(text("three"), clock.advance(0.1))
    assert take_messages(wire, clock.advance(0.1)) == [b"\x02", "three"]
    assert wire.messages_waiting == 0
    assert wire.take_message(clock.now) is None


def test_reading_pauses_exactly_at_the_high_mark() -> None:
    """Reading pauses when the third message (inbox_high_water) is queued, not before."""
    wire, clock = small_inbox()
    receive(wire, clock, "m1", "m2")
    assert wire.messages_waiting == HIGH - 1
    assert not paused(wire)
    receive(wire, clock, "m3")
    assert wire.messages_waiting == HIGH
    assert paused(wire)
    assert wire.state is State.ACTIVE


def test_one_read_past_the_high_mark_is_kept_and_paused() -> None:
    """A single read holding more than inbox_high_water messages queues them
    all (nothing read is lost) and leaves reading paused."""
    wire, clock = small_inbox()
    wire.receive_data(b"".join(text(f"m{i}") for i in range(5)), clock.advance(0.1))
    assert wire.messages_waiting == 5
    assert paused(wire)
    assert take_messages(wire, clock.advance(0.1)) == [f"m{i}" for i in range(5)]
    assert not paused(wire)


def test_reading_resumes_only_at_the_low_mark() -> None:
    """Taking messages resumes reading only once at most inbox_low_water
    are left, and reaching the high mark again pauses it again."""
    wire, clock = small_inbox()
    receive(wire, clock, "m1", "m2", "m3")
    assert paused(wire)
    assert wire.take_message(clock.advance(0.1)) == "m1"
    assert wire.messages_waiting == LOW + 1
    assert paused(wire)  # between the marks: still paused
    assert wire.take_message(clock.advance(0.1)) == "m2"
    assert wire.messages_waiting == LOW
    assert not paused(wire)
    receive(wire, clock, "m4")
    assert not paused(wire)  # two waiting: below the high mark again
    receive(wire, clock, "m5")
    assert paused(wire)
    assert take_messages(wire, clock.advance(0.1)) == ["m3", "m4", "m5"]
    assert not paused(wire)


def test_drop_messages_empties_the_inbox_and_resumes_reading() -> None:
    """drop_messages forgets every queued message, says how many, and resumes reading."""
    wire, clock = small_inbox()
    receive(wire, clock, "m1", "m2", "m3")
    assert paused(wire)
    assert wire.drop_messages(clock.advance(0.1)) == HIGH
    assert wire.messages_waiting == 0
    assert not paused(wire)
    assert wire.take_message(clock.now) is None
    receive(wire, clock, "m4")
    assert take_messages(wire, clock.advance(0.1)) == ["m4"]
    assert wire.drop_messages(clock.advance(0.1)) == 0


def test_a_peer_close_while_paused_ends_the_pause() -> None:
    """A connection paused on a full inbox that starts closing (the peer's
    close frame) is no longer paused: its closing handshake must be read."""
    wire, clock = small_inbox()
    receive(wire, clock, "m1", "m2", "m3")
    assert paused(wire)
    wire.receive_data(close_frame(1000, b"bye"), clock.advance(0.1))
    assert wire.state is not State.ACTIVE
    assert not paused(wire)
    closes = [f for f in parse_server_frames(wire.data_to_send()) if f.opcode == 0x8]
    assert [f.close_code for f in closes] == [1000]  # echoed


def test_a_full_inbox_reached_while_closing_does_not_pause() -> None:
    """Messages read together with the peer's close frame fill the inbox to
    the high mark, but the connection is no longer ACTIVE, so reading stays on."""
    wire, clock = small_inbox()
    wire.receive_data(text("m1") + text("m2") + text("m3") + close_frame(1000), clock.advance(0.1))
    assert wire.messages_waiting == HIGH
    assert wire.state is not State.ACTIVE
    assert not paused(wire)


def test_messages_queued_before_a_close_can_still_be_taken() -> None:
    """Messages that arrived before the peer's close frame are kept for the
    handler, in order, even after the connection is CLOSED; later ones are not."""
    wire, clock = small_inbox()
    receive(wire, clock, "m1", "m2")
    wire.receive_data(close_frame(1000) + text("after close"), clock.advance(0.1))
    wire.data_to_send()
    assert wire.state is State.CLOSED  # echoed: the closing handshake is complete
    assert wire.messages_waiting == 2
    assert take_messages(wire, clock.advance(0.1)) == ["m1", "m2"]
    assert wire.take_message(clock.now) is None
    assert not paused(wire)


def test_a_handler_that_raises_closes_with_1011_through_the_wire() -> None:
    """handler_failed is the wire's input: the 1011 close frame is written at
    once; a second report, once closing, adds nothing."""
    wire, clock = small_inbox()
    wire.handler_failed(clock.advance(0.1), "ValueError: bad")
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames if f.opcode == 0x8] == [1011]
    wire.handler_failed(clock.advance(0.1), "ValueError: again")
    wire.handler_returned(clock.advance(0.1))
    assert wire.data_to_send() == b""


def test_a_handler_that_returns_closes_with_1000_through_the_wire() -> None:
    """handler_returned is the wire's input: the 1000 close frame is written at once."""
    wire, clock = small_inbox()
    assert wire.latency is None  # no pong yet
    wire.handler_returned(clock.advance(0.1))
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames if f.opcode == 0x8] == [1000]
