"""permessage-deflate (RFC 7692): off unless configured; when on, bounded."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from tests.wire.helpers import (
    config,
    frame,
    new_wire,
    parse_server_frames,
    released,
    upgrade_request,
)
from wslifecycle import TerminationCause
from wslifecycle.wire import ServerConnection

OFFER = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")


def deflate(data: bytes) -> bytes:
    """A message body as a client compresses it (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def compressed_wire(**changes: object) -> ServerConnection:
    wire = new_wire(config(compression=True, **changes), release_channels=released)
    wire.receive_data(upgrade_request(extra=[OFFER]), 0.0)
    head = wire.data_to_send()
    assert b"\r\nsec-websocket-extensions: permessage-deflate" in head
    wire.take_actions()
    return wire


def test_compression_is_off_unless_configured() -> None:
    """An offer is ignored by default, and a compressed frame is
    then a protocol error (RFC 6455 §5.2, RSV1 without an extension)."""
    wire = new_wire(release_channels=released)
    wire.receive_data(upgrade_request(extra=[OFFER]), 0.0)
    assert b"sec-websocket-extensions" not in wire.data_to_send()
    wire.receive_data(frame(0x1, deflate(b"hello"), rsv=4), 1.0)
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames] == [1002]


def test_compressed_messages_round_trip_with_a_real_client() -> None:
    """RFC 7692: with a wsproto client, compressed text goes both ways."""
    wire = new_wire(config(compression=True), release_channels=released)
    client = WSConnection(ConnectionType.CLIENT)
    wire.receive_data(
        client.send(Request(host="localhost", target="/", extensions=[PerMessageDeflate()])), 0.0
    )
    client.receive_data(wire.data_to_send())
    accepted = next(client.events())
    assert isinstance(accepted, AcceptConnection)
    assert accepted.extensions
    message = "compress me " * 100
    wire.receive_data(client.send(TextMessage(message)), 1.0)
    assert wire.take_message(1.0) == message
    wire.send(message, 1.0)
    out = wire.data_to_send()
    assert len(out) < len(message) // 4  # it really was compressed
    client.receive_data(out)
    echoed = next(client.events())
    assert isinstance(echoed, TextMessage)
    assert echoed.data == message


@pytest.mark.parametrize("fragments", [1, 3])
def test_a_decompression_bomb_gets_1009_with_memory_bounded(fragments: int) -> None:
    """16 MiB of zeros deflated to a few KiB must not inflate past
    the 64 KiB cap: the connection fails with 1009 and the peak allocation
    stays near the cap."""
    wire = compressed_wire(max_message_size=64 * 1024)
    bomb = deflate(b"\x00" * (16 * 1024 * 1024))
    assert len(bomb) < 32 * 1024
    size = len(bomb) // fragments + 1
    pieces = [bomb[i : i + size] for i in range(0, len(bomb), size)]
    data = b"".join(
        frame(0x2 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1, rsv=4 if i == 0 else 0)
        for i, piece in enumerate(pieces)
    )
    tracemalloc.start()
    wire.receive_data(data, 1.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames] == [1009]
    assert wire.lifecycle.cause is TerminationCause.MESSAGE_TOO_BIG
    assert peak < 1024 * 1024, peak  # the cap is 64 KiB; 16 MiB never materialised


def test_a_corrupt_deflate_stream_gets_1007() -> None:
    """RFC 7692 §8 / RFC 6455 §7.4.1: data that does not inflate is invalid payload."""
    wire = compressed_wire()
    wire.receive_data(frame(0x1, b"\xff\xff\xff\xff garbage", rsv=4), 1.0)
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames] == [1007]


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
def test_a_data_frame_inside_a_compressed_fragmented_message_is_1002_however_it_arrives(
    chunk: int,
) -> None:
    """Found by fuzz/frames_fuzz.py: a compressed first fragment whose bytes
    do not inflate yet, then a new data frame, is a fragment-order error
    (1002, RFC 6455 §5.4) whether the frames arrive whole or byte by byte;
    the order is checked at the header, before any payload is inflated."""
    wire = compressed_wire()
    data = frame(0x1, b"\x88", fin=False, rsv=4) + frame(0x2, b"x" * 122)
    for i in range(0, len(data), chunk):
        wire.receive_data(data[i : i + chunk], 1.0)
    frames = parse_server_frames(wire.data_to_send())
    assert [f.close_code for f in frames] == [1002]
    assert wire.lifecycle.cause is TerminationCause.PROTOCOL_ERROR


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16])
def test_compressed_text_that_fails_gets_the_same_close_however_it_arrives(chunk: int) -> None:
    """Found by fuzz/frames_fuzz.py: compressed text whose first bytes inflate
    to invalid UTF-8 and whose later bytes do not inflate at all fails with
    1007 and one reason, whichever failure the chunking lets zlib meet first."""
    wire = compressed_wire()
    valid = deflate("héllo".encode())
    bad_text = deflate(b"\xff\xfe text that is not UTF-8")
    data = frame(0x1, bad_text[:6] + b"\xff\xff\xff\xff" + valid, rsv=4)
    for i in range(0, len(data), chunk):
        wire.receive_data(data[i : i + chunk], 1.0)
    frames = parse_server_frames(wire.data_to_send())
    assert [(f.close_code, f.payload[2:]) for f in frames] == [(1007, b"invalid compressed text")]
