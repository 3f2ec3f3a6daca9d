"""The heartbeat's two fast lanes give the same result as the general path.

* A timer whose only work for a wire is a ping hands the driver the frame
  (``TimerWork.pings``, one frame per tick) instead of queuing actions.
* A read that is exactly one pong frame is taken without building a frame
  object, and ``receive_data`` says no flush is needed (returns False).

Each lane is compared with the general path on a twin hub fed the same
inputs: same bytes out, same state, same counters.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tests.wire.helpers import connect, frame, parse_server_frames, text
from wslifecycle import Config, HeartbeatMode, State
from wslifecycle.hub import Hub
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import ServerConnection

PONG, PING = 0xA, 0x9
FIRST = 6.2  # the first wire's first ping (seeded entropy: its phase)


def make_hub(**changes: object) -> Hub:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 10.0}
    values.update(changes)
    return Hub(Config(**values), seeded_entropy(5))  # type: ignore[arg-type]


def test_every_wire_pinged_in_one_tick_shares_one_frame() -> None:
    hub = make_hub(timer_slack=5.0, stall_threshold=9.0)  # one cell holds them all
    wires = [connect(hub) for _ in range(50)]
    work = hub.handle_timer(10.0)  # every phase falls within the first interval
    assert sorted(id(w) for w, _ in work.pings) == sorted(id(w) for w in wires)
    frames = {id(f) for _, f in work.pings}
    assert len(frames) == 1  # built once per tick
    (ping,) = parse_server_frames(work.pings[0][1])
    assert ping.opcode == PING
    assert len(ping.payload) == 8
    assert all(w.data_to_send() == b"" and w.take_actions() == [] for w in wires)


def test_a_wire_with_other_work_is_flushed_not_laned() -> None:
    """Bytes already waiting (a message the handler sent), or any action
    beside the ping (the application heartbeat's text), take the general
    path, so the order of bytes is kept."""
    hub = make_hub()
    busy = connect(hub)
    busy.send("first", 1.0)  # not yet written when the timer fires
    app = make_hub(heartbeat_mode=HeartbeatMode.APPLICATION)
    beat = connect(app)
    work = hub.handle_timer(FIRST)
    assert work.pings == []
    assert work.flush == [busy]
    frames = parse_server_frames(busy.data_to_send())
    assert [f.opcode for f in frames] == [0x1, PING]  # the message first, then the ping
    app_work = app.handle_timer(FIRST)
    assert app_work.pings == []
    assert app_work.flush == [beat]
    assert '"heartbeat"' in parse_server_frames(beat.data_to_send())[0].payload.decode()


def test_the_lanes_frame_can_be_queued_on_the_wire() -> None:
    """A driver without a socket write of its own queues the lane's frame."""
    hub = make_hub()
    wire = connect(hub)
    [(pinged, ping)] = hub.handle_timer(FIRST).pings
    pinged.queue_frame(ping)
    assert wire.data_to_send() == ping


def pong_for(hub: Hub, wire: ServerConnection) -> bytes:
    """The pong answering the wire's first ping, sent at ``FIRST``."""
    [(pinged, ping)] = hub.handle_timer(FIRST).pings
    assert pinged is wire
    return frame(PONG, parse_server_frames(ping)[0].payload)


@settings(max_examples=examples(100), deadline=None)
@given(
    rtt=st.floats(min_value=0.0, max_value=5.0),
    extra=st.sampled_from(["none", "second pong", "text", "ping", "stale pong"]),
)
def test_a_lone_pong_is_the_general_path_without_a_flush(rtt: float, extra: str) -> None:
    """The same pong read alone (lane) or glued to another frame (general
    path) leaves the same latency, counters and missed count."""
    results = []
    for glued in (False, True):
        hub = make_hub()
        wire = connect(hub)
        pong = pong_for(hub, wire)
        tail = {
            "none": b"",
            "second pong": frame(PONG, b"other"),
            "text": text("hi"),
            "ping": frame(PING, b"p"),
            "stale pong": frame(PONG, b"stale!!!"),
        }[extra]
        if glued:
            assert wire.receive_data(pong + tail, FIRST + rtt) is bool(tail)
        else:
            assert wire.receive_data(pong, FIRST + rtt) is False
            wire.receive_data(tail, FIRST + rtt)
        metrics = hub.scheduler.metrics
        results.append(
            (
                wire.latency,
                wire.lifecycle.missed_pongs,
                metrics.pongs_received,
                metrics.snapshot().rtt,
                wire.data_to_send(),
                [type(a) for a in wire.take_actions()],
                wire.messages_waiting,
            )
        )
    assert results[0] == results[1]
    assert results[0][0] == pytest.approx(rtt)


def test_what_is_not_a_lone_pong_takes_the_general_path() -> None:
    hub = make_hub()
    wire = connect(hub)
    pong = pong_for(hub, wire)
    unmasked = frame(PONG, b"abc", mask=False)  # a client must mask: 1002
    assert wire.receive_data(pong[:3], FIRST + 0.1)  # half a pong: held for the rest
    assert wire.receive_data(pong[3:], FIRST + 0.1)  # the rest: the general path
    assert wire.latency is not None
    assert wire.receive_data(unmasked, FIRST + 0.2)
    assert wire.state is State.DRAINING
    assert parse_server_frames(wire.data_to_send())[-1].close_code == 1002
    closed = connect(hub)
    closed.close(FIRST + 1)
    assert closed.receive_data(frame(PONG, b"late"), FIRST + 1)  # DRAINING: general path


@pytest.mark.parametrize("size", [0, 1, 124, 125])
def test_any_whole_pong_read_alone_takes_the_lane(size: int) -> None:
    """A pong of any size a control frame may have, empty to 125 bytes, read
    alone, needs no flush and is counted."""
    hub = make_hub()
    wire = connect(hub)
    assert wire.receive_data(frame(PONG, b"p" * size), 1.0) is False
    assert hub.scheduler.metrics.pongs_received == 1
    assert wire.state is State.ACTIVE


def test_a_lone_pong_after_whole_frames_still_takes_the_lane() -> None:
    """Reads of whole frames leave nothing half-parsed behind, so the pong
    read after them (a message, a ping, a message in fragments) takes the lane."""
    hub = make_hub()
    wire = connect(hub)
    reads = [
        text("hi"),
        frame(PING, b"p"),
        frame(0x1, b"a", fin=False) + frame(0x0, b"b"),
    ]
    for read in reads:
        assert wire.receive_data(read, 1.0) is True
        wire.data_to_send()
        assert wire.receive_data(frame(PONG, b"x"), 1.0) is False
    assert hub.scheduler.metrics.pongs_received == len(reads)


def test_a_pong_header_with_a_16_bit_length_is_refused_not_laned() -> None:
    """RFC 6455 §5.5: a control frame's length fits in 7 bits; a pong that
    claims 126 bytes (and is exactly as long as that would be with a 7-bit
    length) takes the general path and is a protocol error."""
    hub = make_hub()
    wire = connect(hub)
    data = frame(PONG, b"p" * 124, length=126)  # 2 + 2 + 4 + 124 bytes
    assert wire.receive_data(data, 1.0) is True
    assert wire.state is State.DRAINING
    assert parse_server_frames(wire.data_to_send())[-1].close_code == 1002


def test_a_pong_read_while_actions_wait_takes_the_general_path() -> None:
    hub = make_hub()
    wire = connect(hub)
    pong = pong_for(hub, wire)
    wire.lifecycle.close(FIRST, 1000, "bye")  # queued, not yet pumped
    assert wire.receive_data(pong, FIRST + 0.1)
    assert parse_server_frames(wire.data_to_send())[-1].close_code == 1000
