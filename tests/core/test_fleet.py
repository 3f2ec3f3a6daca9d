"""The fleet engine on a fake clock: one sequence per channel, resume,
``drift``, presence, a broker that answers late or goes away."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.wire.helpers import connect, parse_server_frames
from wslifecycle import Config
from wslifecycle.fleet.engine import MAX_HELD
from wslifecycle.fleet.ops import (
    Attach,
    BrokerSink,
    Detach,
    Done,
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

# ------------------------------------------------------------------ helpers


class ScriptedBroker:
    """A broker whose answers the test gives, when it likes."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.up = True
        self.sink: BrokerSink | None = None
        self.swept = 0
        self.timer_runs = 0
        self.wakeup: float | None = None

    def bind(self, sink: BrokerSink) -> None:
        self.sink = sink

    def start(self, now: float) -> None:
        pass

    def submit(self, now: float, op: Op) -> None:
        self.ops.append(op)

    def sweep(self, now: float) -> None:
        self.swept += 1

    def next_wakeup(self) -> float | None:
        return self.wakeup

    def handle_timer(self, now: float) -> None:
        self.timer_runs += 1

    def take(self, kind: type[Any]) -> list[Any]:
        taken = [op for op in self.ops if isinstance(op, kind)]
        self.ops = [op for op in self.ops if not isinstance(op, kind)]
        return taken

    def answer(self, op: Any, answer: Any, now: float = 1.0) -> None:
        assert self.sink is not None
        self.sink.answer(now, op.id, answer)

    def go_down(self, reason: str = "connection refused", now: float = 1.0) -> None:
        assert self.sink is not None
        self.up = False
        self.sink.broker_down(now, reason)

    def come_up(self, now: float = 2.0) -> None:
        assert self.sink is not None
        self.up = True
        self.sink.broker_up(now)


def make_hub(broker: Any = None, **changes: object) -> Hub:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 10.0}
    values.update(changes)
    return Hub(Config(**values), seeded_entropy(7), broker=broker)  # type: ignore[arg-type]


def relay(hub: Hub, wire: ServerConnection, message: dict[str, object], now: float = 1.0) -> None:
    handle_relay_message(hub, wire, json.dumps(message), now)


def texts(wire: ServerConnection) -> list[Any]:
    """The JSON text frames the wire wrote since last time."""
    return [
        json.loads(frame.payload)
        for frame in parse_server_frames(wire.data_to_send())
        if frame.opcode == 0x1
    ]


def seqs(frames: list[Any]) -> list[Any]:
    """Each message as its seq, each drift as ("drift", since, oldest, reason)."""
    out: list[Any] = []
    for frame in frames:
        if frame["type"] == "message":
            out.append(frame.get("seq"))
        elif frame["type"] == "drift":
            out.append(("drift", frame["since"], frame["oldest"], frame["reason"]))
    return out


def live_relay(
    hub: Hub,
    broker: ScriptedBroker,
    wire: ServerConnection,
    channel: str,
    window: Window,
    **options: object,
) -> None:
    """Subscribe ``wire`` through the relay and answer its Attach with ``window``."""
    relay(hub, wire, {"type": "subscribe", "channel": channel, **options})
    listens = broker.take(Listen)
    if listens:
        assert broker.sink is not None
        broker.sink.listening(1.0, channel)
    (attach,) = broker.take(Attach)
    broker.answer(attach, window)
    hub.take_output(1.0)


def recover(broker: ScriptedBroker, channel: str) -> Fetch:
    """Redis lost and back: the node listens to ``channel`` again and
    fetches what it may have missed; that Fetch, not yet answered."""
    broker.go_down()
    broker.come_up()
    assert broker.sink is not None
    broker.sink.listening(2.0, channel)
    (fetch,) = broker.take(Fetch)
    assert isinstance(fetch, Fetch)
    return fetch


# -------------------------------------------------------------- in memory


def test_one_node_numbers_each_channel_and_resumes_from_history() -> None:
    """In memory: subscribed says seq and epoch; messages carry the
    channel's seq; a resume replays what came after ``since``, then live."""
    hub = make_hub()
    a, b = connect(hub), connect(hub)
    relay(hub, a, {"type": "subscribe", "channel": "news"})
    (subscribed,) = texts(a)
    epoch = subscribed["epoch"]
    assert subscribed == {"type": "subscribed", "channel": "news", "seq": 0, "epoch": epoch}
    for n in range(3):
        relay(hub, b, {"type": "publish", "channel": "news", "data": n})
    assert seqs(texts(a)) == [1, 2, 3]
    assert [f["seq"] for f in texts(b)] == [1, 2, 3]  # published answers
    relay(hub, b, {"type": "subscribe", "channel": "news", "since": 1, "epoch": epoch})
    frames = texts(b)
    assert frames[0] == {"type": "subscribed", "channel": "news", "seq": 3, "epoch": epoch}
    assert [(f["seq"], f["data"]) for f in frames[1:]] == [(2, 1), (3, 2)]
    relay(hub, a, {"type": "publish", "channel": "news", "data": "live"})
    assert seqs(texts(b)) == [4]


def test_a_resume_beyond_history_or_epoch_gets_drift_then_what_history_has() -> None:
    """since older than history: drift(history) naming the oldest seq kept,
    then the replay from there; a stale epoch or a since ahead of the
    sequence: drift(epoch), never a replay of the wrong range."""
    hub = make_hub(history_size=2)
    a, b = connect(hub), connect(hub)
    for n in range(5):
        relay(hub, a, {"type": "publish", "channel": "c", "data": n})
    texts(a)
    relay(hub, b, {"type": "subscribe", "channel": "c", "since": 1})
    frames = texts(b)
    epoch = frames[0]["epoch"]
    assert frames[1] == {
        "type": "drift",
        "channel": "c",
        "since": 1,
        "oldest": 4,
        "epoch": epoch,
        "reason": "history",
    }
    assert seqs(frames[2:]) == [4, 5]
    relay(hub, b, {"type": "subscribe", "channel": "c", "since": 4, "epoch": "other"})
    assert seqs(texts(b)) == [("drift", 4, 4, "epoch"), 4, 5]
    relay(hub, b, {"type": "subscribe", "channel": "c", "since": 9})
    assert seqs(texts(b)) == [("drift", 9, 4, "epoch"), 4, 5]
    relay(hub, b, {"type": "subscribe", "channel": "c", "since": 5, "epoch": epoch})
    assert seqs(texts(b)) == []
    assert hub.scheduler.metrics.drift_notices == {"history": 1, "epoch": 2}


def test_history_ages_out_and_an_idle_channel_is_forgotten() -> None:
    """Messages older than history_ttl are not replayed; a channel with no
    members and no publish for history_ttl starts a new epoch."""
    hub = make_hub(history_ttl=10.0)
    a, b = connect(hub), connect(hub)
    relay(hub, a, {"type": "publish", "channel": "c", "data": 1}, now=1.0)
    relay(hub, a, {"type": "publish", "channel": "c", "data": 2}, now=8.0)
    relay(hub, b, {"type": "subscribe", "channel": "c", "since": 0}, now=12.0)
    frames = texts(b)
    epoch = frames[0]["epoch"]
    assert seqs(frames) == [("drift", 0, 2, "history"), 2]
    relay(hub, b, {"type": "unsubscribe", "channel": "c"}, now=12.0)
    texts(b)
    relay(hub, b, {"type": "members", "channel": "c"}, now=30.0)  # sweeps on the way
    relay(hub, b, {"type": "subscribe", "channel": "c"}, now=30.0)
    frames = texts(b)
    assert frames[-1]["seq"] == 0
    assert frames[-1]["epoch"] != epoch


def test_a_skipped_send_is_a_drift_at_once_never_a_silent_hole() -> None:
    """A subscriber above the write-buffer guard misses a message: a drift
    goes out at once (critical), once per run of skips; the next message
    that fits is preceded by a drift for what was skipped since."""
    hub = make_hub(write_buffer_guard=1000)
    slow, publisher = connect(hub), connect(hub)
    relay(hub, slow, {"type": "subscribe", "channel": "c"})
    texts(slow)
    relay(hub, publisher, {"type": "publish", "channel": "c", "data": 1})
    slow.write_buffer_size = 1000
    for n in (2, 3, 4):
        relay(hub, publisher, {"type": "publish", "channel": "c", "data": n})
    slow.write_buffer_size = 0
    relay(hub, publisher, {"type": "publish", "channel": "c", "data": 5})
    assert seqs(texts(slow)) == [1, ("drift", 1, 3, "slow"), ("drift", 2, 5, "slow"), 5]
    assert hub.scheduler.metrics.drift_notices == {"slow": 2}
    assert hub.scheduler.metrics.sends_skipped == 3


def test_members_and_presence_events_on_one_node() -> None:
    """members lists the channel's members in join order; a member that
    asked for presence hears others join and leave (not itself); a
    connection that closes has left before its close frame."""
    hub = make_hub()
    watcher, joiner = connect(hub), connect(hub)
    relay(hub, watcher, {"type": "subscribe", "channel": "room", "presence": True})
    relay(hub, joiner, {"type": "subscribe", "channel": "room"})
    relay(hub, joiner, {"type": "members", "channel": "room"})
    assert texts(joiner)[-1] == {
        "type": "members",
        "channel": "room",
        "ids": [watcher.id, joiner.id],
    }
    joiner.close(2.0)
    hub.take_output(2.0)
    frames = texts(watcher)
    assert [f["type"] for f in frames] == ["subscribed", "join", "leave"]
    assert frames[1]["id"] == frames[2]["id"] == joiner.id
    relay(hub, watcher, {"type": "members", "channel": "room"})
    assert texts(watcher)[-1]["ids"] == [watcher.id]


def test_relay_refuses_bad_subscribe_options() -> None:
    hub = make_hub()
    wire = connect(hub)
    for bad in ({"since": -1}, {"since": True}, {"since": "3"}, {"epoch": 5}, {"presence": 1}):
        relay(hub, wire, {"type": "subscribe", "channel": "c", **bad})
    frames = texts(wire)
    assert [f["type"] for f in frames] == ["error"] * 5
    assert hub.channel_sizes() == {}


def test_a_server_side_publish_returns_the_channel_members() -> None:
    hub = make_hub()
    wire = connect(hub)
    hub.subscribe(wire, "c", 1.0)
    answer = hub.publish("c", {"x": 1}, 1.0)
    assert isinstance(answer, Stored)
    assert answer.receivers == 1
    assert hub.take_output(1.0) == [wire]
    assert seqs(texts(wire)) == [1]  # no "subscribed": a handler's subscribe is quiet


# ------------------------------------------------ a broker that answers late


def test_live_messages_wait_for_a_replay_and_are_not_duplicated() -> None:
    """While a resume's Attach is answered, live messages queue for the
    subscriber; the replay goes first; live copies of replayed seqs are
    dropped."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    relay(hub, wire, {"type": "subscribe", "channel": "c", "since": 2, "epoch": "e1"})
    (listen,) = broker.take(Listen)
    assert listen == Listen("c")
    assert broker.sink is not None
    broker.sink.listening(1.0, "c")
    (attach,) = broker.take(Attach)
    assert (attach.member, attach.since) == (wire.id, 0)
    for seq in (4, 5, 6):
        broker.sink.event(1.0, Live("c", "e1", seq, str(seq)))
    broker.answer(attach, Window("e1", 5, 1, tuple((n, str(n)) for n in range(1, 6))))
    hub.take_output(1.0)
    frames = texts(wire)
    assert frames[0]["seq"] == 5
    assert seqs(frames) == [3, 4, 5, 6]


def test_a_gap_in_the_live_stream_is_fetched_from_history() -> None:
    """Pub/sub lost messages 3-4 (a reconnect): the node holds 5, fetches
    after 2, delivers 3, 4, 5 in order; later messages wait meanwhile."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 2, 1, ()))
    texts(wire)
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 5, "5"))
    broker.sink.event(1.0, Live("c", "e", 6, "6"))
    (fetch,) = broker.take(Fetch)
    assert fetch.after == 2
    broker.answer(fetch, Window("e", 5, 1, ((3, "3"), (4, "4"), (5, "5"))))
    broker.sink.event(1.0, Live("c", "e", 5, "5"))  # its live copy: a duplicate
    broker.sink.event(1.0, Live("c", "e", 7, "7"))
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [3, 4, 5, 6, 7]


def test_history_that_cannot_fill_a_gap_announces_it_at_once() -> None:
    """The fetch shows the sequence moved past what history holds: drift
    now (there may be no next message), then what history had."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 2, 1, ()))
    texts(wire)
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 9, "9"))
    (fetch,) = broker.take(Fetch)
    broker.answer(fetch, Window("e", 9, 8, ((8, "8"), (9, "9"))))
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [("drift", 2, 8, "outage"), 8, 9]
    broker.sink.event(1.0, Live("c", "e", 12, "12"))
    (fetch,) = broker.take(Fetch)
    broker.answer(fetch, Window("e", 13, 14, ()))  # history kept nothing
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [("drift", 9, 14, "outage")]


def test_a_failed_fetch_delivers_what_was_held_after_a_drift() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 1, 1, ((1, "1"),)))
    texts(wire)
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 4, "4"))
    (fetch,) = broker.take(Fetch)
    broker.answer(fetch, Failed("connection lost", lost=True))
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [("drift", 1, 4, "outage"), 4]


def test_redis_down_degrades_then_recovers_with_a_replay_or_a_drift() -> None:
    """Down: publishes reach this node only, unsequenced, and the publisher
    is told with an error; members is partial; a subscribe waits. Up again:
    listen, fetch what was missed, attach who waited."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    reader, writer, late = connect(hub), connect(hub), connect(hub)
    live_relay(hub, broker, reader, "c", Window("e", 3, 1, ()))
    texts(reader)
    broker.go_down("Connection refused")
    assert hub.fleet.degraded
    assert hub.scheduler.metrics.broker_outages == 1
    assert not hub.scheduler.metrics.broker_up
    relay(hub, writer, {"type": "publish", "channel": "c", "data": "x"})
    error = texts(writer)[-1]
    assert error["type"] == "error"
    assert "Connection refused" in error["reason"]
    assert error["local_receivers"] == 1
    assert texts(reader) == [{"type": "message", "channel": "c", "local": True, "data": "x"}]
    relay(hub, writer, {"type": "members", "channel": "c"})
    assert texts(writer)[-1] == {
        "type": "members",
        "channel": "c",
        "ids": [reader.id],
        "partial": True,
    }
    relay(hub, late, {"type": "subscribe", "channel": "c"})
    assert texts(late) == []
    assert broker.take(Attach) == []
    broker.go_down("again")  # a second failure: still one outage
    assert hub.scheduler.metrics.broker_outages == 1
    broker.come_up()
    assert hub.fleet.metrics.snapshot().broker_up
    assert broker.take(Listen) == [Listen("c")]
    (refresh,) = broker.take(Refresh)
    assert refresh.members == (reader.id,)
    assert broker.sink is not None
    broker.sink.listening(2.0, "c")
    (fetch,) = broker.take(Fetch)
    assert fetch.after == 3
    (attach,) = broker.take(Attach)
    broker.answer(fetch, Window("e", 6, 5, ((5, "5"), (6, "6"))))
    broker.answer(attach, Window("e", 6, 5, ()))
    hub.take_output(2.0)
    assert seqs(texts(reader)) == [("drift", 3, 5, "outage"), 5, 6]
    assert texts(late)[0]["seq"] == 6


def test_a_redis_that_lost_everything_starts_a_new_epoch_with_a_drift() -> None:
    """After a restart with no persistence the fetch answers another epoch:
    every subscriber is told (drift, reason epoch), then the new sequence."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("old", 40, 1, ()))
    texts(wire)
    fetch = recover(broker, "c")
    broker.answer(fetch, Window("new", 1, 1, ((1, "1"),)))
    hub.take_output(2.0)
    frames = texts(wire)
    assert seqs(frames) == [("drift", 40, 1, "epoch"), 1]
    assert frames[0]["epoch"] == "new"
    assert broker.sink is not None
    broker.sink.event(2.0, Live("c", "new", 2, "2"))
    hub.take_output(2.0)
    assert seqs(texts(wire)) == [2]


def test_a_live_message_of_a_new_epoch_is_announced_to_each_subscriber() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("old", 7, 1, ()))
    texts(wire)
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "new", 1, "1"))
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [("drift", 7, 1, "epoch"), 1]


def test_a_release_waits_for_the_broker_before_the_close_frame() -> None:
    """A connection in channels leaves them on this node at once, and its
    close frame waits until the broker confirms it left presence."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "a", Window("e", 0, 1, ()))
    live_relay(hub, broker, wire, "b", Window("e", 0, 1, ()))
    texts(wire)
    wire.close(2.0)
    assert hub.members("a") == []
    assert parse_server_frames(wire.data_to_send()) == []  # no close frame yet
    detaches = broker.take(Detach)
    assert sorted(d.channel for d in detaches) == ["a", "b"]
    assert broker.take(Unlisten) == [Unlisten("a"), Unlisten("b")]
    broker.answer(detaches[0], Done())
    assert hub.take_output(2.0) == []
    broker.answer(detaches[1], Failed("timeout"))  # a lease runs out anyway
    assert hub.take_output(2.0) == [wire]
    assert [f.close_code for f in parse_server_frames(wire.data_to_send())] == [1000]


def test_answers_for_subscriptions_that_are_gone_are_ignored() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire, other = connect(hub), connect(hub)
    relay(hub, wire, {"type": "subscribe", "channel": "c"})
    relay(hub, other, {"type": "subscribe", "channel": "c"})
    assert broker.sink is not None
    broker.sink.listening(1.0, "c")
    broker.sink.listening(1.0, "nobody")
    first, second = broker.take(Attach)
    relay(hub, wire, {"type": "unsubscribe", "channel": "c"})
    assert [d.member for d in broker.take(Detach)] == [wire.id]
    broker.answer(first, Window("e", 0, 1, ()))
    relay(hub, other, {"type": "unsubscribe", "channel": "c"})
    broker.answer(second, Window("e", 0, 1, ()))
    texts(wire)
    broker.sink.event(1.0, Live("c", "e", 1, "1"))
    broker.sink.event(1.0, Presence("c", "x", True))
    relay(hub, wire, {"type": "unsubscribe", "channel": "never"})
    assert [f["type"] for f in texts(wire)] == ["unsubscribed"]


def test_a_fetch_answer_for_a_forgotten_channel_is_ignored() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 1, 1, ()))
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 3, "3"))
    (fetch,) = broker.take(Fetch)
    relay(hub, wire, {"type": "unsubscribe", "channel": "c"})
    broker.answer(fetch, Window("e", 3, 1, ()))
    assert seqs(texts(wire)) == []


def test_an_attach_that_fails_waits_for_the_broker_to_come_back() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    relay(hub, wire, {"type": "subscribe", "channel": "c"})
    assert broker.take(Listen) == [Listen("c")]
    assert broker.sink is not None
    broker.sink.listening(1.0, "c")
    (attach,) = broker.take(Attach)
    broker.sink.event(1.0, Live("c", "e", 1, "1"))
    broker.go_down()
    broker.answer(attach, Failed("lost", lost=True))
    relay(hub, wire, {"type": "subscribe", "channel": "d"})  # down: not even a Listen
    assert broker.take(Listen) == []
    assert texts(wire) == []
    broker.come_up()
    broker.sink.listening(2.0, "c")
    (attach,) = broker.take(Attach)
    broker.answer(attach, Window("e", 1, 1, ()))
    hub.take_output(2.0)
    assert texts(wire)[0]["seq"] == 1


def test_a_subscriber_queue_while_attaching_is_bounded() -> None:
    """Past MAX_HELD the oldest held messages go; the hole is a drift."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    relay(hub, wire, {"type": "subscribe", "channel": "c"})
    assert broker.sink is not None
    broker.sink.listening(1.0, "c")
    (attach,) = broker.take(Attach)
    for seq in range(1, MAX_HELD + 3):
        broker.sink.event(1.0, Live("c", "e", seq, "0"))
    broker.answer(attach, Window("e", 0, 1, ()))
    hub.take_output(1.0)
    got = seqs(texts(wire))
    assert got[0] == ("drift", 0, 3, "outage")
    assert got[1:] == list(range(3, MAX_HELD + 3))


def test_publish_answers_come_late_or_fail() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    relay(hub, wire, {"type": "publish", "channel": "c", "data": 1})
    relay(hub, wire, {"type": "publish", "channel": "c", "data": 2})
    relay(hub, wire, {"type": "publish", "channel": "c", "data": 3})
    first, second, third = broker.take(Publish)
    assert first.data == "1"
    broker.answer(first, Stored("e", 1, 4))
    broker.answer(second, Failed("timeout", lost=True))
    broker.answer(third, Failed("NOSCRIPT"))
    hub.take_output(1.0)
    assert texts(wire) == [
        {"type": "published", "channel": "c", "seq": 1, "receivers": 4},
        {
            "type": "error",
            "channel": "c",
            "reason": "publish failed: timeout (the message may have been stored)",
        },
        {"type": "error", "channel": "c", "reason": "publish failed: NOSCRIPT"},
    ]
    assert hub.scheduler.metrics.publish_failures == 2
    assert hub.publish("c", 4, 1.0) is None  # a server-side publish: answered later
    (fourth,) = broker.take(Publish)
    broker.answer(fourth, Stored("e", 2, 0))


def test_members_come_from_the_broker() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    relay(hub, wire, {"type": "members", "channel": "c"})
    (members,) = broker.take(Members)
    broker.answer(members, Ids(("x", "y")))
    relay(hub, wire, {"type": "members", "channel": "c"})
    (members,) = broker.take(Members)
    broker.answer(members, Failed("timeout"))
    hub.take_output(1.0)
    assert texts(wire) == [
        {"type": "members", "channel": "c", "ids": ["x", "y"]},
        {"type": "members", "channel": "c", "ids": [], "partial": True},
    ]


def test_leases_are_renewed_every_third_of_the_ttl_while_there_are_subscribers() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker, presence_ttl=9.0)
    hub.start(0.0)
    assert hub.fleet.next_wakeup() is None  # no subscriber, nothing to renew
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 0, 1, ()))
    assert hub.fleet.next_wakeup() == 3.0
    broker.wakeup = 2.5
    assert hub.fleet.next_wakeup() == 2.5
    hub.handle_timer(2.5)
    assert broker.timer_runs == 1
    assert broker.swept == 0
    hub.handle_timer(3.0)
    (refresh,) = broker.take(Refresh)
    assert refresh.members == (wire.id,)
    assert broker.swept == 1
    broker.up = False
    hub.handle_timer(6.0)
    assert broker.take(Refresh) == []


def test_presence_events_skip_those_that_did_not_ask_and_the_member_itself() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    asked, quiet = connect(hub), connect(hub)
    live_relay(hub, broker, asked, "c", Window("e", 0, 1, ()), presence=True)
    live_relay(hub, broker, quiet, "c", Window("e", 0, 1, ()))
    texts(asked), texts(quiet)
    assert broker.sink is not None
    broker.sink.event(1.0, Presence("c", asked.id, True))
    broker.sink.event(1.0, Presence("c", "elsewhere", False))
    hub.take_output(1.0)
    assert texts(asked) == [{"type": "leave", "channel": "c", "id": "elsewhere"}]
    assert texts(quiet) == []


@pytest.mark.parametrize("closing", [True, False])
def test_nothing_is_sent_to_a_connection_on_its_way_down(closing: bool) -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 0, 1, ()))
    texts(wire)
    wire.lifecycle.close(1.0) if closing else None
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 2, "2"))
    assert broker.take(Fetch) == [] or not closing


def test_a_restarted_sequence_is_fetched_again_from_its_start() -> None:
    """The recovery fetch asked after seq 40 of the old epoch; the new
    sequence is shorter, so nothing came back: the node asks again from
    the start, and replays what history holds after the epoch drift."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("old", 40, 1, ()))
    texts(wire)
    fetch = recover(broker, "c")
    assert fetch.after == 40
    assert broker.sink is not None
    broker.sink.event(2.0, Live("c", "new", 3, "3"))  # waits for the fetches
    broker.answer(fetch, Window("new", 2, 1, ()))
    (again,) = broker.take(Fetch)
    assert again.after == 0
    broker.answer(again, Window("new", 2, 1, ((1, "1"), (2, "2"))))
    hub.take_output(2.0)
    assert seqs(texts(wire)) == [("drift", 40, 1, "epoch"), 1, 2, 3]


def test_a_restarted_sequence_longer_than_the_old_cursor_is_fetched_from_its_start() -> None:
    """The recovery fetch asked after seq 1 of the old epoch; the new
    sequence already has 3, so the window came back without its first:
    the node asks again from the start rather than announce 1 as lost."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("old", 1, 1, ()))
    texts(wire)
    fetch = recover(broker, "c")
    assert fetch.after == 1
    broker.answer(fetch, Window("new", 3, 1, ((2, "2"), (3, "3"))))
    (again,) = broker.take(Fetch)
    assert again.after == 0
    assert texts(wire) == []  # nothing said before the whole window is back
    broker.answer(again, Window("new", 3, 1, ((1, "1"), (2, "2"), (3, "3"))))
    hub.take_output(2.0)
    assert seqs(texts(wire)) == [("drift", 1, 1, "epoch"), 1, 2, 3]


def test_a_skip_still_untold_when_the_sequence_restarts_is_covered_by_its_drift() -> None:
    """A slow client has a skipped message of the old epoch still to be
    told when Redis comes back with a new one: the epoch drift says it, and
    the timer must not move the client back to the old sequence."""
    broker = ScriptedBroker()
    hub = make_hub(broker, write_buffer_guard=100)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("old", 0, 1, ()))
    texts(wire)
    wire.write_buffer_size = 500
    assert broker.sink is not None
    for seq in (1, 2):  # the first skip is said at once, the second waits for the timer
        broker.sink.event(1.0, Live("c", "old", seq, str(seq)))
    hub.take_output(1.0)
    fetch = recover(broker, "c")
    broker.answer(fetch, Window("new", 0, 1, ()))
    hub.take_output(2.0)
    wire.write_buffer_size = 0
    frames = texts(wire)
    assert seqs(frames) == [("drift", 0, 2, "slow"), ("drift", 1, 1, "epoch")]
    assert frames[1]["epoch"] == "new"
    hub.handle_timer(hub.fleet.next_wakeup() or 0.0)
    assert texts(wire) == []  # nothing left to tell: no drift back to the old sequence
    broker.sink.event(3.0, Live("c", "new", 1, "1"))
    hub.take_output(3.0)
    assert seqs(texts(wire)) == [1]


def test_a_held_message_skipped_after_a_later_one_keeps_the_furthest_skip() -> None:
    """A slow client resumes: its replay's 2 and 3 are skipped, then the
    live 2 held while it attached is skipped again. What the timer tells it
    when its buffer drains must reach past 3, the furthest one skipped."""
    broker = ScriptedBroker()
    hub = make_hub(broker, write_buffer_guard=100)
    wire = connect(hub)
    relay(hub, wire, {"type": "subscribe", "channel": "c", "since": 0, "epoch": "e"})
    assert broker.take(Listen) == [Listen("c")]
    assert broker.sink is not None
    broker.sink.listening(1.0, "c")
    (attach,) = broker.take(Attach)
    for seq in (1, 2):  # live while it attaches: held
        broker.sink.event(1.0, Live("c", "e", seq, str(seq)))
    wire.write_buffer_size = 500
    broker.answer(attach, Window("e", 3, 1, ((1, "1"), (2, "2"), (3, "3"))))
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [("drift", 0, 2, "slow")]
    wire.write_buffer_size = 0
    check = hub.fleet.next_wakeup()
    assert check is not None
    hub.handle_timer(check)
    assert seqs(texts(wire)) == [("drift", 1, 4, "slow")]
