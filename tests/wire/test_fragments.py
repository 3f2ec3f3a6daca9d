"""Fragmented messages (RFC 6455 §5.4) on the fast path and on wsproto's:
the same verdicts, whole or split at any byte, and reads that end inside a
frame hand the rest back to the fast path."""

from __future__ import annotations

import pytest

from tests.wire.helpers import MODES, config, feed, frame, open_wire, parse_server_frames
from tests.wire.test_compression import compressed_wire
from wslifecycle import Config
from wslifecycle.wire.frames import FrameReader, InboundFailure, InboundMessage, InboundPing

TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9


def reader(**changes: object) -> FrameReader:
    return FrameReader(Config(**changes), [])  # type: ignore[arg-type]


def fragments(opcode: int, pieces: list[bytes]) -> bytes:
    return b"".join(
        frame(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_fragmented_text_message_with_a_ping_between_its_fragments(mode: str) -> None:
    """§5.4: control frames may come between fragments; a character split
    across fragments is whole once the next one arrives."""
    snowman = "☃".encode()
    data = (
        frame(TEXT, b"a" + snowman[:1], fin=False)
        + frame(PING, b"p")
        + frame(CONT, snowman[1:], fin=False)
        + frame(CONT, b"", fin=False)
        + frame(CONT, b"z")
    )
    outcome = feed(open_wire(), data, mode)
    assert outcome.messages == ["a☃z"]
    assert [f.opcode for f in parse_server_frames(outcome.written)] == [0xA]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(CONT, b"x"), 1002),  # nothing to continue
        (frame(BINARY, b"x", fin=False) + frame(TEXT, b"y"), 1002),  # a new message inside one
        (fragments(TEXT, [b"ok", b"\xe2\x82", b"\x28"]), 1007),  # a bad byte in a later fragment
        (fragments(TEXT, [b"ok\xe2", b"\x82"]), 1007),  # a sequence cut short at the end
        (fragments(BINARY, [b"x" * 60] * 3), 1009),  # 180 bytes over a cap of 100
        (fragments(BINARY, [b"x"] * 5), 1009),  # five frames over a cap of four
        (fragments(BINARY, [b"", b"", b"", b"", b""]), 1009),  # empty frames count too
    ],
    # Named, not shown: the frames carry random mask keys, and a test's id
    # must be the same in every collection (mutmut selects tests by id).
    ids=[
        "nothing-to-continue",
        "new-message-inside-one",
        "bad-byte-in-a-later-fragment",
        "sequence-cut-short",
        "bytes-over-the-cap",
        "frames-over-the-cap",
        "empty-frames-count",
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_fragment_rules_give_the_same_close_whole_or_split(
    data: bytes, code: int, mode: str
) -> None:
    """§5.4, §8.1 and the caps: one verdict, whatever the chunking."""
    wire = open_wire(config(max_message_size=100, max_fragments=4))
    outcome = feed(wire, data, mode)
    assert outcome.messages == []
    assert [f.close_code for f in parse_server_frames(outcome.written)] == [code]


def test_invalid_text_fails_before_the_message_ends() -> None:
    """§8.1: the fragment holding the bad byte fails the connection; the
    message's end is not awaited."""
    (failure,) = reader().feed(frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xff", fin=False))
    assert isinstance(failure, InboundFailure)
    assert (failure.code, failure.reason) == (1007, "invalid UTF-8 in text")


def test_reads_that_end_inside_frames_return_to_the_fast_path() -> None:
    """Reads cut mid-frame, mid-header or mid-length: wsproto finishes that
    frame and the rest goes back to the fast path (no decoder held after)."""
    pieces = [bytes([i]) * 70 for i in range(40)]
    data = fragments(BINARY, pieces) + frame(PING, b"") + fragments(TEXT, [b"a", b"b"])
    frames_reader = reader()
    out = []
    for at in range(0, len(data), 97):
        out += frames_reader.feed(data[at : at + 97])
    assert out == [InboundMessage(b"".join(pieces)), InboundPing(b""), InboundMessage("ab")]
    assert frames_reader.buffered == 0


def test_buffered_counts_the_message_so_far_and_the_bytes_of_a_frame_still_arriving() -> None:
    """What a reader holds for memory checks: the payload of the message taken
    so far plus the bytes of an unfinished frame; nothing once it is delivered."""
    frames_reader = reader()
    assert frames_reader.feed(frame(BINARY, b"a" * 50, fin=False)) == []
    assert frames_reader.buffered == 50
    rest = frame(CONT, b"b" * 50)
    assert frames_reader.feed(rest[:3]) == []  # half a header: held by wsproto
    assert frames_reader.buffered == 53
    assert frames_reader.feed(rest[3:10]) == []  # the header and 4 payload bytes
    assert frames_reader.buffered == 54
    assert frames_reader.feed(rest[10:]) == [InboundMessage(b"a" * 50 + b"b" * 50)]
    assert frames_reader.buffered == 0


def test_an_uncompressed_message_over_the_cap_with_deflate_negotiated() -> None:
    """RFC 7692 §6: a message without RSV1 is not compressed, and its frames'
    lengths are not judged at the header on a deflate connection (they
    would be for inflated ones): the cap is counted as the payload arrives."""
    wire = compressed_wire(max_message_size=100)
    wire.receive_data(fragments(BINARY, [b"x" * 60, b"y" * 60]), 1.0)
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1009]
