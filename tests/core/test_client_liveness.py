"""The client judges the server by the server's own rule: a property test on
a fake clock, the timer firing late by any amount up to a lag."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from wslifecycle import Config, Scheduler, State, TerminationCause
from wslifecycle.client import ClientConnection, client_config, parse_url
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire.connection import ServerConnection


@settings(max_examples=examples(150), deadline=None)
@given(
    interval=st.floats(0.2, 30.0),
    max_missed=st.integers(1, 5),
    silent_after=st.floats(0.01, 60.0),
    lag=st.floats(0.0, 0.05),
    seed=st.integers(0, 2**16),
    server_pings=st.booleans(),
)
def test_a_dead_server_is_declared_dead_within_the_bound_a_live_one_never(
    interval: float, max_missed: int, silent_after: float, lag: float, seed: int, server_pings: bool
) -> None:
    """A server that answers (or pings) until ``silent_after`` and then says
    nothing more is dropped by the client no later than silent_after +
    (max_missed + 1) × interval + 2 × (timer slack + lag); never before."""
    rng = random.Random(seed)
    config = client_config(heartbeat_interval=interval, max_missed_pongs=max_missed)
    client_scheduler = Scheduler(config, seeded_entropy(seed))
    # The server pings at the client's interval, or (almost) never.
    server_interval = interval if server_pings else 1e6
    server_scheduler = Scheduler(
        Config(
            heartbeat_interval=server_interval, allow_no_origin=True, max_missed_pongs=max_missed
        ),
        seeded_entropy(seed + 1),
    )
    server = ServerConnection(server_scheduler, 0.0)
    client = ClientConnection(
        client_scheduler, 0.0, parse_url("ws://h/"), random_bytes=rng.randbytes
    )

    def flow(now: float) -> None:
        for _ in range(4):
            data = client.data_to_send()
            if data and now < silent_after:
                server.receive_data(data, now)
            data = server.data_to_send()
            if data and now < silent_after and not client.ended:
                client.receive_data(data, now)

    flow(0.0)
    assert client.state is State.ACTIVE
    now = 0.0
    horizon = silent_after + config.detection_bound + 2 * (config.effective_timer_slack + lag) + 1
    while not client.ended and now < horizon:
        wakeups = [
            w
            for w in (client_scheduler.next_wakeup(), server_scheduler.next_wakeup())
            if w is not None
        ]
        now = max(now, min(wakeups)) + rng.uniform(0.0, lag)
        server_scheduler.tick(now)
        server.pump(now)
        client_scheduler.tick(now)
        client.pump(now)
        flow(now)
    assert client.ended, "a silent server was never declared dead"
    assert client.lifecycle.cause is TerminationCause.HEARTBEAT_TIMEOUT
    bound = config.detection_bound + 2 * (config.effective_timer_slack + lag)
    assert now >= silent_after  # never while the server answered
    assert now - silent_after <= bound + 1e-9
    assert client.outcome is not None
    assert client.outcome.dead
