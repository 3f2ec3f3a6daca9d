"""Hypothesis over interleavings: three nodes on one simulated Redis.

Every step is one thing that can happen in a fleet, in any order: a client
publishes on any node; Redis runs the next command a node sent, or the
next (un)subscribe; a node hears the next reply or pub/sub notice; a client
falls behind (its sends are skipped) or catches up; a node loses Redis and
gets it back; Redis restarts empty; a client resumes with ``since``.

What every client sees must always read as one sequence per channel: each
``message`` is the next seq after the last one, unless a ``drift`` just
said where the sequence goes on (``since`` = its last seq, then
``oldest``); no duplicate, no hole, no seq compared across epochs. And at
the end, with Redis back and every queue drained, every subscriber has got
(or been told it lost) everything up to the channel's last seq.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests._hypothesis import examples
from tests.wire.helpers import parse_server_frames, upgrade_request
from wslifecycle import Config
from wslifecycle.fleet.ops import (
    Answer,
    Attach,
    BrokerSink,
    Detach,
    Done,
    Event,
    Failed,
    Fetch,
    Ids,
    Listen,
    Live,
    Members,
    Op,
    Presence,
    Publish,
    Refresh,
    Stored,
    Unlisten,
    Window,
)
from wslifecycle.hub import Hub
from wslifecycle.relay import handle_relay_message
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import ServerConnection

NODES = 3
CHANNEL = "c"
HISTORY = 4  # short, so resumes and outages outrun it


class SimRedis:
    """One Redis as the scripts behave: atomic ops, pub/sub in execution order."""

    def __init__(self) -> None:
        self.restarts = 0
        self.clear()

    def clear(self) -> None:
        self.epoch: str | None = None
        self.top = 0
        self.history: deque[tuple[int, str]] = deque(maxlen=HISTORY)
        self.presence: set[str] = set()
        self.listeners: set[int] = set()

    def run(self, node: int, op: Op, nodes: list[SimBroker]) -> Answer | None:
        if isinstance(op, Listen):
            self.listeners.add(node)
            nodes[node].notices.append(("listening", op.channel))
            return None
        if isinstance(op, Unlisten):
            self.listeners.discard(node)
            return None
        events: list[Event] = []
        answer: Answer
        if isinstance(op, Publish | Attach | Fetch) and self.epoch is None:
            self.epoch = op.epoch
        if isinstance(op, Publish):
            assert self.epoch is not None
            self.top += 1
            self.history.append((self.top, op.data))
            answer = Stored(self.epoch, self.top, len(self.presence))
            events.append(Live(op.channel, self.epoch, self.top, op.data))
        elif isinstance(op, Attach | Fetch):
            assert self.epoch is not None
            after = op.after if isinstance(op, Fetch) else op.since
            oldest = self.history[0][0] if self.history else self.top + 1
            entries = () if after is None else tuple(e for e in self.history if e[0] > after)
            answer = Window(self.epoch, self.top, oldest, entries)
            if isinstance(op, Attach) and op.member not in self.presence:
                self.presence.add(op.member)
                events.append(Presence(op.channel, op.member, True))
        elif isinstance(op, Detach):
            if op.member in self.presence:
                self.presence.discard(op.member)
                events.append(Presence(op.channel, op.member, False))
            answer = Done()
        elif isinstance(op, Members):
            answer = Ids(tuple(sorted(self.presence)))
        else:
            assert isinstance(op, Refresh)
            self.presence.update(op.members)
            answer = Done()
        for listener in sorted(self.listeners):
            nodes[listener].notices.extend(("event", event) for event in events)
        return answer


class SimBroker:
    """A node's link to :class:`SimRedis`: queues both ways, lost on an outage."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.up = True
        self.sink: BrokerSink | None = None
        self.commands: deque[Op] = deque()  # sent, not yet run by Redis
        self.listens: deque[Op] = deque()  # (un)subscribes, on their own connection
        self.replies: deque[tuple[int, Answer]] = deque()  # run, answer not yet heard
        self.notices: deque[tuple[str, Any]] = deque()  # pub/sub, not yet heard

    def bind(self, sink: BrokerSink) -> None:
        self.sink = sink

    def start(self, now: float) -> None:
        pass

    def sweep(self, now: float) -> None:
        pass

    def next_wakeup(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def submit(self, now: float, op: Op) -> None:
        if isinstance(op, Listen | Unlisten):
            if self.up:
                self.listens.append(op)
            return
        if not self.up:
            assert self.sink is not None
            self.sink.answer(now, op.id, Failed("redis unavailable"))
            return
        self.commands.append(op)

    def lose(self, redis: SimRedis, now: float) -> None:
        """The connection breaks: everything in flight fails, subscriptions go."""
        assert self.sink is not None
        self.up = False
        failed = [op.id for op in self.commands if not isinstance(op, Listen | Unlisten)]
        failed += [op_id for op_id, _ in self.replies]
        self.commands.clear()
        self.replies.clear()
        self.listens.clear()
        self.notices.clear()
        redis.listeners.discard(self.index)
        for op_id in failed:
            self.sink.answer(now, op_id, Failed("connection lost", lost=True))
        self.sink.broker_down(now, "connection lost")


class Client:
    """What one connection has read, checked frame by frame."""

    def __init__(self, wire: ServerConnection) -> None:
        self.wire = wire
        self.epoch: str | None = None
        self.last: int | None = None  # None: not subscribed yet
        self.asked_since: int | None = None  # a resume: from this seq...
        self.asked_epoch: str | None = None  # ...of this epoch
        self.slow = False

    def read(self) -> None:
        for frame in parse_server_frames(self.wire.data_to_send()):
            if frame.opcode != 0x1:
                continue
            message = json.loads(frame.payload)
            kind = message["type"]
            if kind == "subscribed":
                if self.asked_since is None:
                    self.epoch, self.last = message["epoch"], message["seq"]
                else:  # the replay (or a drift) goes on from where it asked
                    self.epoch, self.last = self.asked_epoch, self.asked_since
            elif kind == "drift":
                assert message["since"] == self.last, (message, self.last)
                assert message["oldest"] > message["since"] or message["epoch"] != self.epoch
                self.epoch = message["epoch"]
                self.last = message["oldest"] - 1
            elif kind == "message" and "seq" in message:
                assert self.last is not None
                assert message["seq"] == self.last + 1, (message, self.last)
                self.last = message["seq"]


class Fleet(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1.0
        self.redis = SimRedis()
        self.brokers = [SimBroker(i) for i in range(NODES)]
        config = Config(
            allow_no_origin=True,
            heartbeat_interval=1000.0,
            write_buffer_guard=100,
            history_size=HISTORY,
        )
        self.hubs = [Hub(config, seeded_entropy(i), broker=self.brokers[i]) for i in range(NODES)]
        self.clients: list[tuple[int, Client]] = []
        for node, hub in enumerate(self.hubs):
            for _ in range(2):
                wire = hub.open(0.0)
                wire.receive_data(upgrade_request(), 0.0)
                wire.data_to_send()
                wire.take_actions()
                client = Client(wire)
                self.clients.append((node, client))
                self._relay(node, client, {"type": "subscribe", "channel": CHANNEL})
        self.published = 0

    def _relay(self, node: int, client: Client, message: dict[str, object]) -> None:
        hub = self.hubs[node]
        handle_relay_message(hub, client.wire, json.dumps(message), self.now)
        hub.take_output(self.now)
        client.read()

    def _settle(self, node: int) -> None:
        self.hubs[node].take_output(self.now)
        for where, client in self.clients:
            if where == node:
                client.wire.write_buffer_size = 1000 if client.slow else 0
                client.read()

    # ------------------------------------------------------------ steps

    @rule(client=st.integers(0, 2 * NODES - 1))
    def publish(self, client: int) -> None:
        node, who = self.clients[client]
        self.published += 1
        self._relay(node, who, {"type": "publish", "channel": CHANNEL, "data": self.published})

    @rule(client=st.integers(0, 2 * NODES - 1), count=st.integers(2, 2 * HISTORY))
    def publish_a_burst(self, client: int, count: int) -> None:
        for _ in range(count):
            self.publish(client)

    @rule(node=st.integers(0, NODES - 1))
    def node_catches_up(self, node: int) -> None:
        """The common case: Redis and the node get through all that is queued."""
        broker = self.brokers[node]
        while broker.listens or broker.commands or broker.replies or broker.notices:
            self.redis_runs_a_subscribe(node)
            self.redis_runs_a_command(node)
            self.node_hears_a_reply(node)
            self.node_hears_a_notice(node)

    @rule(node=st.integers(0, NODES - 1))
    def redis_runs_a_command(self, node: int) -> None:
        broker = self.brokers[node]
        if broker.commands:
            op = broker.commands.popleft()
            answer = self.redis.run(node, op, self.brokers)
            assert answer is not None
            assert hasattr(op, "id")
            broker.replies.append((op.id, answer))

    @rule(node=st.integers(0, NODES - 1))
    def redis_runs_a_subscribe(self, node: int) -> None:
        broker = self.brokers[node]
        if broker.listens:
            self.redis.run(node, broker.listens.popleft(), self.brokers)

    @rule(node=st.integers(0, NODES - 1))
    def node_hears_a_reply(self, node: int) -> None:
        broker = self.brokers[node]
        if broker.replies:
            op_id, answer = broker.replies.popleft()
            assert broker.sink is not None
            broker.sink.answer(self.now, op_id, answer)
            self._settle(node)

    @rule(node=st.integers(0, NODES - 1))
    def node_hears_a_notice(self, node: int) -> None:
        broker = self.brokers[node]
        if broker.notices:
            kind, what = broker.notices.popleft()
            assert broker.sink is not None
            if kind == "listening":
                broker.sink.listening(self.now, what)
            else:
                broker.sink.event(self.now, what)
            self._settle(node)

    @rule(client=st.integers(0, 2 * NODES - 1), slow=st.booleans())
    def client_falls_behind_or_catches_up(self, client: int, slow: bool) -> None:
        _node, who = self.clients[client]
        who.slow = slow
        who.wire.write_buffer_size = 1000 if slow else 0

    @rule(node=st.integers(0, NODES - 1))
    def time_passes(self, node: int) -> None:
        """The node's one timer fires: leases, and drift for whoever drained."""
        self.now += 1.0
        self.hubs[node].handle_timer(self.now)
        self._settle(node)

    @rule(node=st.integers(0, NODES - 1))
    def node_loses_redis(self, node: int) -> None:
        broker = self.brokers[node]
        if broker.up:
            broker.lose(self.redis, self.now)
            self._settle(node)

    @rule(node=st.integers(0, NODES - 1))
    def node_gets_redis_back(self, node: int) -> None:
        broker = self.brokers[node]
        if not broker.up:
            broker.up = True
            assert broker.sink is not None
            broker.sink.broker_up(self.now)
            self._settle(node)

    @precondition(lambda self: self.redis.restarts < 2)
    @rule()
    def redis_restarts_empty(self) -> None:
        self.redis.restarts += 1
        for node, broker in enumerate(self.brokers):
            if broker.up:
                broker.lose(self.redis, self.now)
                self._settle(node)
        self.redis.clear()

    @rule(client=st.integers(0, 2 * NODES - 1), stale=st.booleans())
    def client_resumes(self, client: int, stale: bool) -> None:
        node, who = self.clients[client]
        if who.last is None:
            return
        since = who.last
        who.asked_since = since
        who.asked_epoch = "stale" if stale else who.epoch
        message = {
            "type": "subscribe",
            "channel": CHANNEL,
            "since": since,
            "epoch": who.asked_epoch,
        }
        self._relay(node, who, message)

    @invariant()
    def every_frame_read_so_far_was_in_order(self) -> None:
        for _, client in self.clients:
            client.read()

    def teardown(self) -> None:
        """Redis back for everyone, every queue drained: nobody is behind
        without having been told."""
        for node, broker in enumerate(self.brokers):
            broker.up or self.node_gets_redis_back(node)
        for _, client in self.clients:
            client.slow = False
            client.read()
            client.wire.write_buffer_size = 0
        for _ in range(10_000):
            busy = [
                node
                for node, broker in enumerate(self.brokers)
                if broker.listens or broker.commands or broker.replies or broker.notices
            ]
            if not busy:
                break
            for node in busy:
                self.redis_runs_a_subscribe(node)
                self.redis_runs_a_command(node)
                self.node_hears_a_reply(node)
                self.node_hears_a_notice(node)
        self.now += 1.0
        for node, hub in enumerate(self.hubs):
            hub.handle_timer(self.now)  # the drained ones hear of their last skips
            self._settle(node)
        for _, client in self.clients:
            client.read()
            assert client.last is not None, "a subscriber never got its subscribed"
            if self.redis.epoch is not None:
                assert (client.epoch, client.last) == (self.redis.epoch, self.redis.top), (
                    client.epoch,
                    client.last,
                    self.redis.epoch,
                    self.redis.top,
                )


Fleet.TestCase.settings = settings(
    max_examples=examples(500), stateful_step_count=50, deadline=None
)
TestFleetInterleavings = Fleet.TestCase
