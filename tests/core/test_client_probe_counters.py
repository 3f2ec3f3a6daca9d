"""What a ClientConnection counts for ``wslifecycle probe``: the server's
pings and application heartbeats, when it last answered one, and the
server's close frame; a silent connection (``answer_pings = False``) counts
them too but answers neither."""

from __future__ import annotations

import base64

from wsproto.utilities import generate_accept_token

from wslifecycle import Scheduler
from wslifecycle.client import ClientConnection, client_config, parse_url
from wslifecycle.heartbeat import heartbeat_text
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire.frames import OP_PING, OP_TEXT, encode_close, encode_frame

#: Not random: ``random_bytes(n)`` gives 0..n-1, so the nonce is 0..15.
NONCE = bytes(range(16))


def upgraded(now: float = 0.0) -> ClientConnection:
    scheduler = Scheduler(client_config(heartbeat_interval=1000.0), seeded_entropy(1))
    wire = ClientConnection(
        scheduler, now, parse_url("ws://example.com/"), random_bytes=lambda n: bytes(range(n))
    )
    wire.data_to_send()  # the upgrade request
    accept = generate_accept_token(base64.b64encode(NONCE)).decode("ascii")
    wire.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode("ascii") + b"\r\n\r\n",
        now,
    )
    wire.take_actions()
    return wire


def test_a_ping_is_counted_and_its_pong_time_kept() -> None:
    wire = upgraded()
    assert (wire.pings_received, wire.answered_at, wire.peer_close) == (0, None, None)
    wire.receive_data(encode_frame(OP_PING, b"p1"), 1.5)
    assert (wire.pings_received, wire.answered_at) == (1, 1.5)
    assert wire.data_to_send()[:1] == b"\x8a"  # a pong, FIN set


def test_a_heartbeat_is_counted_and_its_echo_time_kept() -> None:
    wire = upgraded()
    wire.receive_data(encode_frame(OP_TEXT, heartbeat_text("ab").encode()), 2.0)
    assert (wire.heartbeats_received, wire.answered_at) == (1, 2.0)
    assert wire.data_to_send()[:1] == b"\x81"  # the echo, a text frame


def test_a_silent_connection_counts_but_does_not_answer() -> None:
    wire = upgraded()
    wire.receive_data(encode_frame(OP_PING, b"p1"), 1.0)
    wire.data_to_send()
    wire.answer_pings = False
    wire.receive_data(encode_frame(OP_PING, b"p2"), 2.0)
    wire.receive_data(encode_frame(OP_TEXT, heartbeat_text("cd").encode()), 3.0)
    assert (wire.pings_received, wire.heartbeats_received, wire.answered_at) == (2, 1, 1.0)
    assert wire.data_to_send() == b""


def test_the_servers_close_frame_is_kept() -> None:
    wire = upgraded()
    wire.receive_data(encode_close(1011, "keepalive ping timeout"), 4.0)
    assert wire.peer_close == (1011, "keepalive ping timeout")
