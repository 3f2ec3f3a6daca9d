"""ClientSession's calls, one by one: what it refuses and what it remembers."""

from __future__ import annotations

import random

import pytest

from tests.core.test_client_wire import INTERVAL
from wslifecycle import Config, ConnectionClosed, Scheduler, State
from wslifecycle.client import ClientSession, Outcome, ReconnectPolicy, Retry, Stop, client_config
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire.connection import ServerConnection


def connected(session: ClientSession) -> bool:
    """Read afresh (a property mypy would keep narrowed across calls)."""
    return session.connected


def make(policy: ReconnectPolicy | None = None) -> ClientSession:
    rng = random.Random(5)
    return ClientSession(
        "ws://h:1/",
        entropy=seeded_entropy(1),
        random_bytes=rng.randbytes,
        random=rng.random,
        policy=policy,
        config=client_config(heartbeat_interval=INTERVAL),
    )


def upgrade(session: ClientSession) -> ServerConnection:
    wire = session.connect(0.0, wall_time=1e9)
    server = ServerConnection(Scheduler(Config(allow_no_origin=True), seeded_entropy(9)), 0.0)
    server.receive_data(wire.data_to_send(), 0.0)
    wire.receive_data(server.data_to_send(), 0.0)
    assert wire.state is State.ACTIVE
    session.upgraded(0.0)
    return server


def test_sends_while_disconnected_raise_but_subscriptions_wait() -> None:
    session = make()
    assert not connected(session)
    assert session.receive(0.0) == []
    session.subscribe("a", 0.0)  # remembered
    with pytest.raises(ConnectionClosed, match="not connected"):
        session.send("x", 0.0)
    with pytest.raises(ConnectionClosed, match="not connected"):
        session.publish("a", {"x": 1}, 0.0)
    server = upgrade(session)
    assert session.connected
    assert session.connections == 1
    session.publish("a", [1], 0.0)
    session.send(b"raw", 0.0)
    session.unsubscribe("a", 0.0)
    wire = session.wire
    assert wire is not None
    server.receive_data(wire.data_to_send(), 0.0)
    got = [server.take_message(0.0) for _ in range(4)]
    assert got == [
        '{"type":"subscribe","channel":"a"}',
        '{"type":"publish","channel":"a","data":[1]}',
        b"raw",
        '{"type":"unsubscribe","channel":"a"}',
    ]


def test_a_second_connect_before_the_first_ended_is_a_bug() -> None:
    session = make()
    session.connect(0.0)
    with pytest.raises(RuntimeError, match="has not ended"):
        session.connect(0.0)


def test_closing_ends_the_connection_and_every_reconnect() -> None:
    session = make()
    server = upgrade(session)
    session.close(1.0, 1000, "bye")
    wire = session.wire
    assert wire is not None
    server.receive_data(wire.data_to_send(), 1.0)
    wire.receive_data(server.data_to_send(), 1.0)
    assert wire.state is State.CLOSED
    step = session.ended(1.0)
    assert isinstance(step, Stop)
    assert session.stopped is step
    with pytest.raises(ConnectionClosed, match="does not reconnect"):
        session.connect(2.0)
    session.close(2.0)  # again: nothing to close


def test_a_close_while_a_drop_is_in_flight_still_stops() -> None:
    session = make()
    upgrade(session)
    session.close(1.0)
    step = session.failed(1.0, Outcome(code=1006, reason="reset"))
    assert isinstance(step, Stop)
    assert step.outcome.local


def test_a_drop_retries_and_a_refusal_stops() -> None:
    session = make(ReconnectPolicy(base_delay=1.0))
    step = session.failed(0.0, Outcome(code=1006, reason="connection refused"))
    assert isinstance(step, Retry)
    assert 0 <= step.delay <= 1.0
    assert session.stopped is None
    step = session.failed(1.0, Outcome(status=403))
    assert isinstance(step, Stop)
    assert session.stopped is step


def test_a_message_seen_twice_reaches_the_application_once() -> None:
    session = make()
    server = upgrade(session)
    session.subscribe("a", 0.0)
    for text in (
        '{"type":"subscribed","channel":"a","seq":0,"epoch":"E"}',
        '{"type":"message","channel":"a","seq":1,"data":1}',
        '{"type":"message","channel":"a","seq":1,"data":1}',
        "not relay",
    ):
        server.send(text, 0.0, critical=True)
    wire = session.wire
    assert wire is not None
    wire.receive_data(server.data_to_send(), 0.0)
    received = session.receive(0.0)
    assert [r.data for r in received] == [
        '{"type":"subscribed","channel":"a","seq":0,"epoch":"E"}',
        '{"type":"message","channel":"a","seq":1,"data":1}',
        "not relay",
    ]
    assert received[2].frame is None
    assert session.subscriptions.duplicates == 1
