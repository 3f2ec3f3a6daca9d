"""Properties of the wire under arbitrary input (a Hypothesis fuzz of the
same invariants as fuzz/, so a machine without atheris still checks them)."""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from tests.wire.helpers import (
    MODES,
    config,
    feed,
    frame,
    new_wire,
    open_wire,
    parse_server_frames,
    take_messages,
)
from wslifecycle import is_sendable
from wslifecycle.actions import RejectUpgrade

CAP = 512

opcodes = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]) | st.integers(0, 15)
frames = st.builds(
    frame,
    opcodes,
    st.binary(max_size=700),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 1, 2, 4]),
    mask=st.booleans() | st.just(True),
)
close_frames = st.builds(
    lambda code, reason: frame(0x8, struct.pack("!H", code) + reason),
    st.integers(0, 65535),
    st.binary(max_size=20),
)
controls = st.builds(frame, st.sampled_from([0x9, 0xA]), st.binary(max_size=20))


@st.composite
def fragmented(draw: st.DrawFn) -> bytes:
    """A text or binary message cut into fragments (RFC 6455 §5.4), with
    pings and pongs between them: sometimes over the cap (CAP) or the
    fragment cap, sometimes invalid UTF-8 (a bad byte, or a sequence cut
    short at the end), sometimes with its start or its end left out."""
    text = draw(st.booleans())
    if text:
        payload = draw(st.text(max_size=200)).encode("utf-8")
        if draw(st.booleans()):  # a bad byte somewhere, or a sequence left unfinished
            at = draw(st.integers(0, len(payload)))
            bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xf0\x9f\x98"]))
            payload = payload[:at] + bad + payload[at:]
    else:
        payload = draw(st.binary(max_size=CAP + 100))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=12)))
    points = [0, *cuts, len(payload)]
    chunks = [payload[a:b] for a, b in itertools.pairwise(points)]
    out = []
    for i, chunk in enumerate(chunks):
        if i > 0 or draw(st.integers(0, 9)) != 0:  # now and then: no start
            last = i == len(chunks) - 1 and draw(st.integers(0, 9)) > 0  # or no end
            out.append(frame((0x1 if text else 0x2) if i == 0 else 0x0, chunk, fin=last))
        out += draw(st.lists(controls, max_size=1))
    return b"".join(out)


pieces = st.lists(frames | close_frames | fragmented() | st.binary(max_size=40), max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(parts=pieces, cuts=st.lists(st.integers(0, 10_000), max_size=20))
@settings(max_examples=examples(400))
def test_any_bytes_after_a_handshake_are_handled_within_bounds(
    parts: list[bytes], cuts: list[int]
) -> None:
    """For any byte chunks after a valid handshake, the wire never raises,
    never holds more than the message cap plus one read, and every close
    code it writes is sendable."""
    wire = open_wire(config(max_message_size=CAP, max_fragments=8))
    written = bytearray()
    data = b"".join(parts)
    for chunk in chunked(data, cuts):
        wire.receive_data(chunk, 1.0)
        assert wire.inbound_buffered <= CAP + len(chunk) + 256
        written += wire.data_to_send()
        wire.take_actions()
        for message in take_messages(wire):
            assert len(message) <= CAP  # characters ≤ bytes for text
    wire.receive_eof(2.0)
    written += wire.data_to_send()
    for sent in parse_server_frames(bytes(written)):
        if sent.opcode == 0x8:
            assert sent.close_code is not None
            assert is_sendable(sent.close_code)


@given(parts=pieces)
@settings(max_examples=examples(200))
def test_feeding_whole_or_byte_by_byte_agrees(parts: list[bytes]) -> None:
    """The same input gives the same bytes, actions and messages whole, byte
    by byte or in chunks (ping payloads and ids come from the same seeded entropy)."""
    data = b"".join(parts)
    outcomes = []
    for mode in MODES:
        outcome = feed(open_wire(config(max_message_size=CAP, max_fragments=8)), data, mode)
        outcomes.append((outcome.written, outcome.actions, outcome.messages))
    assert outcomes[0] == outcomes[1] == outcomes[2]


@given(
    head=st.binary(max_size=300)
    | st.lists(
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"Host: x\r\n",
                b"Upgrade: websocket\r\n",
                b"Connection: Upgrade\r\n",
                b"Sec-WebSocket-Version: 13\r\n",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                b"\r\n",
                b"Origin: null\r\n",
                b"POST /x HTTP/1.0\r\n",
                b"X: " + b"y" * 200 + b"\r\n",
            ]
        ),
        max_size=12,
    ).map(b"".join)
)
@settings(max_examples=examples(300))
def test_any_request_bytes_get_a_verdict_or_wait(head: bytes) -> None:
    """Any bytes before the upgrade either wait for more, upgrade, or get an
    HTTP status from the documented set; nothing raises; and the verdict is
    the same whole, byte by byte, or in chunks."""
    cfg = config(max_header_bytes=256, max_request_line=128)
    outcomes = [feed(new_wire(cfg), head, mode) for mode in MODES]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    statuses = {a.status for a in outcomes[0].actions if isinstance(a, RejectUpgrade)}
    assert statuses <= {400, 403, 405, 414, 426, 431}
    if statuses:
        assert outcomes[0].written.startswith(b"HTTP/1.1 4")
