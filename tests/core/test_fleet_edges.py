"""The fleet engine's corners: connections on their way down, slow ones
at every step, a broker that is down when the engine would use it."""

from __future__ import annotations

import pytest

from tests.core.test_fleet import ScriptedBroker, live_relay, make_hub, relay, seqs, texts
from tests.wire.helpers import connect
from wslifecycle import Config, ConfigError, TerminationCause
from wslifecycle.fleet.memory import InMemoryBroker
from wslifecycle.fleet.ops import (
    Answer,
    Attach,
    Detach,
    Done,
    Event,
    Fetch,
    Ids,
    Listen,
    Live,
    Members,
    Presence,
    Refresh,
    Window,
)
from wslifecycle.wire.http import HttpRequest


class Sink:
    """Records what an in-memory broker says."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, Answer]] = []
        self.events: list[Event] = []

    def answer(self, now: float, op_id: int, answer: Answer) -> None:
        self.answers.append((op_id, answer))

    def event(self, now: float, event: Event) -> None:
        self.events.append(event)

    def listening(self, now: float, channel: str) -> None:
        pass

    def broker_up(self, now: float) -> None:
        pass

    def broker_down(self, now: float, reason: str) -> None:
        pass


def test_the_in_memory_broker_answers_every_op_at_once() -> None:
    broker = InMemoryBroker(history_size=3, history_ttl=60.0)
    sink = Sink()
    broker.bind(sink)
    broker.start(0.0)
    assert broker.up
    assert broker.next_wakeup() is None
    broker.handle_timer(0.0)
    broker.submit(0.0, Listen("c"))
    broker.submit(0.0, Attach(1, "c", "m", None, "e"))
    broker.submit(0.0, Fetch(2, "c", 0, "x"))
    broker.submit(0.0, Detach(3, "c", "nobody"))
    broker.submit(0.0, Refresh(4, "c", ("m",)))
    broker.submit(0.0, Members(5, "c"))
    broker.submit(0.0, Members(6, "never"))
    assert sink.answers == [
        (1, Window("e", 0, 1, ())),
        (2, Window("e", 0, 1, ())),
        (3, Done()),
        (4, Done()),
        (5, Ids(("m",))),
        (6, Ids(())),
    ]
    assert sink.events == [Presence("c", "m", True)]


def test_config_refuses_a_redis_url_it_cannot_use() -> None:
    with pytest.raises(ConfigError, match="redis_url: must be redis://"):
        Config(redis_url="http://localhost")
    assert Config(redis_url="unix:///run/redis.sock").redis_url == "unix:///run/redis.sock"


def test_healthz_says_degraded_with_200_while_the_broker_is_down() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    hub.start(0.0)
    hub.start(0.0)  # once only
    request = HttpRequest("GET", "/healthz", "1.1", ())
    assert hub._respond(request)[2] == b"ok\n"
    broker.go_down("Connection refused")
    status, _, body = hub._respond(request)[:3]
    assert (status, body) == (
        200, b"degraded: redis unavailable (Connection refused); local connections go on\n",
    )  # fmt: skip
    hub.begin_drain(1.0)
    assert hub._respond(request)[0] == 503


def test_a_subscriber_that_never_attached_leaves_without_the_broker() -> None:
    """Unsubscribing or closing before the broker listened: nothing to
    detach, and the close frame does not wait."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire, other = connect(hub), connect(hub)
    relay(hub, wire, {"type": "subscribe", "channel": "c"})
    relay(hub, wire, {"type": "unsubscribe", "channel": "c"})
    relay(hub, other, {"type": "subscribe", "channel": "c"})
    other.lifecycle.subscribe("unknown")  # a channel the fleet never heard of
    broker.ops.clear()
    other.close(1.0)
    assert broker.take(Detach) == []
    assert texts(other)[-1:] == []  # the close frame is not text
    assert hub.fleet.release(other, ["nothing"], 1.0)


def test_publishing_while_down_from_the_server_reaches_local_members_only() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 0, 1, ()))
    texts(wire)
    broker.go_down()
    hub.publish("c", "here", 1.0)
    hub.publish("elsewhere", "nobody", 1.0)
    hub.take_output(1.0)
    assert texts(wire) == [{"type": "message", "channel": "c", "local": True, "data": "here"}]
    assert hub.scheduler.metrics.publish_failures == 2
    relay(hub, wire, {"type": "unsubscribe", "channel": "c"})  # down: no Unlisten
    assert broker.take(Detach) == []


def test_a_fetch_overlapping_what_was_seen_skips_it() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire, waiting = connect(hub), connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 2, 1, ()))
    relay(hub, waiting, {"type": "subscribe", "channel": "c"})  # attach under way
    texts(wire)
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 5, "5"))
    (fetch,) = broker.take(Fetch)
    broker.answer(fetch, Window("e", 5, 1, ((1, "1"), (2, "2"), (3, "3"), (4, "4"), (5, "5"))))
    hub.take_output(1.0)
    assert seqs(texts(wire)) == [3, 4, 5]


def test_slow_at_each_step_is_said_when_the_buffer_drains() -> None:
    """An epoch change for a client over the guard: nothing fits now; the
    timer tells it once its buffer drained (and keeps waiting until then)."""
    broker = ScriptedBroker()
    hub = make_hub(broker, write_buffer_guard=100)
    wire = connect(hub)
    live_relay(hub, broker, wire, "c", Window("old", 3, 1, ()))
    texts(wire)
    wire.write_buffer_size = 500
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "new", 1, "1"))
    hub.take_output(1.0)
    assert texts(wire) == []
    check = hub.fleet.next_wakeup()
    assert check is not None
    hub.handle_timer(check)  # still over the guard
    assert texts(wire) == []
    wire.write_buffer_size = 0
    check = hub.fleet.next_wakeup()
    assert check is not None
    hub.handle_timer(check)
    assert seqs(texts(wire)) == [("drift", 3, 2, "epoch")]
    broker.sink.event(2.0, Live("c", "new", 2, "2"))
    hub.take_output(2.0)
    assert seqs(texts(wire)) == [2]


def test_a_catch_up_already_covered_or_for_a_gone_subscriber_is_dropped() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker, write_buffer_guard=100)
    covered, gone = connect(hub), connect(hub)
    for wire in (covered, gone):
        live_relay(hub, broker, wire, "c", Window("e", 0, 1, ()))
        texts(wire)
        wire.write_buffer_size = 500
    assert broker.sink is not None
    for seq in (1, 2):  # the first skip is said at once, the second waits
        broker.sink.event(1.0, Live("c", "e", seq, str(seq)))
    hub.take_output(1.0)
    # A fetch's catch-up says the rest to both before the timer does.
    covered.write_buffer_size = gone.write_buffer_size = 0
    broker.sink.event(1.0, Live("c", "e", 9, "9"))
    (fetch,) = broker.take(Fetch)
    relay(hub, gone, {"type": "unsubscribe", "channel": "c"})
    broker.answer(fetch, Window("e", 9, 10, ()))
    hub.take_output(1.0)
    check = hub.fleet.next_wakeup()
    assert check is not None
    hub.handle_timer(check)
    assert seqs(texts(covered)) == [("drift", 0, 2, "slow"), ("drift", 1, 10, "slow")]


def test_a_peer_past_max_write_buffer_is_cut_not_told() -> None:
    """A send that finds max_write_buffer unwritten terminates the
    connection (slow consumer); the fleet says nothing more to it."""
    broker = ScriptedBroker()
    hub = make_hub(broker, write_buffer_guard=100, max_write_buffer=1000)
    cut, gapped = connect(hub), connect(hub)
    for wire in (cut, gapped):
        live_relay(hub, broker, wire, "c", Window("e", 0, 1, ()))
        texts(wire)
    cut.write_buffer_size = 1000
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 1, "1"))
    assert not cut.lifecycle.accepts_sends
    gapped.write_buffer_size = 1000  # its gap's drift is the send that cuts it
    broker.sink.event(1.0, Live("c", "e", 3, "3"))
    (fetch,) = broker.take(Fetch)
    broker.answer(fetch, Window("e", 3, 3, ((3, "3"),)))
    assert not gapped.lifecycle.accepts_sends


def test_nothing_goes_to_a_connection_that_started_closing() -> None:
    broker = ScriptedBroker()
    hub = make_hub(broker)
    wire, waiting = connect(hub), connect(hub)
    live_relay(hub, broker, wire, "c", Window("e", 1, 1, ()))
    texts(wire)
    relay(hub, waiting, {"type": "members", "channel": "c"})
    (members,) = broker.take(Members)
    waiting.lifecycle.close(1.0)  # DRAINING, its release not yet pumped
    broker.answer(members, Ids(()))
    wire.lifecycle.close(1.0)
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 4, "4"))
    (fetch,) = broker.take(Fetch)
    broker.answer(fetch, Window("e", 4, 4, ((4, "4"),)))
    assert texts(waiting) == []
    resumed = connect(hub)
    relay(hub, resumed, {"type": "subscribe", "channel": "c", "since": 0})
    (attach,) = broker.take(Attach)
    resumed.lifecycle.close(1.0)
    broker.answer(attach, Window("e", 4, 4, ((4, "4"),)))
    assert [f["type"] for f in texts(resumed)] == []


def test_a_message_for_a_subscriber_still_waiting_for_the_broker_waits() -> None:
    """A subscriber whose channel is not listened to yet gets nothing live:
    its subscribed, when it comes, says where it starts."""
    broker = ScriptedBroker()
    hub = make_hub(broker)
    live, waiting = connect(hub), connect(hub)
    live_relay(hub, broker, live, "c", Window("e", 0, 1, ()))
    broker.go_down()
    relay(hub, waiting, {"type": "subscribe", "channel": "c"})
    broker.up = True  # up again, not yet told
    assert broker.sink is not None
    broker.sink.event(1.0, Live("c", "e", 1, "1"))
    assert texts(waiting) == []


def test_a_wire_released_late_when_closed_already_does_nothing() -> None:
    hub = make_hub()
    wire = connect(hub)
    wire.lifecycle.terminate(1.0, TerminationCause.SLOW_CONSUMER)
    wire.pump(1.0)
    wire.channels_released(1.0)
    assert wire.data_to_send() == b""
