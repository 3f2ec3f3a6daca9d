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
    wire.take_actions()
    return wire


#: All a wire gave for some input: bytes written, the driver's actions, and
#: the messages delivered to the handler (taken from its inbox after each read).
Output = tuple[bytes, list[Action], list[str | bytes]]


def feed(wire: ServerConnection, chunks: list[bytes]) -> Output:
    """Feed chunks, checking the memory bound after each; return all output."""
    written = bytearray()
    actions: list[Action] = []
    messages: list[str | bytes] = []
    for chunk in chunks:
        wire.receive_data(chunk, 1.0)
        # Memory stays under the caps: a message cap plus one read (plus a
        # frame header and at most one control frame being assembled).
        assert wire.inbound_buffered <= CONFIG.max_message_size + len(chunk) + 256
        written += wire.data_to_send()
        actions += wire.take_actions()
        while (message := wire.take_message(1.0)) is not None:
            messages.append(message)
        assert wire.messages_waiting == 0
    return bytes(written), actions, messages


def check_output(written: bytes, actions: list[Action], messages: list[str | bytes]) -> None:
    """Every refusal has a documented status; every message is within the
    cap; every close code is sendable."""
    for action in actions:
        if isinstance(action, RejectUpgrade):
            assert action.status in STATUSES, action
    for message in messages:
        # A str has no more characters than its UTF-8 bytes.
        assert len(message) <= CONFIG.max_message_size, len(message)
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
