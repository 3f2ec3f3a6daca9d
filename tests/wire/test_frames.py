"""Frames after the handshake: limits, control frames, close-code rules.

Each test names the RFC 6455 section it checks and feeds its input whole,
byte by byte and in chunks, expecting the same result."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tests.wire.helpers import (
    MODES,
    close_frame,
    config,
    feed,
    first_probe,
    frame,
    open_wire,
    parse_server_frames,
    text,
    without_ids,
)
from wslifecycle import Config, State, TerminationCause, is_sendable
from wslifecycle.actions import CloseTransport, ReleaseChannels, Terminate
from wslifecycle.wire import ServerConnection
from wslifecycle.wire.frames import FrameReader, InboundMessage, close_payload, encode_masked_frame
from wslifecycle.wire.mask import unmask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def closes_with(data: bytes, mode: str, cfg: Config | None = None) -> tuple[int | None, object]:
    """Feed ``data`` to an open wire: the close code the server sent and the cause."""
    wire = open_wire(cfg)
    outcome = feed(wire, data, mode)
    closes = [f for f in parse_server_frames(outcome.written) if f.opcode == OP_CLOSE]
    assert len(closes) == 1, parse_server_frames(outcome.written)
    assert wire.lifecycle.state is State.DRAINING
    return closes[0].close_code, wire.lifecycle.cause


def test_every_mode_gives_the_same_result() -> None:
    """Whole, byte by byte, or in chunks: the same bytes, actions and messages."""
    data = (
        text("one")
        + frame(OP_TEXT, b"fr", fin=False)
        + frame(OP_PING, b"p")
        + frame(OP_CONT, b"ag")
        + frame(OP_BINARY, b"\x00\x01")
        + close_frame(1000)
        + text("after close")  # trailing data after the close: ignored
    )
    outcomes = []
    for mode in MODES:
        wire = open_wire()
        outcome = feed(wire, data, mode)
        outcomes.append((outcome.written, without_ids(outcome.actions), outcome.messages))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    written, _, messages = outcomes[0]
    assert messages == ["one", "frag", b"\x00\x01"]  # in order; "after close" is not
    assert [f.opcode for f in parse_server_frames(written)] == [OP_PONG, OP_CLOSE]


@pytest.mark.parametrize("mode", MODES)
def test_a_message_over_the_cap_across_fragments_gets_1009(mode: str) -> None:
    """RFC 6455 §7.4.1 (1009): the cap counts the whole message, all fragments."""
    cfg = config(max_message_size=100)
    data = frame(OP_BINARY, b"a" * 60, fin=False) + frame(OP_CONT, b"b" * 60)
    code, cause = closes_with(data, mode, cfg)
    assert code == 1009
    assert cause is TerminationCause.MESSAGE_TOO_BIG


@pytest.mark.parametrize("mode", MODES)
def test_a_message_at_the_cap_is_delivered(mode: str) -> None:
    """The cap is inclusive: exactly max_message_size bytes pass."""
    wire = open_wire(config(max_message_size=100))
    outcome = feed(wire, frame(OP_BINARY, b"a" * 50, fin=False) + frame(OP_CONT, b"b" * 50), mode)
    assert outcome.messages == [b"a" * 50 + b"b" * 50]


def test_a_header_claiming_a_huge_length_fails_before_any_payload() -> None:
    """RFC 6455 §5.2: a 64-bit length is read from the header alone; a frame
    claiming more than the cap is refused at once with 1009."""
    header_only = frame(OP_BINARY, b"", length=2**62)[:14]  # 2+8 length, 4 mask
    wire = open_wire()
    wire.receive_data(header_only, 1.0)
    frames = parse_server_frames(wire.data_to_send())
    assert [(f.opcode, f.close_code) for f in frames] == [(OP_CLOSE, 1009)]


@pytest.mark.parametrize("mode", MODES)
def test_too_many_fragments_get_1009_empty_ones_counted(mode: str) -> None:
    """Tiny-fragment floods: more than max_fragments frames, even empty, is 1009."""
    cfg = config(max_fragments=4)
    data = frame(OP_TEXT, b"", fin=False) + b"".join(
        frame(OP_CONT, b"", fin=False) for _ in range(4)
    )
    code, cause = closes_with(data, mode, cfg)
    assert code == 1009
    assert cause is TerminationCause.MESSAGE_TOO_BIG


@pytest.mark.parametrize("mode", MODES)
def test_a_first_message_of_exactly_max_fragments_frames_is_delivered(mode: str) -> None:
    """The fragment cap counts a message's frames from its first: a message of
    exactly max_fragments frames is delivered, the first one on a connection
    included, and so is the next one."""
    cfg = config(max_fragments=4)
    message = frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b", fin=False)
    message += frame(OP_CONT, b"c", fin=False) + frame(OP_CONT, b"d")
    assert feed(open_wire(cfg), message + message, mode).messages == ["abcd", "abcd"]


@pytest.mark.parametrize("mode", MODES)
def test_invalid_utf8_split_across_fragments_gets_1007_at_the_bad_byte(mode: str) -> None:
    """RFC 6455 §8.1: text is checked as it arrives; a bad sequence split over
    fragments fails with 1007 before the message ends."""
    euro = "€".encode()  # e2 82 ac
    data = frame(OP_TEXT, b"ok" + euro[:2], fin=False) + frame(OP_CONT, b"\xff", fin=False)
    code, cause = closes_with(data, mode)
    assert code == 1007
    assert cause is TerminationCause.INVALID_PAYLOAD


@pytest.mark.parametrize("mode", MODES)
def test_valid_utf8_split_inside_a_character_is_delivered(mode: str) -> None:
    """RFC 6455 §5.6: fragment boundaries may fall inside a UTF-8 character."""
    euro = "€".encode()
    data = frame(OP_TEXT, euro[:1], fin=False) + frame(OP_CONT, euro[1:])
    assert feed(open_wire(), data, mode).messages == ["€"]


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (frame(OP_PING, b"x" * 126), "§5.5: control frame over 125 bytes"),
        (frame(OP_PING, b"x", fin=False), "§5.5: fragmented control frame"),
        (frame(OP_TEXT, b"x", rsv=4), "§5.2: RSV1 without an extension"),
        (frame(OP_TEXT, b"x", rsv=1), "§5.2: RSV3"),
        (frame(0x3, b"x"), "§5.2: reserved data opcode"),
        (frame(0xB, b"x"), "§5.2: reserved control opcode"),
        (frame(0xB, b""), "§5.2: reserved control opcode, empty"),
        (frame(0xB, b"\x03\xe8"), "§5.2: reserved control opcode, a close's payload"),
        (
            # Read as masked, the next 4 bytes would be its key and a ping would follow.
            frame(OP_PING, b"", mask=False) + bytes(4) + frame(OP_PING),
            "§5.1: unmasked empty frame",
        ),
        (frame(OP_TEXT, b"x", mask=False), "§5.1: unmasked client frame"),
        (frame(OP_CONT, b"x"), "§5.4: continuation with nothing to continue"),
        (frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), "§5.4: new message mid-way"),
        (frame(OP_CLOSE, b"\x03"), "§5.5.1: one-byte close payload"),
    ],
    # ASCII ids ("RFC6455 5.5: ..."): an escaped "§" is not always found by id.
    ids=lambda v: v.replace("§", "RFC6455 ") if isinstance(v, str) else "",
)
@pytest.mark.parametrize("mode", MODES)
def test_protocol_violations_get_1002(mode: str, data: bytes, rule: str) -> None:
    """RFC 6455 §7.4.1 (1002) for each framing rule named in the case id."""
    code, cause = closes_with(data, mode)
    assert code == 1002, rule
    assert cause is TerminationCause.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_a_valid_peer_close_code_is_echoed(code: int) -> None:
    """RFC 6455 §5.5.1 and §7.4: a valid code is echoed, then the server
    closes TCP first (§7.1.1)."""
    wire = open_wire()
    outcome = feed(wire, close_frame(code, b"bye"), "whole")
    frames = parse_server_frames(outcome.written)
    assert [(f.opcode, f.close_code) for f in frames] == [(OP_CLOSE, code)]
    assert isinstance(outcome.actions[-1], CloseTransport)
    assert wire.lifecycle.cause is TerminationCause.PEER_CLOSE


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000])
def test_an_invalid_peer_close_code_gets_1002(code: int) -> None:
    """RFC 6455 §7.4.1-§7.4.2: reserved, unassigned or local-only codes
    (1005, 1006, 1015 among them) in a close frame are a protocol error."""
    code_sent, cause = closes_with(close_frame(code), "whole")
    assert code_sent == 1002
    assert cause is TerminationCause.PROTOCOL_ERROR


def test_an_empty_close_is_answered_with_1000_never_1005() -> None:
    """RFC 6455 §7.4.1: 1005 means "no code" and is never sent; an empty
    close is answered with 1000."""
    frames = parse_server_frames(feed(open_wire(), close_frame(None), "whole").written)
    assert [f.close_code for f in frames] == [1000]


def test_a_close_reason_that_is_not_utf8_gets_1007() -> None:
    """RFC 6455 §5.5.1: the close reason is UTF-8; otherwise 1007."""
    code, cause = closes_with(close_frame(1000, b"\xc3\x28"), "whole")
    assert code == 1007
    assert cause is TerminationCause.INVALID_PAYLOAD


def close_sent_for(data: bytes) -> bytes:
    """Feed ``data`` to an open wire: the payload of the close frame it answered with."""
    written = feed(open_wire(), data, "whole").written
    (close,) = [f for f in parse_server_frames(written) if f.opcode == OP_CLOSE]
    return close.payload


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        (frame(OP_CLOSE, b"\x03"), b"\x03\xeaclose frame with a one-byte payload"),
        (close_frame(1000, b"\xc3\x28"), b"\x03\xefclose reason is not UTF-8"),
        (close_frame(1004), b"\x03\xeaclose code 1004 is not valid on the wire"),
    ],
    ids=["one-byte payload", "reason not UTF-8", "reserved code"],
)
def test_a_refused_close_frame_is_answered_with_the_rule_it_broke(
    data: bytes, payload: bytes
) -> None:
    """RFC 6455 §5.5.1, §7.4: the peer is told which close-frame rule it broke,
    in the reason of the server's close (1002 or 1007)."""
    assert close_sent_for(data) == payload


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(OP_CONT, b"x"), b"continuation frame with no message to continue"),
        (
            frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"),
            b"new data frame inside a fragmented message",
        ),
    ],
    ids=["continuation first", "new message mid-way"],
)
@pytest.mark.parametrize("mode", MODES)
def test_a_fragment_out_of_order_is_answered_with_the_rule_it_broke(
    mode: str, data: bytes, reason: bytes
) -> None:
    """RFC 6455 §5.4: the peer is told which fragment-order rule it broke, in
    the reason of the server's 1002 close, however the bytes arrive."""
    written = feed(open_wire(), data, mode).written
    (close,) = [f for f in parse_server_frames(written) if f.opcode == OP_CLOSE]
    assert close.payload == struct.pack("!H", 1002) + reason


@settings(max_examples=examples(50), deadline=None)
@given(st.integers(0, 65535).filter(lambda code: not is_sendable(code)))
def test_an_invalid_peer_close_code_is_named_as_sent(code: int) -> None:
    """Any 16-bit close code outside the sendable set is read unsigned and
    named in the 1002 close's reason."""
    reason = f"close code {code} is not valid on the wire".encode()
    assert close_sent_for(close_frame(code)) == struct.pack("!H", 1002) + reason


@settings(max_examples=examples(100))
@given(st.integers(0, 65535), st.text(max_size=40))
def test_a_close_payload_is_the_code_unsigned_then_the_reason_in_utf8(
    code: int, reason: str
) -> None:
    """RFC 6455 §5.5.1: a close payload is the code as an unsigned big-endian
    16-bit integer, then the reason as UTF-8."""
    payload = close_payload(code, reason)
    assert struct.unpack("!H", payload[:2]) == (code,)
    assert payload[2:].decode("utf-8") == reason


def test_a_close_payload_never_exceeds_a_control_frames_125_bytes() -> None:
    """RFC 6455 §5.5: a reason longer than 123 bytes is cut to 123."""
    assert close_payload(1000, "x" * 200) == b"\x03\xe8" + b"x" * 123


@pytest.mark.parametrize("mode", MODES)
def test_pings_are_answered_with_the_same_payload(mode: str) -> None:
    """RFC 6455 §5.5.2-§5.5.3: a pong carries the ping's application data,
    including between fragments of a message (§5.4)."""
    data = frame(OP_TEXT, b"a", fin=False) + frame(OP_PING, b"abc") + frame(OP_CONT, b"b")
    outcome = feed(open_wire(), data, mode)
    frames = parse_server_frames(outcome.written)
    assert [(f.opcode, f.payload) for f in frames] == [(OP_PONG, b"abc")]
    assert outcome.messages == ["ab"]


def test_pings_after_our_close_are_not_answered() -> None:
    """RFC 6455 §5.5.1: once the server sent its close frame it sends nothing
    but waits for the peer's close."""
    wire = open_wire()
    wire.close(1.0, 1000)
    wire.data_to_send()
    wire.receive_data(frame(OP_PING, b"late"), 1.1)
    assert wire.data_to_send() == b""


def test_a_pong_resets_the_heartbeat_and_yields_an_rtt() -> None:
    """Pings from the lifecycle become ping frames; the pong that
    answers one resets the missed count and gives a round-trip time."""
    wire = open_wire()
    ping, deadline = first_probe(wire)
    assert ping.opcode == OP_PING
    assert wire.lifecycle.missed_pongs == 1
    wire.receive_data(frame(OP_PONG, ping.payload), deadline + 0.25)
    assert wire.lifecycle.missed_pongs == 0
    assert wire.lifecycle.latency == pytest.approx(0.25)


def test_the_app_heartbeat_goes_out_as_text_and_its_echo_is_not_delivered() -> None:
    """The JSON heartbeat is a text message; its echo is consumed."""
    from wslifecycle import HeartbeatMode

    wire = open_wire(config(heartbeat_mode=HeartbeatMode.APPLICATION))
    heartbeat, deadline = first_probe(wire)
    assert heartbeat.opcode == OP_TEXT
    assert b'"type":"heartbeat"' in heartbeat.payload
    wire.receive_data(frame(OP_TEXT, heartbeat.payload), deadline + 0.1)
    assert wire.take_message(deadline + 0.1) is None
    assert wire.messages_waiting == 0
    assert wire.lifecycle.missed_echoes == 0


def test_eof_ends_the_connection_and_nothing_more_is_written() -> None:
    """EOF has its own input: the lifecycle ends (transport lost), pending
    output is dropped, and later input or sends write nothing."""
    wire = open_wire()
    wire.receive_data(frame(OP_PING, b"x"), 1.0)  # a pong is pending
    wire.receive_eof(1.1)
    assert wire.data_to_send() == b""
    assert isinstance(wire.take_actions()[-1], CloseTransport)
    assert wire.lifecycle.cause is TerminationCause.TRANSPORT_LOST
    wire.receive_data(text("late"), 1.2)
    wire.receive_eof(1.3)
    assert wire.data_to_send() == b""
    assert wire.take_actions() == []
    assert wire.take_message(1.3) is None


def test_terminate_drops_unwritten_output() -> None:
    """terminate → the driver is told to drop the socket now (RST): bytes
    not yet written are discarded and nothing follows."""
    wire = open_wire()
    wire.send("queued", 1.0)
    wire.terminate(1.0, TerminationCause.SLOW_CONSUMER)
    assert wire.data_to_send() == b""
    assert isinstance(wire.take_actions()[-1], Terminate)
    wire.receive_data(text("x"), 1.1)
    assert wire.data_to_send() == b""


def test_release_failure_closes_with_1011() -> None:
    """If releasing channels raises, the close goes out with 1011."""

    def broken(wire: ServerConnection, channels: tuple[str, ...], now: float) -> None:
        raise ConnectionError("broker down")

    wire = open_wire(release_channels=broken)
    wire.lifecycle.subscribe("news")
    wire.close(1.0, 1000)
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames] == [1011]
    assert wire.lifecycle.cause is TerminationCause.TEARDOWN_ERROR


def test_the_release_hook_gets_the_wire_and_channels_before_the_close_frame() -> None:
    """The hook is called with the wire and the channel names while
    nothing is written yet; the close frame follows the release, never before it."""
    seen: list[tuple[ServerConnection, tuple[str, ...], int, State]] = []

    def hook(wire: ServerConnection, channels: tuple[str, ...], now: float) -> None:
        seen.append((wire, channels, wire.buffered, wire.state))

    wire = open_wire(release_channels=hook)
    wire.lifecycle.subscribe("news")
    wire.lifecycle.subscribe("alerts")
    wire.close(1.0, 1000)
    ((hook_wire, channels, buffered, state),) = seen
    assert hook_wire is wire
    assert channels == ("alerts", "news")
    assert buffered == 0  # the close frame is not written yet
    assert state is State.DRAINING
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1000]
    assert not [a for a in wire.take_actions() if isinstance(a, ReleaseChannels)]


def test_without_a_release_hook_the_wire_acknowledges_and_the_close_goes_out() -> None:
    """Without a hook there is nothing to release: ReleaseChannels never
    reaches the driver and the close frame goes out at once."""
    wire = open_wire(release_channels=None)
    wire.lifecycle.subscribe("news")
    wire.close(1.0, 1000)
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1000]
    assert not [a for a in wire.take_actions() if isinstance(a, ReleaseChannels)]
    assert wire.lifecycle.state is State.DRAINING


def test_a_state_drift_notice_precedes_the_close_frame() -> None:
    """The client reported a sequence number that differs from the
    server's: STATE_DRIFT goes out before the close frame."""
    wire = open_wire()
    wire.send("m1", 1.0)
    wire.send("m2", 1.0)
    wire.data_to_send()
    wire.lifecycle.report_client_seq(1.0, 1)
    wire.close(1.1, 1000)
    frames = parse_server_frames(wire.data_to_send())
    assert [f.opcode for f in frames] == [OP_TEXT, OP_CLOSE]
    assert frames[0].payload == b'{"type":"STATE_DRIFT","serverSeq":2,"clientSeq":1}'


def test_server_frames_use_the_shortest_length_encoding() -> None:
    """RFC 6455 §5.2: 7-bit, 16-bit and 64-bit lengths at 125, 126 and 65536."""
    wire = open_wire()
    for size in (125, 126, 65535, 65536):
        wire.send(b"x" * size, 1.0)
        data = wire.data_to_send()
        assert len(parse_server_frames(data)[0].payload) == size
        header = data[1]
        expected = size if size < 126 else (126 if size < 65536 else 127)
        assert header == expected
    assert struct.calcsize("!Q") == 8


def test_client_frames_use_the_shortest_length_encoding_and_read_back() -> None:
    """RFC 6455 §5.2: a client's masked frames also take 7-bit, 16-bit and
    64-bit lengths at 125, 126 and 65536, and a server reads each back whole."""
    key = b"\x01\x80\xfe\x7f"
    for size in (125, 126, 65535, 65536):
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        data = encode_masked_frame(OP_BINARY, payload, key, unmask)
        expected = size if size < 126 else (126 if size < 65536 else 127)
        assert data[1] == 0x80 | expected
        reader = FrameReader(config(max_message_size=65536), [])
        assert reader.feed(data) == [InboundMessage(payload)]


@pytest.mark.parametrize("mode", MODES)
def test_frames_with_16_bit_lengths_back_to_back_are_each_delivered(mode: str) -> None:
    """RFC 6455 §5.2: the 16-bit length is read big-endian from the two bytes
    after the header's first two, and the next frame starts right after the
    payload, however many frames one read holds."""
    first, second = bytes(range(256)) + b"a" * 128, b"b" * 40000  # 384 and 40000 bytes
    data = frame(OP_BINARY, first) + frame(OP_BINARY, second) + text("after")
    assert feed(open_wire(), data, mode).messages == [first, second, "after"]


def test_nothing_after_a_close_frame_is_read_even_in_a_later_read() -> None:
    """RFC 6455 §5.5.1: after a close frame the reader ignores all input."""
    reader = FrameReader(config(), [])
    assert reader.feed(close_frame(1000)) != []
    assert reader.feed(text("late") + frame(OP_PING, b"p")) == []
