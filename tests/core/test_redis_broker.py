"""RedisBroker without Redis: ops become script calls, replies and pub/sub
notices become answers and events, and losing Redis fails what was in
flight and schedules the next attempt with capped, jittered backoff.

The clock is a plain float and the jitter a constant draw; the Lua itself
runs against a real redis-server in tests/fleet/test_scripts.py."""

from __future__ import annotations

import pytest

from wslifecycle.fleet import scripts
from wslifecycle.fleet.link import (
    Connected,
    Disconnected,
    Listening,
    Message,
    RedisCall,
    RedisFailure,
    Replies,
    Reply,
)
from wslifecycle.fleet.ops import (
    Answer,
    Attach,
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
from wslifecycle.fleet.redis import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    META_TTL,
    LinkWork,
    RedisBroker,
    _answer,
)

EVENTS = "wsl:{room}:events"
META, HISTORY, PRESENCE = "wsl:{room}:meta", "wsl:{room}:history", "wsl:{room}:presence"


class Sink:
    """Everything the broker told the engine, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[object, ...]] = []

    def answer(self, now: float, op_id: int, answer: Answer) -> None:
        self.told.append(("answer", now, op_id, answer))

    def event(self, now: float, event: Event) -> None:
        self.told.append(("event", now, event))

    def listening(self, now: float, channel: str) -> None:
        self.told.append(("listening", now, channel))

    def broker_up(self, now: float) -> None:
        self.told.append(("up", now))

    def broker_down(self, now: float, reason: str) -> None:
        self.told.append(("down", now, reason))

    def take(self) -> list[tuple[object, ...]]:
        told, self.told = self.told, []
        return told

    def downs(self) -> int:
        return sum(1 for entry in self.told if entry[0] == "down")


def make(
    *,
    history_size: int = 50,
    history_ttl: float = 60.0,
    presence_ttl: float = 1.5,
    draw: float = 0.5,
) -> tuple[RedisBroker, Sink]:
    broker = RedisBroker(
        history_size=history_size,
        history_ttl=history_ttl,
        presence_ttl=presence_ttl,
        random=lambda: draw,
    )
    sink = Sink()
    broker.bind(sink)
    return broker, sink


def connected(
    *, history_ttl: float = 60.0, presence_ttl: float = 1.5, draw: float = 0.5
) -> tuple[RedisBroker, Sink]:
    """A broker whose first attempt succeeded at t=0 (its work taken)."""
    broker, sink = make(history_ttl=history_ttl, presence_ttl=presence_ttl, draw=draw)
    broker.start(0.0)
    broker.link_event(0.0, Connected())
    broker.take_work()
    sink.take()
    return broker, sink


def wakes(broker: RedisBroker) -> list[int]:
    """One entry per call of the broker's ``on_work`` from now on."""
    woken: list[int] = []
    broker.on_work = lambda: woken.append(1)
    return woken


def call_of(broker: RedisBroker, op: Op) -> RedisCall:
    """The one call ``op`` became."""
    broker.submit(1.0, op)
    work = broker.take_work()
    assert (work.connect, work.subscribe, work.unsubscribe) == (False, [], [])
    assert len(work.calls) == 1
    return work.calls[0]


# ------------------------------------------------------------- the work


@pytest.mark.parametrize(
    ("work", "truth"),
    [
        (LinkWork(False, [], [], []), False),
        (LinkWork(True, [], [], []), True),
        (LinkWork(False, [RedisCall(1, scripts.MEMBERS, (PRESENCE,), ())], [], []), True),
        (LinkWork(False, [], [EVENTS], []), True),
        (LinkWork(False, [], [], [EVENTS]), True),
    ],
)
def test_link_work_is_true_when_there_is_something_to_do(work: LinkWork, truth: bool) -> None:
    assert bool(work) is truth


def test_start_asks_for_one_connection_attempt() -> None:
    broker, sink = make()
    woken = wakes(broker)
    assert not broker.up
    assert broker.down_reason == "not connected yet"
    broker.start(0.0)
    broker.start(0.0)  # an attempt is under way: not a second one
    assert woken == [1]
    assert broker.take_work() == LinkWork(True, [], [], [])
    assert not broker.take_work()  # taken work is forgotten
    assert broker.next_wakeup() is None
    assert sink.told == []


def test_connected_is_up_and_tells_the_engine() -> None:
    broker, sink = make()
    broker.start(0.0)
    broker.take_work()
    broker.link_event(2.0, Connected())
    assert broker.up
    assert broker.down_reason is None
    assert sink.take() == [("up", 2.0)]
    broker.start(3.0)  # up: nothing to connect
    assert not broker.take_work()


def test_sweep_leaves_expiry_to_redis() -> None:
    broker, sink = connected()
    broker.sweep(5.0)
    assert not broker.take_work()
    assert sink.told == []


# ---------------------------------------------------------------- calls


def test_publish_is_the_publish_script() -> None:
    broker, _ = connected()
    call = call_of(broker, Publish(7, "room", '{"a":"b|c"}', "e1"))
    assert call == RedisCall(
        7,
        scripts.PUBLISH,
        (META, HISTORY, PRESENCE),
        ("e1", str(round(META_TTL * 1000)), '{"a":"b|c"}', "50", "60000", EVENTS),
    )


@pytest.mark.parametrize(
    ("op", "after", "member"),
    [
        (Attach(3, "room", "c1", None, "e1"), "", "c1"),
        (Attach(3, "room", "c1", 0, "e1"), "0", "c1"),
        (Attach(3, "room", "c1", 12, "e1"), "12", "c1"),
        (Fetch(3, "room", 9, "e1"), "9", ""),
    ],
)
def test_attach_and_fetch_are_the_attach_script(op: Op, after: str, member: str) -> None:
    broker, _ = connected()
    assert call_of(broker, op) == RedisCall(
        3,
        scripts.ATTACH,
        (META, HISTORY, PRESENCE),
        ("e1", str(round(META_TTL * 1000)), after, "60000", member, "1500", EVENTS),
    )


def test_detach_members_refresh_use_the_presence_key_only() -> None:
    broker, _ = connected()
    assert call_of(broker, Detach(4, "room", "c1")) == RedisCall(
        4, scripts.DETACH, (PRESENCE,), ("c1", EVENTS)
    )
    assert call_of(broker, Members(5, "room")) == RedisCall(5, scripts.MEMBERS, (PRESENCE,), ())
    assert call_of(broker, Refresh(6, "room", ("c1", "c2"))) == RedisCall(
        6, scripts.REFRESH, (PRESENCE,), ("1500", EVENTS, "c1", "c2")
    )


def test_durations_become_whole_milliseconds() -> None:
    # Never 0 ms (PEXPIRE 0 would delete at once); the sequence outlives its history.
    broker, _ = connected(history_ttl=0.0001, presence_ttl=0.0002)
    call = call_of(broker, Attach(1, "room", "c1", None, "e1"))
    assert call.args[1] == str(round(META_TTL * 1000))
    assert (call.args[3], call.args[5]) == ("1", "1")
    long, _ = connected(history_ttl=META_TTL * 2)
    call = call_of(long, Publish(2, "room", "1", "e1"))
    assert (call.args[1], call.args[4]) == (str(round(META_TTL * 2000)),) * 2


def test_calls_of_one_batch_keep_their_order_and_wake_the_driver_each_time() -> None:
    broker, _ = connected()
    woken = wakes(broker)
    broker.submit(1.0, Publish(1, "room", "1", "e"))
    broker.submit(1.0, Members(2, "room"))
    assert woken == [1, 1]
    assert [call.id for call in broker.take_work().calls] == [1, 2]


# -------------------------------------------------------------- answers


def reply(broker: RedisBroker, op_id: int, value: Reply, now: float = 2.0) -> None:
    broker.link_event(now, Replies([(op_id, value)]))


@pytest.mark.parametrize(
    ("op", "value", "answer"),
    [
        (Publish(1, "room", "x", "e0"), [b"e1", 7, 2], Stored("e1", 7, 2)),
        (
            Attach(1, "room", "c1", 0, "e0"),
            [b"e1", 5, 3, [b"3|1000|x", b"4|1001|a|b|c", b"5|1002|"]],
            Window("e1", 5, 3, ((3, "x"), (4, "a|b|c"), (5, ""))),
        ),
        (Attach(1, "room", "c1", None, "e0"), [b"e1", 0, 1, []], Window("e1", 0, 1, ())),
        (Fetch(1, "room", 4, "e0"), [b"e1", 5, 1, [b'5|9|"d"']], Window("e1", 5, 1, ((5, '"d"'),))),
        (Members(1, "room"), [b"c1", "ü".encode()], Ids(("c1", "ü"))),
        (Members(1, "room"), [], Ids(())),
        (Detach(1, "room", "c1"), 1, Done()),
        (Refresh(1, "room", ("c1",)), 0, Done()),
    ],
)
def test_replies_are_decoded(op: Op, value: Reply, answer: Answer) -> None:
    broker, sink = connected()
    broker.submit(1.0, op)
    reply(broker, 1, value)
    assert sink.take() == [("answer", 2.0, 1, answer)]


@pytest.mark.parametrize("lost", [False, True])
def test_a_redis_failure_is_failed_and_keeps_lost(lost: bool) -> None:
    broker, sink = connected()
    broker.submit(1.0, Publish(1, "room", "x", "e"))
    reply(broker, 1, RedisFailure("NOSCRIPT gone", lost=lost))
    assert sink.take() == [("answer", 2.0, 1, Failed("NOSCRIPT gone", lost))]


@pytest.mark.parametrize(
    ("op", "value"),
    [
        (Publish(1, "room", "x", "e"), None),
        (Publish(1, "room", "x", "e"), 3),
        (Publish(1, "room", "x", "e"), b"abc"),  # three bytes unpack as ints
        (Publish(1, "room", "x", "e"), [b"e", 1]),
        (Publish(1, "room", "x", "e"), [b"e", 1, 2, 3]),
        (Publish(1, "room", "x", "e"), [b"e", b"1", 2]),
        (Publish(1, "room", "x", "e"), [1, 1, 1]),
        (Publish(1, "room", "x", "e"), [b"\xff", 1, 1]),
        (Publish(1, "room", "x", "e"), [b"e", 1, None]),
        (Attach(1, "room", "c", 0, "e"), [b"e", 1, 1]),
        (Attach(1, "room", "c", 0, "e"), [b"e", 1, 1, None]),
        (Attach(1, "room", "c", 0, "e"), [b"e", 1, 1, [b"no bars"]]),
        (Attach(1, "room", "c", 0, "e"), [b"e", 1, 1, [b"x|1|d"]]),
        (Attach(1, "room", "c", 0, "e"), [b"e", 1, 1, [7]]),
        (Fetch(1, "room", 0, "e"), [b"e", b"1", 1, []]),
        (Members(1, "room"), None),
        (Members(1, "room"), [b"a", 2]),
        (Members(1, "room"), b"ab"),
    ],
)
def test_a_malformed_reply_is_failed(op: Op, value: Reply) -> None:
    answer = _answer(op, value)
    assert isinstance(answer, Failed)
    assert answer.reason.startswith("unexpected reply from redis: ")
    assert not answer.lost


def test_each_op_is_answered_once_and_strangers_are_ignored() -> None:
    broker, sink = connected()
    broker.submit(1.0, Detach(1, "room", "a"))
    broker.submit(1.0, Detach(2, "room", "b"))
    broker.link_event(2.0, Replies([(2, 1), (99, 1), (1, 1)]))
    assert sink.take() == [("answer", 2.0, 2, Done()), ("answer", 2.0, 1, Done())]
    broker.link_event(3.0, Replies([(1, 1)]))
    assert sink.take() == []


def test_ops_while_down_fail_at_once() -> None:
    broker, sink = make()
    woken = wakes(broker)
    broker.submit(1.0, Publish(1, "room", "x", "e"))
    assert sink.take() == [("answer", 1.0, 1, Failed("redis unavailable: not connected yet"))]
    broker.start(1.0)
    broker.take_work()
    broker.link_event(2.0, Disconnected("connection refused"))
    sink.take()
    broker.submit(3.0, Members(2, "room"))
    assert sink.take() == [
        ("answer", 3.0, 2, Failed("redis unavailable: connection refused")),
    ]
    assert woken == [1]  # only the connect: a failed op is no work
    assert not broker.take_work()


# ------------------------------------------------------------ listening


def test_listen_subscribes_and_listening_names_the_channel() -> None:
    broker, sink = connected()
    woken = wakes(broker)
    broker.submit(1.0, Listen("room"))
    assert woken == [1]
    assert broker.take_work() == LinkWork(False, [], [EVENTS], [])
    broker.link_event(2.0, Listening(EVENTS))
    broker.link_event(2.0, Listening("wsl:{other}:events"))  # never asked for: ignored
    assert sink.take() == [("listening", 2.0, "room")]


def test_unlisten_unsubscribes_and_silences_the_channel() -> None:
    broker, sink = connected()
    broker.submit(1.0, Listen("room"))
    broker.take_work()
    broker.submit(2.0, Unlisten("room"))
    broker.submit(2.0, Unlisten("never"))
    assert broker.take_work() == LinkWork(False, [], [], [EVENTS, "wsl:{never}:events"])
    broker.link_event(3.0, Listening(EVENTS))
    broker.link_event(3.0, Message(EVENTS, b"m|e|1|1"))
    assert sink.take() == []


@pytest.mark.parametrize(
    ("ops", "subscribe", "unsubscribe"),
    [
        ((Listen, Unlisten), [], [EVENTS]),
        ((Unlisten, Listen), [EVENTS], []),
        ((Listen, Listen), [EVENTS], []),
        ((Unlisten, Unlisten, Listen), [EVENTS], []),
        ((Listen, Listen, Unlisten), [], [EVENTS]),
    ],
)
def test_the_last_of_listen_and_unlisten_in_one_batch_wins(
    ops: tuple[type[Listen | Unlisten], ...], subscribe: list[str], unsubscribe: list[str]
) -> None:
    # The adapter may (un)subscribe a batch in either order: a channel is
    # never in both lists, nor twice in one.
    broker, sink = connected()
    for kind in ops:
        broker.submit(1.0, kind("room"))
    work = broker.take_work()
    assert (work.subscribe, work.unsubscribe) == (subscribe, unsubscribe)
    broker.link_event(2.0, Listening(EVENTS))
    assert sink.take() == ([("listening", 2.0, "room")] if subscribe else [])


def test_listen_while_down_is_no_work() -> None:
    # Nothing is subscribed while down; the engine listens again on broker_up.
    broker, sink = make()
    woken = wakes(broker)
    broker.submit(1.0, Listen("room"))
    broker.submit(1.0, Unlisten("room"))
    assert woken == []
    assert not broker.take_work()
    broker.link_event(2.0, Listening(EVENTS))
    assert sink.take() == []


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        (b'm|e1|7|{"x":1}', Live("room", "e1", 7, '{"x":1}')),
        (b"m|e1|8|a|b||c", Live("room", "e1", 8, "a|b||c")),
        (b"m|e1|9|", Live("room", "e1", 9, "")),
        ('m|e1|10|"ü"'.encode(), Live("room", "e1", 10, '"ü"')),
        (b"j|c1", Presence("room", "c1", True)),
        (b"l|c1", Presence("room", "c1", False)),
        (b"j|a|b", Presence("room", "a|b", True)),
        (b"j|", None),
        (b"l", None),
        (b"m|e1|x|data", None),
        (b"m|e1|7", None),
        (b"m", None),
        (b"x|c1", None),
        (b"", None),
        (b"\xff|c1", None),
        (b"m|\xff|1|d", None),
    ],
)
def test_pubsub_payloads_become_events(payload: bytes, event: Event | None) -> None:
    broker, sink = connected()
    broker.submit(1.0, Listen("room"))
    broker.link_event(2.0, Listening(EVENTS))
    sink.take()
    broker.link_event(3.0, Message(EVENTS, payload))
    assert sink.take() == ([] if event is None else [("event", 3.0, event)])


def test_messages_of_channels_not_listened_to_are_ignored() -> None:
    broker, sink = connected()
    broker.link_event(3.0, Message(EVENTS, b"m|e|1|1"))
    assert sink.take() == []


# ------------------------------------------------------------ losing it


def test_losing_redis_fails_what_was_in_flight_once() -> None:
    broker, sink = connected()
    broker.submit(1.0, Listen("room"))
    broker.link_event(1.0, Listening(EVENTS))
    broker.submit(1.0, Publish(1, "room", "x", "e"))
    broker.submit(1.0, Members(2, "room"))
    broker.submit(1.0, Detach(3, "room", "c1"))
    broker.take_work()
    broker.submit(1.5, Members(4, "room"))  # not yet taken by the adapter
    sink.take()
    # The adapter fails in-flight calls itself first; the rest are a safety net.
    broker.link_event(2.0, Replies([(1, RedisFailure("reset", lost=True))]))
    broker.link_event(2.0, Disconnected("reset"))
    assert sink.take() == [
        ("answer", 2.0, 1, Failed("reset", lost=True)),
        ("answer", 2.0, 2, Failed("reset", lost=True)),
        ("answer", 2.0, 3, Failed("reset", lost=True)),
        ("answer", 2.0, 4, Failed("reset", lost=True)),
        ("down", 2.0, "reset"),
    ]
    assert not broker.up
    assert broker.down_reason == "reset"
    assert not broker.take_work()  # what was not carried out is dropped
    # A late reply or message of the dead connection means nothing.
    broker.link_event(2.1, Replies([(2, 1)]))
    broker.link_event(2.1, Message(EVENTS, b"m|e|1|x"))
    broker.link_event(2.1, Listening(EVENTS))
    assert sink.take() == []


def test_reconnects_back_off_exponentially_with_full_jitter() -> None:
    broker, sink = connected(draw=0.5)
    broker.link_event(10.0, Disconnected("reset"))
    assert sink.take() == [("down", 10.0, "reset")]
    now = 10.0
    for attempt in range(12):
        retry = broker.next_wakeup()
        assert retry == pytest.approx(now + min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * 0.5)
        assert retry is not None
        broker.handle_timer(retry - 0.001)  # not yet
        assert not broker.take_work()
        assert broker.next_wakeup() == retry
        woken = wakes(broker)
        broker.handle_timer(retry)
        assert woken == [1]
        assert broker.take_work() == LinkWork(True, [], [], [])
        assert broker.next_wakeup() is None
        broker.handle_timer(retry + 100.0)  # nothing is due
        assert not broker.take_work()
        now = retry + 0.25
        broker.link_event(now, Disconnected(f"refused {attempt}"))
        assert broker.down_reason == f"refused {attempt}"
    assert sink.told == []  # down once, not again on each failed attempt
    assert broker.next_wakeup() == pytest.approx(now + BACKOFF_CAP * 0.5)


def test_backoff_starts_over_after_a_success() -> None:
    broker, sink = connected(draw=1.0)
    for when in (1.0, 2.0, 3.0):
        broker.link_event(when, Disconnected("reset"))
    broker.handle_timer(10.0)
    broker.link_event(10.0, Connected())
    assert sink.take() == [("down", 1.0, "reset"), ("up", 10.0)]
    broker.link_event(11.0, Disconnected("again"))
    assert sink.take() == [("down", 11.0, "again")]
    assert broker.next_wakeup() == pytest.approx(11.0 + BACKOFF_BASE)


@pytest.mark.parametrize("draw", [0.0, 0.999999])
def test_jitter_spans_the_whole_bound(draw: float) -> None:
    broker, _ = connected(draw=draw)
    broker.link_event(4.0, Disconnected("reset"))
    assert broker.next_wakeup() == pytest.approx(4.0 + BACKOFF_BASE * draw)


def test_a_first_attempt_that_fails_is_down_once() -> None:
    broker, sink = make()
    broker.start(0.0)
    broker.take_work()
    broker.link_event(1.0, Disconnected("refused"))
    assert sink.take() == [("down", 1.0, "refused")]
    broker.handle_timer(5.0)
    broker.link_event(5.0, Disconnected("refused"))
    assert sink.take() == []


def test_a_long_outage_keeps_the_delay_at_the_cap() -> None:
    # 2**attempt grows without bound; as a float it would overflow after
    # ~1000 attempts (well within a long night of Redis being down).
    broker, sink = connected(draw=1.0)
    now = 0.0
    for _ in range(2000):
        broker.link_event(now, Disconnected("refused"))
        retry = broker.next_wakeup()
        assert retry is not None
        now = retry
        broker.handle_timer(now)
    assert broker.next_wakeup() is None
    broker.link_event(now, Disconnected("refused"))
    assert broker.next_wakeup() == pytest.approx(now + BACKOFF_CAP)
    assert sink.downs() == 1


def test_after_a_reconnect_channels_are_listened_to_anew() -> None:
    broker, sink = connected()
    broker.submit(1.0, Listen("room"))
    broker.link_event(1.0, Listening(EVENTS))
    broker.link_event(2.0, Disconnected("reset"))
    broker.handle_timer(100.0)
    broker.link_event(100.0, Connected())
    broker.take_work()
    sink.take()
    broker.link_event(100.0, Message(EVENTS, b"m|e|1|x"))  # not subscribed anew yet
    assert sink.take() == []
    broker.submit(101.0, Listen("room"))
    assert broker.take_work().subscribe == [EVENTS]
    broker.link_event(101.0, Listening(EVENTS))
    broker.link_event(101.0, Message(EVENTS, b"m|e|2|x"))
    assert sink.take() == [
        ("listening", 101.0, "room"),
        ("event", 101.0, Live("room", "e", 2, "x")),
    ]
