"""The fast path for whole, simple frames agrees with wsproto's path; these
are the cases where it must step aside or fail exactly as wsproto would."""

from __future__ import annotations

import os
import struct

from tests.wire.helpers import first_probe, frame, open_wire, parse_server_frames, take_messages
from wslifecycle import TerminationCause


def long_form(opcode: int, payload: bytes) -> bytes:
    """A masked frame whose length uses the 16-bit form even when it need not."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload)) + key + masked


def test_invalid_utf8_in_one_whole_frame_gets_1007() -> None:
    """RFC 6455 §8.1, on the fast path: a whole text frame that is not UTF-8."""
    wire = open_wire()
    wire.receive_data(frame(0x1, b"ok\xc3\x28"), 1.0)
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1007]
    assert wire.lifecycle.cause is TerminationCause.INVALID_PAYLOAD


def test_a_needlessly_long_length_is_a_protocol_error() -> None:
    """RFC 6455 §5.2: the minimal number of bytes must encode the length."""
    wire = open_wire()
    wire.receive_data(long_form(0x2, b"x" * 100), 1.0)
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1002]


def test_a_16_bit_length_split_from_its_header_is_read_whole() -> None:
    """A frame whose 16-bit length arrives after its first two bytes is left
    to wsproto, and later whole frames take the fast path again."""
    wire = open_wire()
    data = long_form(0x2, b"y" * 300) + frame(0x1, b"next")
    wire.receive_data(data[:3], 1.0)
    wire.receive_data(data[3:], 1.0)
    assert take_messages(wire) == [b"y" * 300, "next"]


def test_a_pong_in_pieces_takes_wsproto_and_still_counts() -> None:
    """A pong split across reads goes through wsproto's decoder, and still
    resets the missed count and yields the round trip."""
    wire = open_wire()
    ping, deadline = first_probe(wire)
    pong = frame(0xA, ping.payload)
    for i in range(len(pong)):
        wire.receive_data(pong[i : i + 1], deadline + 0.5)
    assert wire.lifecycle.missed_pongs == 0
    assert wire.lifecycle.latency == 0.5
