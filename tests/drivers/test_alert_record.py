"""Alerts that reach a driver through a wire are recorded in the hub, at the
driver's time, for the operator's page (drivers/_common.py: carry_out)."""

from __future__ import annotations

from tests.wire.helpers import upgrade_request
from wslifecycle import AlertKind, Config, TerminationCause
from wslifecycle.drivers._common import carry_out
from wslifecycle.fleet.memory import InMemoryBroker
from wslifecycle.fleet.ops import Detach, Op
from wslifecycle.handshake import HandshakeRequest
from wslifecycle.hub import Hub
from wslifecycle.testing import FakeClock, seeded_entropy
from wslifecycle.wire import ServerConnection


class Ops:
    """Transport operations that only note what was asked."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def write(self, data: bytes) -> None:
        self.done.append("write")

    def close(self) -> None:
        self.done.append("close")

    def abort(self) -> None:
        self.done.append("abort")

    def handshake(self, request: HandshakeRequest) -> None:
        self.done.append("handshake")

    def accepted(self) -> None:
        self.done.append("accepted")

    def messages_waiting(self) -> None:
        self.done.append("messages_waiting")

    def sync_reading(self, paused: bool) -> None:
        pass

    def closed(self) -> None:
        self.done.append("closed")


class Server:
    """What carry_out needs of a server: its hub and its clock."""

    def __init__(self, hub: Hub, clock: FakeClock) -> None:
        self.hub = hub
        self.now = clock

    def flush(self, wire: ServerConnection) -> None:
        carry_out(wire, Ops(), self)

    def flush_fleet(self, now: float) -> None:
        for wire in self.hub.take_output(now):
            self.flush(wire)

    def publish(self, channel: str, data: object) -> int:
        return 0


class FailingBroker(InMemoryBroker):
    """A broker whose presence cannot be left (one that breaks mid-teardown)."""

    def __init__(self) -> None:
        super().__init__(history_size=10, history_ttl=60.0)

    def submit(self, now: float, op: Op) -> None:
        if isinstance(op, Detach):
            raise RuntimeError("broker down")
        super().submit(now, op)


def active(hub: Hub, server: Server) -> ServerConnection:
    wire = hub.open(server.now())
    wire.receive_data(upgrade_request(), server.now())
    carry_out(wire, Ops(), server)
    return wire


def test_a_slow_consumer_is_recorded_with_the_bytes_it_left_unsent() -> None:
    clock = FakeClock(40.0)
    hub = Hub(
        Config(allow_no_origin=True, write_buffer_guard=1024, max_write_buffer=4096),
        seeded_entropy(2),
    )
    server = Server(hub, clock)
    wire = active(hub, server)
    wire.write_buffer_size = 5000
    clock.advance(2.5)
    assert wire.send("more", clock(), critical=True) is None
    ops = Ops()
    carry_out(wire, ops, server)
    assert "abort" in ops.done
    (record,) = hub.recent_alerts
    assert wire.lifecycle.cause is TerminationCause.SLOW_CONSUMER
    assert (record.at, record.alert.kind, record.alert.connection_id) == (
        42.5, AlertKind.SLOW_CONSUMER, wire.id,
    )  # fmt: skip
    assert record.alert.value == 5000
    assert record.alert.detail == "5000 bytes unsent; terminated"


def test_a_teardown_failure_is_recorded_and_other_terminations_are_not() -> None:
    clock = FakeClock(7.0)
    hub = Hub(Config(allow_no_origin=True), seeded_entropy(2), broker=FailingBroker())
    server = Server(hub, clock)
    quiet, failing = active(hub, server), active(hub, server)
    quiet.terminate(clock(), TerminationCause.SERVER_STOPPED)  # no channels: nothing to fail
    carry_out(quiet, Ops(), server)
    hub.subscribe(failing, "news")
    failing.terminate(clock(), TerminationCause.SERVER_STOPPED)
    carry_out(failing, Ops(), server)
    (record,) = hub.recent_alerts
    assert (record.at, record.alert.kind) == (7.0, AlertKind.TEARDOWN_FAILED)
    assert record.alert.detail == "RuntimeError: broker down"
    without_server = active(hub, server)
    hub.subscribe(without_server, "news")
    without_server.terminate(clock(), TerminationCause.SERVER_STOPPED)
    carry_out(without_server, Ops())  # no server given: logged, not recorded
    assert len(hub.recent_alerts) == 1
