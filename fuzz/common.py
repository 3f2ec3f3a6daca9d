"""What both harnesses share: a wire to feed, and the checks on what it wrote."""

from __future__ import annotations

import itertools
import struct

from wslifecycle import Config, Scheduler, is_sendable
from wslifecycle.actions import Action, RejectUpgrade
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import ServerConnection

CONFIG = Config(
    allow_no_origin=True,
    max_message_size=4096,
    max_fragments=16,
    max_request_line=512,
    max_header_bytes=2048,
    max_headers=16,
    compression=True,
)
#: Statuses the wire may refuse an upgrade with (403/503 are the lifecycle's).
STATUSES = {400, 403, 405, 414, 426, 431, 503}
REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
)


def new_wire() -> ServerConnection:
    return ServerConnection(Scheduler(CONFIG, seeded_entropy(0)), 0.0)


def upgraded_wire() -> ServerConnection:
    wire = new_wire()
    wire.receive_data(REQUEST, 0.0)
    assert wire.data_to_send().startswith(b"HTTP/1.1 101 ")
    wire.take_events()
    return wire


def feed(wire: ServerConnection, chunks: list[bytes]) -> tuple[bytes, list[Action]]:
    """Feed chunks, checking the memory bound after each; return all output."""
    written = bytearray()
    events: list[Action] = []
    for chunk in chunks:
        wire.receive_data(chunk, 1.0)
        # Memory stays under the caps: a message cap plus one read (plus a
        # frame header and at most one control frame being assembled).
        assert wire.inbound_buffered <= CONFIG.max_message_size + len(chunk) + 256
        written += wire.data_to_send()
        events += wire.take_events()
    return bytes(written), events


def check_output(written: bytes, events: list[Action]) -> None:
    """Every refusal has a documented status; every close code is sendable."""
    for event in events:
        if isinstance(event, RejectUpgrade):
            assert event.status in STATUSES, event
    body = written
    if body.startswith(b"HTTP/1.1 101 "):
        body = body.partition(b"\r\n\r\n")[2]
    elif body.startswith(b"HTTP/1.1 "):
        return
    i = 0
    while i + 2 <= len(body):
        opcode, length = body[i] & 0x0F, body[i + 1] & 0x7F
        assert not body[i + 1] & 0x80, "a server frame must not be masked"
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", body[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", body[i : i + 8])
            i += 8
        if opcode == 0x8 and length >= 2:
            (code,) = struct.unpack("!H", body[i : i + 2])
            assert is_sendable(code), code
        i += length


def split(data: bytes, cuts: bytes) -> list[bytes]:
    """Chunks of ``data`` cut where the bytes of ``cuts`` say."""
    points = sorted({0, len(data), *(c * len(data) // 256 for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]
