"""Our server wire and an independent wsproto client, back to back over an
in-memory pipe, on a fake clock: messages, pings, drains and closes."""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)

from tests.wire.helpers import config
from wslifecycle import Config, Scheduler, State, TerminationCause
from wslifecycle.actions import Action, Terminate
from wslifecycle.testing import FakeClock, seeded_entropy
from wslifecycle.wire import ServerConnection


class Pipe:
    """One server (our wire) and one wsproto client joined by memory."""

    def __init__(self, cfg: Config) -> None:
        self.clock = FakeClock()
        self.scheduler = Scheduler(cfg, seeded_entropy(3))
        self.channels: dict[str, set[str]] = {}
        self.server = ServerConnection(self.scheduler, 0.0, release_channels=self._release)
        self.client = WSConnection(ConnectionType.CLIENT)
        self.client_events: list[Event] = []
        self.server_actions: list[Action] = []
        self.delivered: list[str | bytes] = []  # what the handler took, in order
        self.frozen = False  # a half-open client: nothing crosses either way
        self.answers_pings = True
        self.transport_closed = False
        self.server.receive_data(self.client.send(Request(host="localhost", target="/")), 0.0)
        self.flush()

    def _release(self, wire: ServerConnection, channels: tuple[str, ...], now: float) -> None:
        for name in channels:
            self.channels[name].discard(wire.id)

    def flush(self) -> None:
        """Move bytes both ways until nothing is left in flight."""
        while True:
            self.server_actions += self.server.take_actions()
            while (message := self.server.take_message(self.clock.now)) is not None:
                self.delivered.append(message)
            down = self.server.data_to_send()
            if self.server.ended:
                self.transport_closed = True
            if not down or self.frozen:
                return
            self.client.receive_data(down)
            up = b""
            for event in self.client.events():
                self.client_events.append(event)
                if (isinstance(event, Ping) and self.answers_pings) or (
                    isinstance(event, CloseConnection)
                    and self.client.state is ConnectionState.REMOTE_CLOSING
                ):
                    up += self.client.send(event.response())
            if up:
                self.server.receive_data(up, self.clock.now)

    def client_sends(self, event: Event) -> None:
        self.server.receive_data(self.client.send(event), self.clock.now)
        self.flush()

    def run_timers(self, until: float) -> None:
        """Fire the one timer at each deadline up to ``until``."""
        while (deadline := self.scheduler.next_deadline()) is not None and deadline <= until:
            self.clock.advance_to(deadline)
            self.scheduler.tick(deadline)
            self.server.pump(deadline)
            self.flush()
        self.clock.advance_to(max(self.clock.now, until))


def test_messages_flow_both_ways() -> None:
    """Text and binary from the client are delivered; what the server sends arrives."""
    pipe = Pipe(config())
    assert isinstance(pipe.client_events[0], AcceptConnection)
    pipe.client_sends(TextMessage("hello"))
    pipe.client_sends(BytesMessage(b"\x00\xff"))
    assert pipe.delivered == ["hello", b"\x00\xff"]
    pipe.server.send("welcome", pipe.clock.now)
    pipe.server.send(b"\x01", pipe.clock.now)
    pipe.flush()
    received = [e.data for e in pipe.client_events if isinstance(e, TextMessage | BytesMessage)]
    assert received == ["welcome", b"\x01"]


def test_a_client_that_answers_pings_stays_for_many_intervals() -> None:
    """A peer that answers within one interval is never terminated."""
    pipe = Pipe(config(heartbeat_interval=1.0))
    pipe.run_timers(50.0)
    assert pipe.server.lifecycle.state is State.ACTIVE
    pings = [e for e in pipe.client_events if isinstance(e, Ping)]
    assert 48 <= len(pings) <= 50
    assert pipe.server.lifecycle.latency == 0.0  # answered at once on a fake clock


def test_a_frozen_client_is_terminated_within_the_bound() -> None:
    """A half-open client (nothing crosses) is terminated, with no
    close frame, by t0 + (max_missed + 1) × interval."""
    pipe = Pipe(config(heartbeat_interval=1.0, max_missed_pongs=2))
    pipe.run_timers(5.0)
    pipe.frozen = True
    t0 = pipe.clock.now
    pipe.run_timers(t0 + 10.0)
    terminate = [a for a in pipe.server_actions if isinstance(a, Terminate)]
    assert terminate == [Terminate(TerminationCause.HEARTBEAT_TIMEOUT)]
    assert pipe.server.lifecycle.state is State.CLOSED
    assert pipe.transport_closed


def test_drain_closes_with_1001_after_releasing_channels() -> None:
    """A drain releases channels, then closes with 1001; the client
    echoes, and the server closes TCP first."""
    pipe = Pipe(config())
    lifecycle = pipe.server.lifecycle
    pipe.channels["news"] = {lifecycle.id}
    lifecycle.subscribe("news")
    pipe.scheduler.begin_drain(pipe.clock.now)
    pipe.server.pump(pipe.clock.now)
    pipe.flush()
    closes = [e for e in pipe.client_events if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [1001]
    assert pipe.channels["news"] == set()
    assert lifecycle.state is State.CLOSED
    assert lifecycle.cause is TerminationCause.SERVER_DRAINING
    assert pipe.transport_closed
    assert pipe.scheduler.drained


def test_a_client_close_is_echoed() -> None:
    """RFC 6455 §5.5.1: the client closes with 4000; the server echoes 4000."""
    pipe = Pipe(config())
    pipe.client_sends(CloseConnection(4000, "done"))
    closes = [e for e in pipe.client_events if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [4000]
    assert pipe.server.lifecycle.cause is TerminationCause.PEER_CLOSE
    assert pipe.transport_closed


def test_a_client_that_never_answers_our_close_is_terminated() -> None:
    """The closing handshake is bounded by close_timeout, then terminate."""
    pipe = Pipe(config(close_timeout=2.0))
    pipe.frozen = True
    pipe.server.close(pipe.clock.now, 1000)
    pipe.run_timers(pipe.clock.now + 3.0)
    assert Terminate(TerminationCause.CLOSE_TIMEOUT) in pipe.server_actions
    assert pipe.server.lifecycle.state is State.CLOSED
