"""A whole client session against a real in-memory relay node (``Hub``),
bytes carried in memory, on a fake clock, through any sequence of drops,
server restarts, subscriptions and publishes (Hypothesis).

What must hold at every step, for each channel the client follows:

* no message reaches the application twice, and within an epoch seqs only
  grow;
* every subscribe goes out once per connection for each wanted channel, no
  more, no fewer (none lost, none duplicated across drops);

and once the client is connected and caught up: every message published
since it first subscribed reached it, or lies inside a drift it was told
about (with a history long enough and no restart: simply every message).
"""

from __future__ import annotations

import itertools
import json
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests._hypothesis import examples
from wslifecycle import Config, State
from wslifecycle.client import ClientSession, Retry, client_config
from wslifecycle.hub import Hub
from wslifecycle.relay import handle_relay_message
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire.connection import ServerConnection

CHANNELS = ("a", "b")


class Session(RuleBasedStateMachine):
    """One ClientSession, one relay node that may restart (losing its history)."""

    @initialize(history=st.integers(3, 40))
    def start(self, history: int) -> None:
        self.now = 1.0
        self.history = history
        self.restarts = 0
        self.hub = self._new_hub()
        rng = random.Random(11)
        self.session = ClientSession(
            "ws://relay.test/",
            entropy=seeded_entropy(3),
            random_bytes=rng.randbytes,
            random=rng.random,
            config=client_config(heartbeat_interval=1000.0),
        )
        self.server: ServerConnection | None = None
        self.wanted: set[str] = set()
        self.first_wanted: dict[str, int] = {}  # when a channel was first wanted (publish count)
        # channel -> (epoch, seq) of every message published, in order
        self.published: dict[str, list[tuple[str, int]]] = {c: [] for c in CHANNELS}
        # channel -> [(epoch, seq)] delivered to the application, in order
        self.seen: dict[str, list[tuple[str | None, int]]] = {c: [] for c in CHANNELS}
        self.drifts: dict[str, list[dict[str, object]]] = {c: [] for c in CHANNELS}
        self.epoch: dict[str, str | None] = dict.fromkeys(CHANNELS)
        # Per connection: the channels subscribed on it (a second subscribe
        # for one already subscribed would be a duplicate).
        self.requests: list[set[str]] = []
        self._connect()

    def _new_hub(self) -> Hub:
        config = Config(allow_no_origin=True, heartbeat_interval=1000.0, history_size=self.history)
        return Hub(config, seeded_entropy(100 + self.restarts))

    def _connect(self) -> None:
        wire = self.session.connect(self.now)
        self.server = self.hub.open(self.now)
        self.requests.append(set())
        self._flow()
        assert wire.state is State.ACTIVE
        self.session.upgraded(self.now)
        self._flow()

    def _flow(self) -> None:
        session, server, hub = self.session, self.server, self.hub
        for _ in range(50):
            wire = session.wire
            assert wire is not None
            assert server is not None
            moved = False
            data = wire.data_to_send()
            if data and not server.ended:
                server.receive_data(data, self.now)
                for action in server.take_actions():
                    del action
                while (message := server.take_message(self.now)) is not None:
                    request = json.loads(message)
                    kind, channel = request.get("type"), request.get("channel")
                    if kind == "subscribe":
                        assert channel not in self.requests[-1], ("subscribed twice", channel)
                        self.requests[-1].add(channel)
                    elif kind == "unsubscribe":
                        self.requests[-1].remove(channel)
                    handle_relay_message(hub, server, message, self.now)
                hub.take_output(self.now)
                moved = True
            data = server.data_to_send()
            if data and not wire.ended:
                wire.receive_data(data, self.now)
                wire.take_actions()
                moved = True
            for received in session.receive(self.now):
                frame = received.frame
                assert frame is not None
                assert frame.channel is not None
                body = frame.body
                if frame.kind == "message":
                    self.seen[frame.channel].append((self.epoch[frame.channel], body["seq"]))  # type: ignore[arg-type]
                elif frame.kind == "drift":
                    self.drifts[frame.channel].append(body)
                    self.epoch[frame.channel] = body["epoch"]  # type: ignore[assignment]
                elif frame.kind == "subscribed":
                    self.epoch[frame.channel] = body["epoch"]  # type: ignore[assignment]
            if not moved:
                return

    def _drop(self, *, restart: bool) -> None:
        wire, server = self.session.wire, self.server
        assert wire is not None
        assert server is not None
        wire.transport_lost(self.now, "ConnectionResetError")
        server.transport_lost(self.now, "reset")
        self.hub.take_output(self.now)
        step = self.session.ended(self.now)
        assert isinstance(step, Retry)
        assert 0 <= step.delay <= self.session.reconnector.policy.window(step.attempt)
        self.now += step.delay + 0.001
        if restart:
            self.restarts += 1
            self.hub = self._new_hub()
        self._connect()

    # ------------------------------------------------------------ steps

    @rule(channel=st.sampled_from(CHANNELS))
    def subscribe(self, channel: str) -> None:
        if channel not in self.wanted:
            self.first_wanted.setdefault(channel, len(self.published[channel]))
        self.wanted.add(channel)
        self.session.subscribe(channel, self.now)
        self._flow()

    @rule(channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, channel: str) -> None:
        self.wanted.discard(channel)
        self.session.unsubscribe(channel, self.now)
        self._flow()
        # Gone for good: what it saw no longer has to be complete.
        self.first_wanted.pop(channel, None)

    @rule(channel=st.sampled_from(CHANNELS), count=st.integers(1, 12))
    def publish(self, channel: str, count: int) -> None:
        for _ in range(count):
            answer = self.hub.publish(channel, {"n": 1}, self.now)
            self.published[channel].append((answer.epoch, answer.seq))  # type: ignore[union-attr]
            self.hub.take_output(self.now)
        self._flow()

    @rule()
    def network_drop(self) -> None:
        self._drop(restart=False)

    @rule()
    def server_restart(self) -> None:
        self._drop(restart=True)

    @precondition(lambda self: self.session.connected)
    @rule(channel=st.sampled_from(CHANNELS), count=st.integers(1, 12))
    def publish_while_away(self, channel: str, count: int) -> None:
        """The client is cut off (its socket half-open) while messages go out."""
        wire, server = self.session.wire, self.server
        assert wire is not None
        assert server is not None
        server.transport_lost(self.now, "reset")
        self.hub.take_output(self.now)
        for _ in range(count):
            answer = self.hub.publish(channel, {"n": 2}, self.now)
            self.published[channel].append((answer.epoch, answer.seq))  # type: ignore[union-attr]
        wire.transport_lost(self.now, "reset")
        step = self.session.ended(self.now)
        assert isinstance(step, Retry)
        self.now += step.delay
        self._connect()

    # -------------------------------------------------------- invariants

    @invariant()
    def nothing_twice_and_seqs_grow(self) -> None:
        for channel, seen in self.seen.items():
            assert len(seen) == len(set(seen)), (channel, seen)
            for (e1, s1), (e2, s2) in itertools.pairwise(seen):
                assert e1 != e2 or s2 > s1, (channel, seen)

    @invariant()
    def every_wanted_channel_is_subscribed_on_the_connection(self) -> None:
        assert self.requests[-1] == self.wanted

    @invariant()
    def caught_up_means_complete_or_told(self) -> None:
        for channel, since in self.first_wanted.items():
            seen = set(self.seen[channel])
            drifts = self.drifts[channel]
            for epoch, seq in self.published[channel][since:]:
                told = any(
                    # A hole in this sequence, or the sequence itself gone.
                    (d["epoch"] == epoch and seq < d["oldest"]) or d["epoch"] != epoch  # type: ignore[operator]
                    for d in drifts
                )
                assert (epoch, seq) in seen or told, (
                    channel,
                    epoch,
                    seq,
                    self.seen[channel],
                    drifts,
                )
        if self.restarts == 0:
            for channel in self.wanted:
                assert not any(d["reason"] == "epoch" for d in self.drifts[channel])


Session.TestCase.settings = settings(
    max_examples=examples(200), stateful_step_count=30, deadline=None
)
TestClientSession = Session.TestCase
