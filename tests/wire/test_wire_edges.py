"""Less travelled paths of the wire: each a behaviour a driver can meet."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
    RsvBits,
)

from tests._hypothesis import examples
from tests.wire.helpers import (
    config,
    frame,
    new_wire,
    open_wire,
    parse_server_frames,
    take_messages,
    upgrade_request,
)
from wslifecycle import AlertKind, State, TerminationCause
from wslifecycle.actions import Alert, CloseTransport, ReleaseChannels, Terminate
from wslifecycle.wire import ServerConnection
from wslifecycle.wire.frames import FrameReader, InboundFailure
from wslifecycle.wire.http import Refusal, RequestReader


def test_the_default_responder_has_no_metrics() -> None:
    """Without a driver's responder, /metrics is 404 and says nothing else."""
    wire = new_wire()
    wire.receive_data(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert wire.data_to_send().startswith(b"HTTP/1.1 404 ")
    assert repr(wire).startswith("<ServerConnection conn-")


def test_a_request_line_over_the_whole_head_cap_is_still_414() -> None:
    """A request line longer than both caps arriving in one read: h11 sees
    a too-large head, but the request line is the culprit, so 414."""
    reader = RequestReader(config(max_request_line=100, max_header_bytes=200))
    assert reader.feed(b"GET /" + b"a" * 400) == Refusal(414, "request line too long")


def test_a_large_head_with_a_short_request_line_is_431_while_incomplete() -> None:
    """h11's cap on an incomplete head maps to 431 when the line is short."""
    reader = RequestReader(config(max_request_line=100, max_header_bytes=200))
    verdict = reader.feed(b"GET / HTTP/1.1\r\nX: " + b"b" * 400)
    assert isinstance(verdict, Refusal)
    assert verdict.status == 431


def test_an_offer_we_cannot_accept_leaves_compression_off() -> None:
    """RFC 7692 §5: an unusable offer is declined; no extension header."""
    wire = new_wire(config(compression=True))
    offer = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits=4")
    wire.receive_data(upgrade_request(extra=[offer]), 0.0)
    head = wire.data_to_send()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-extensions" not in head


def test_eof_after_the_driver_reported_the_loss_itself() -> None:
    """A driver may call transport_lost on a socket error and then EOF:
    the wire still ends cleanly, once."""
    wire = open_wire()
    wire.transport_lost(1.0, "ECONNRESET")
    wire.receive_eof(1.0)
    actions = wire.take_actions()
    assert isinstance(actions[-1], CloseTransport)
    assert sum(isinstance(a, CloseTransport) for a in actions) == 1
    assert wire.lifecycle.cause is TerminationCause.TRANSPORT_LOST


def test_a_release_failure_while_terminating_still_terminates() -> None:
    """A broken broker during a terminate still drops the socket, and says so
    in a teardown_failed alert (no close frame can carry a 1011)."""

    def broken(wire: ServerConnection, channels: tuple[str, ...], now: float) -> None:
        raise RuntimeError("broker down")

    wire = open_wire(config(), release_channels=broken)
    wire.lifecycle.subscribe("news")
    wire.terminate(1.0, TerminationCause.SLOW_CONSUMER)
    actions = wire.take_actions()
    assert isinstance(actions[-1], Terminate)
    assert Alert(AlertKind.TEARDOWN_FAILED, wire.id, 0.0, "RuntimeError: broker down") in actions
    assert wire.lifecycle.state is State.CLOSED


def test_the_release_hook_sees_every_teardown_even_without_channels() -> None:
    """The hook is called for every graceful teardown; it learns the wire and the channels."""
    seen: list[tuple[ServerConnection, tuple[str, ...]]] = []
    wire = open_wire(release_channels=lambda w, channels, now: seen.append((w, channels)))
    wire.close(1.0)
    assert seen == [(wire, ())]
    assert ReleaseChannels(()) not in wire.take_actions()


class Refuses(Extension):
    """An extension that rejects every data frame with 1003 (unsupported)."""

    name = "x-refuses"

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, length: int
    ) -> CloseReason | RsvBits:
        return CloseReason.UNSUPPORTED_DATA


def test_an_extension_failure_outside_the_mapped_codes_becomes_1002() -> None:
    """Only 1002, 1007 and 1009 come out of frame parsing; any other code an
    extension reports is a protocol error."""
    reader = FrameReader(config(), [Refuses()])
    (failure,) = reader.feed(frame(0x1, b"x"))
    assert isinstance(failure, InboundFailure)
    assert failure.code == 1002
    assert failure.cause is TerminationCause.PROTOCOL_ERROR
    assert reader.feed(frame(0x1, b"y")) == []  # nothing after a failure


class Explains(Extension):
    """An extension that rejects every data frame as a protocol error, with
    its own explanation."""

    name = "x-explains"

    def __init__(self, explanation: str) -> None:
        self.explanation = explanation

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, length: int
    ) -> CloseReason | RsvBits:
        raise ParseFailed(self.explanation, CloseReason.PROTOCOL_ERROR)


@settings(max_examples=examples(100))
@given(st.text(max_size=100))
@example("refused by x-explains")
@example("é" * 70)  # byte 123 falls inside a character
@example("x" * 124)
def test_a_parse_failure_is_reported_with_its_explanation_cut_to_123_bytes(
    explanation: str,
) -> None:
    """A protocol error from frame parsing carries its explanation as the close
    reason: the longest prefix of whole characters that fits in 123 UTF-8
    bytes (RFC 6455 §5.5)."""
    (failure,) = FrameReader(config(), [Explains(explanation)]).feed(frame(0x2, b"x"))
    assert isinstance(failure, InboundFailure)
    assert failure.code == 1002
    reason = failure.reason
    assert explanation.startswith(reason)
    assert len(reason.encode("utf-8")) <= 123
    rest = explanation[len(reason) :]
    assert not rest or len((reason + rest[0]).encode("utf-8")) > 123


def test_compressed_and_uncompressed_messages_mix() -> None:
    """RFC 7692 §6: with deflate negotiated a message may still be sent
    uncompressed (RSV1 clear); both are delivered, context kept or reset."""
    import zlib

    offer = ("Sec-WebSocket-Extensions", "permessage-deflate; client_no_context_takeover")
    wire = new_wire(config(compression=True), release_channels=lambda w, ch, now: None)
    wire.receive_data(upgrade_request(extra=[offer]), 0.0)
    assert b"client_no_context_takeover" in wire.data_to_send()
    wire.take_actions()

    def deflated(data: bytes) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

    wire.receive_data(frame(0x1, b"plain"), 1.0)
    wire.receive_data(frame(0x1, deflated(b"packed"), rsv=4), 1.0)
    wire.receive_data(frame(0x1, deflated(b"again"), rsv=4), 1.0)  # fresh context
    wire.receive_data(frame(0x1, b"in ", fin=False) + frame(0x0, b"parts"), 1.0)
    assert take_messages(wire) == ["plain", "packed", "again", "in parts"]
    assert parse_server_frames(wire.data_to_send()) == []


def test_a_terminated_connection_releases_its_channels_through_the_hook() -> None:
    """Channels are released before a terminate too (no ack needed)."""
    seen: list[tuple[ServerConnection, tuple[str, ...]]] = []
    wire = open_wire(release_channels=lambda w, channels, now: seen.append((w, channels)))
    wire.lifecycle.subscribe("news")
    wire.terminate(1.0, TerminationCause.SLOW_CONSUMER)
    assert seen == [(wire, ("news",))]
    assert isinstance(wire.take_actions()[-1], Terminate)
