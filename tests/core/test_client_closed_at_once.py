"""A server that closes right after its 101, in the same read (a 1008 from
a handshake hook that accepted, then changed its mind): the driver acts on
AcceptUpgrade when the wire has already left ACTIVE. The connection counts,
nothing is sent on it, and the 1008 stops the client."""

from __future__ import annotations

import base64
import itertools
import struct
from collections.abc import Callable

from wsproto.utilities import generate_accept_token

from wslifecycle import Entropy, State
from wslifecycle.actions import AcceptUpgrade, CloseTransport
from wslifecycle.client import ClientSession, Retry, Stop, client_config


def counter_bytes() -> tuple[list[bytes], Callable[[int], bytes]]:
    """Deterministic 'random' bytes, and the list of what was drawn."""
    drawn: list[bytes] = []
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        data = bytes(next(counter) % 256 for _ in range(n))
        drawn.append(data)
        return data

    return drawn, random_bytes


def test_a_close_in_the_same_read_as_the_101() -> None:
    ids = itertools.count()
    entropy = Entropy(connection_id=lambda: f"c{next(ids)}", probe_payload=lambda: b"p")
    drawn, random_bytes = counter_bytes()
    session = ClientSession(
        "ws://example.test/feed",
        entropy=entropy,
        random_bytes=random_bytes,
        random=lambda: 0.5,
        config=client_config(heartbeat_interval=5.0),
    )
    session.subscribe("news", 0.0)  # remembered: sent on a connection that stays
    wire = session.connect(0.0)
    assert wire.data_to_send().startswith(b"GET /feed HTTP/1.1\r\n")
    key = base64.b64encode(drawn[0])
    accept = generate_accept_token(key).decode()
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()
    reason = b"not welcome"
    close = bytes([0x88, 2 + len(reason)]) + struct.pack("!H", 1008) + reason
    wire.receive_data(response + close, 0.1)
    kinds = [type(action) for action in wire.take_actions()]
    # Both close frames crossed in that read: the wire is done with TCP too.
    assert kinds.index(AcceptUpgrade) < kinds.index(CloseTransport)
    assert wire.state is State.CLOSED
    sent = wire.data_to_send()
    assert sent[0] == 0x88  # our close frame, echoing the server's
    session.upgraded(0.1)  # the driver acts on AcceptUpgrade now
    assert session.connections == 1
    assert wire.data_to_send() == b""  # no subscribe on a closed connection
    step = session.ended(0.2)
    assert isinstance(step, Stop)
    assert step.outcome.code == 1008
    assert step.outcome.reason == "not welcome"


def test_an_eof_before_any_answer_is_1006_and_reconnects() -> None:
    """A server killed (or restarting) with our request in its backlog
    closes without an HTTP answer: no status to judge, a lost transport."""
    ids = itertools.count()
    entropy = Entropy(connection_id=lambda: f"c{next(ids)}", probe_payload=lambda: b"p")
    _, random_bytes = counter_bytes()
    session = ClientSession(
        "ws://example.test/", entropy=entropy, random_bytes=random_bytes, random=lambda: 0.5
    )
    wire = session.connect(0.0)
    wire.data_to_send()
    wire.receive_eof(0.5)
    assert any(isinstance(action, CloseTransport) for action in wire.take_actions())
    assert wire.refusal is None
    step = session.ended(0.5)
    assert isinstance(step, Retry), step
    assert step.outcome.code == 1006
    assert step.outcome.status is None
    assert step.outcome.reason == "the server closed the connection before answering"
