"""A Hypothesis state machine over a scheduler and its connections.

Rules play a driver and misbehaving peers against a small model (the
channels each connection holds, whether its channels were released, the
last probe payload); invariants are checked after every step. Each invariant
states its rule in its docstring.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests._hypothesis import examples
from wslifecycle import (
    Config,
    ConnectionClosed,
    ConnectionLifecycle,
    InvalidCloseCode,
    InvalidTransition,
    Scheduler,
    State,
    TerminationCause,
    is_sendable,
)
from wslifecycle.actions import (
    Action,
    Alert,
    ReleaseChannels,
    SendClose,
    SendHeartbeat,
    SendMessage,
    SendPing,
    StateChanged,
    Terminate,
)
from wslifecycle.causes import AlertKind
from wslifecycle.testing import FakeClock, seeded_entropy
from wslifecycle.testing.strategies import close_codes, configs

CHANNELS = st.sampled_from(["news", "chat", "presence", "prices"])
PEER_FAILURES = st.sampled_from(
    [
        (TerminationCause.PROTOCOL_ERROR, 1002),
        (TerminationCause.INVALID_PAYLOAD, 1007),
        (TerminationCause.MESSAGE_TOO_BIG, 1009),
        (TerminationCause.POLICY_VIOLATION, 1008),
    ]
)


class Model:
    """What the test knows about one connection, kept beside the real one."""

    def __init__(self) -> None:
        self.rank = 0
        self.closed = False
        self.released = False
        self.channels: set[str] = set()
        self.last_ping: bytes | None = None
        self.last_heartbeat: str | None = None


class LifecycleMachine(RuleBasedStateMachine):
    conns = Bundle("conns")

    @initialize(config=configs(allow_no_origin=True), seed=st.integers(0, 2**32))
    def start(self, config: Config, seed: int) -> None:
        self.config = config
        self.clock = FakeClock(100.0)
        self.scheduler = Scheduler(config, seeded_entropy(seed))
        self.models: dict[str, Model] = {}
        self.stall_ticks = 0

    # ---------------------------------------------------------------- helpers

    def collect(self, lifecycle: ConnectionLifecycle) -> list[Action]:
        """Take a connection's actions and check them against the model."""
        model = self.models[lifecycle.id]
        actions = lifecycle.take_actions()
        if model.closed:
            assert not actions, f"emitted after CLOSED: {actions}"
        for action in actions:
            if isinstance(action, StateChanged):
                assert action.previous.rank == model.rank
                assert action.current.rank > model.rank, "a state moved backwards"
                model.rank = action.current.rank
            elif isinstance(action, ReleaseChannels):
                assert set(action.channels) == model.channels, "released the wrong channels"
                model.channels.clear()
                model.released = True
            elif isinstance(action, SendMessage | SendPing | SendHeartbeat):
                assert not model.released, f"{action} after the channels were released"
                if isinstance(action, SendPing):
                    model.last_ping = action.payload
                elif isinstance(action, SendHeartbeat):
                    model.last_heartbeat = action.text
            elif isinstance(action, SendClose):
                assert is_sendable(action.code), action
                assert model.released, "close frame before the channels were released"
            elif isinstance(action, Terminate):
                assert not model.channels, "terminated while holding channels"
        if lifecycle.state is State.CLOSED:
            model.closed = True
        return actions

    def tick(self) -> None:
        for lifecycle in self.scheduler.tick(self.clock.now):
            actions = self.collect(lifecycle)
            if self.stalled:
                assert not [a for a in actions if isinstance(a, Terminate)]
        for alert in self.scheduler.take_alerts():
            assert alert.kind is AlertKind.LOOP_STALL
            assert alert.value > self.config.effective_stall_threshold

    # ------------------------------------------------------------------ rules

    @rule(target=conns, upgrade=st.booleans(), good_origin=st.booleans())
    def connect(self, upgrade: bool, good_origin: bool) -> ConnectionLifecycle:
        lifecycle = self.scheduler.open(self.clock.now)
        self.models[lifecycle.id] = Model()
        if upgrade:
            origin = None if good_origin else "https://evil.example"
            accepted = lifecycle.request_upgrade(self.clock.now, origin=origin, host="localhost")
            assert accepted == (good_origin and not self.scheduler.draining)
        self.collect(lifecycle)
        return lifecycle

    @rule(lifecycle=conns)
    def upgrade(self, lifecycle: ConnectionLifecycle) -> None:
        if lifecycle.state is State.OPEN:
            lifecycle.request_upgrade(self.clock.now, origin=None, host="localhost")
        else:
            with pytest.raises(InvalidTransition):
                lifecycle.request_upgrade(self.clock.now, origin=None, host="localhost")
        self.collect(lifecycle)

    @rule(fraction=st.floats(0.0, 0.99))
    def timer_fires_on_time_or_a_little_late(self, fraction: float) -> None:
        deadline = self.scheduler.next_deadline()
        if deadline is None:
            return
        lateness = fraction * self.config.effective_stall_threshold
        self.clock.advance_to(max(self.clock.now, deadline + lateness))
        self.stalled = self.clock.now - deadline > self.config.effective_stall_threshold
        self.tick()

    @rule(seconds=st.floats(0.0, 100.0))
    def time_passes(self, seconds: float) -> None:
        """Time jumps; the timer fires once, maybe as a stall."""
        deadline = self.scheduler.next_deadline()
        self.clock.advance(seconds)
        self.stalled = (
            deadline is not None
            and self.clock.now - deadline > self.config.effective_stall_threshold
        )
        self.tick()

    @rule(lifecycle=conns, matching=st.booleans())
    def pong(self, lifecycle: ConnectionLifecycle, matching: bool) -> None:
        model = self.models[lifecycle.id]
        payload = model.last_ping if matching and model.last_ping else b"unsolicited"
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.receive_pong(self.clock.now, payload)
            return
        lifecycle.receive_pong(self.clock.now, payload)
        if lifecycle.state is not State.CLOSED:
            assert lifecycle.missed_pongs == 0, "any pong resets the missed count"
        self.collect(lifecycle)

    @rule(lifecycle=conns, echo=st.booleans(), data=st.text(max_size=10) | st.binary(max_size=10))
    def message(self, lifecycle: ConnectionLifecycle, echo: bool, data: str | bytes) -> None:
        model = self.models[lifecycle.id]
        if echo and model.last_heartbeat:
            data = model.last_heartbeat
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.receive_message(self.clock.now, data)
            return
        lifecycle.receive_message(self.clock.now, data)
        self.collect(lifecycle)

    @rule(
        lifecycle=conns,
        data=st.text(max_size=10),
        critical=st.booleans(),
        buffered=st.integers(0, 2 * 1024 * 1024),
    )
    def send(
        self, lifecycle: ConnectionLifecycle, data: str, critical: bool, buffered: int
    ) -> None:
        state = lifecycle.state
        if state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.send(data, buffered=buffered, critical=critical)
        elif state is not State.ACTIVE:
            with pytest.raises(ConnectionClosed):
                lifecycle.send(data, buffered=buffered, critical=critical)
        else:
            before = lifecycle.seq
            seq = lifecycle.send(data, buffered=buffered, critical=critical)
            slow = buffered >= self.config.max_write_buffer
            skipped = slow or (not critical and buffered >= self.config.write_buffer_guard)
            assert (seq is None) == skipped
            assert lifecycle.seq == before + (0 if skipped else 1)
            if slow:  # the slow-consumer policy terminated it
                assert lifecycle.cause is not None
                assert lifecycle.state is State.CLOSED
        self.collect(lifecycle)

    @rule(lifecycle=conns, channel=CHANNELS, join=st.booleans())
    def channel(self, lifecycle: ConnectionLifecycle, channel: str, join: bool) -> None:
        model = self.models[lifecycle.id]
        if not join:
            if lifecycle.state is State.OPEN:
                with pytest.raises(InvalidTransition):
                    lifecycle.unsubscribe(channel)
            else:
                lifecycle.unsubscribe(channel)
                model.channels.discard(channel)
        elif lifecycle.state is State.ACTIVE:
            lifecycle.subscribe(channel)
            model.channels.add(channel)
        else:
            error = InvalidTransition if lifecycle.state is State.OPEN else ConnectionClosed
            with pytest.raises(error):
                lifecycle.subscribe(channel)
        assert lifecycle.channels == frozenset(model.channels)
        self.collect(lifecycle)

    @rule(lifecycle=conns, seq=st.integers(0, 20))
    def client_reports_seq(self, lifecycle: ConnectionLifecycle, seq: int) -> None:
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.report_client_seq(self.clock.now, seq)
            return
        lifecycle.report_client_seq(self.clock.now, seq)
        self.collect(lifecycle)

    @rule(lifecycle=conns, code=close_codes)
    def application_closes(self, lifecycle: ConnectionLifecycle, code: int) -> None:
        if not is_sendable(code):
            with pytest.raises(InvalidCloseCode):
                lifecycle.close(self.clock.now, code)
        elif lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.close(self.clock.now, code)
        else:
            lifecycle.close(self.clock.now, code)
            assert lifecycle.state is not State.ACTIVE
        self.collect(lifecycle)

    @rule(lifecycle=conns, code=st.none() | st.sampled_from([1000, 1001, 3000, 4999]))
    def peer_closes(self, lifecycle: ConnectionLifecycle, code: int | None) -> None:
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.receive_close(self.clock.now, code)
            return
        lifecycle.receive_close(self.clock.now, code)
        self.collect(lifecycle)

    @rule(lifecycle=conns, failure=PEER_FAILURES)
    def peer_misbehaves(
        self, lifecycle: ConnectionLifecycle, failure: tuple[TerminationCause, int]
    ) -> None:
        cause, code = failure
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.fail(self.clock.now, cause, code)
            return
        lifecycle.fail(self.clock.now, cause, code)
        self.collect(lifecycle)

    @rule(lifecycle=conns)
    def handler_raises(self, lifecycle: ConnectionLifecycle) -> None:
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.handler_failed(self.clock.now, "boom")
            return
        lifecycle.handler_failed(self.clock.now, "boom")
        self.collect(lifecycle)

    @rule(lifecycle=conns)
    def handler_returns(self, lifecycle: ConnectionLifecycle) -> None:
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                lifecycle.handler_returned(self.clock.now)
            return
        was_active = lifecycle.state is State.ACTIVE
        lifecycle.handler_returned(self.clock.now)
        if was_active:
            assert lifecycle.state is State.DRAINING
            assert lifecycle.cause is TerminationCause.APPLICATION_CLOSE
        self.collect(lifecycle)

    @rule(lifecycle=conns, pause=st.booleans())
    def handler_falls_behind_or_catches_up(
        self, lifecycle: ConnectionLifecycle, pause: bool
    ) -> None:
        step = lifecycle.pause_reading if pause else lifecycle.resume_reading
        if lifecycle.state is State.OPEN:
            with pytest.raises(InvalidTransition):
                step(self.clock.now)
            return
        step(self.clock.now)
        assert not self.collect(lifecycle), "pausing or resuming reading emits nothing"

    @rule(lifecycle=conns, ok=st.booleans(), buffered=st.integers(0, 2 * 1024 * 1024))
    def driver_releases_channels(
        self, lifecycle: ConnectionLifecycle, ok: bool, buffered: int
    ) -> None:
        def acknowledge() -> None:
            if ok:
                lifecycle.channels_released(self.clock.now, buffered=buffered)
            else:
                lifecycle.channel_release_failed(self.clock.now, "broker down")

        if lifecycle.state in (State.OPEN, State.ACTIVE):  # nothing to acknowledge
            with pytest.raises(InvalidTransition):
                acknowledge()
            return
        acknowledge()
        actions = self.collect(lifecycle)
        if not ok and any(isinstance(a, SendClose) for a in actions):
            assert [a.code for a in actions if isinstance(a, SendClose)] == [1011]
            assert any(isinstance(a, Alert) for a in actions)

    @rule(lifecycle=consumes(conns), reset=st.booleans())
    def transport_ends(self, lifecycle: ConnectionLifecycle, reset: bool) -> None:
        if reset:
            lifecycle.transport_lost(self.clock.now, "reset")
        else:
            lifecycle.terminate(self.clock.now, TerminationCause.SLOW_CONSUMER)
        self.collect(lifecycle)
        assert lifecycle.state is State.CLOSED

    @precondition(lambda self: not self.scheduler.draining)
    @rule()
    def server_drains(self) -> None:
        for lifecycle in self.scheduler.begin_drain(self.clock.now):
            self.collect(lifecycle)
            assert lifecycle.state in (State.DRAINING, State.CLOSED)
        assert self.scheduler.draining

    # ------------------------------------------------------------- invariants

    stalled = False

    @invariant()
    def every_live_connection_has_one_deadline(self) -> None:
        """Every connection not CLOSED has a deadline (so it always ends), and
        CLOSED ones are neither live nor scheduled."""
        if not hasattr(self, "scheduler"):
            return
        for lifecycle in self.scheduler.connections:
            assert lifecycle.state is not State.CLOSED
            assert lifecycle.deadline is not None
        live = {lc.id for lc in self.scheduler.connections}
        closed = {cid for cid, model in self.models.items() if model.closed}
        assert not live & closed

    @invariant()
    def metrics_count_connections_by_state(self) -> None:
        """The per-state gauges equal the states of the connections."""
        if not hasattr(self, "scheduler"):
            return
        counts = self.scheduler.metrics.snapshot().connections
        live = list(self.scheduler.connections)
        for state in (State.OPEN, State.ACTIVE, State.DRAINING):
            assert counts[state] == sum(1 for lc in live if lc.state is state)
        assert counts[State.CLOSED] == sum(1 for m in self.models.values() if m.closed)

    @invariant()
    def reading_pauses_only_while_active_and_closing_steps_only_while_draining(
        self,
    ) -> None:
        """Reading is paused only on an ACTIVE connection (a closing one must
        read the peer's close frame), and only a DRAINING connection has a
        closing step."""
        if not hasattr(self, "scheduler"):
            return
        for lifecycle in self.scheduler.connections:
            if lifecycle.reading_paused:
                assert lifecycle.state is State.ACTIVE
            assert (lifecycle.closing_step is not None) == (lifecycle.state is State.DRAINING)

    @invariant()
    def draining_refuses_new_work(self) -> None:
        """While the server drains, no connection is ACTIVE for long: every
        one was sent to DRAINING or refused."""
        if not hasattr(self, "scheduler") or not self.scheduler.draining:
            return
        opened_before = [lc for lc in self.scheduler.connections if lc.state is State.ACTIVE]
        assert not opened_before


LifecycleMachine.TestCase.settings = settings(
    max_examples=examples(150), stateful_step_count=40, deadline=None
)
TestLifecycleMachine = LifecycleMachine.TestCase
