"""The fleet's Lua scripts, run for real on a redis-server of the test's own.

Calls are built by :class:`RedisBroker` itself and run with a plain
redis-py client (``EVALSHA``, as the adapter does), and replies go back
through the broker's own decoding, so what is tested is the whole path
between an op and its answer except the socket adapter.

Where a test needs time to have passed (aged history, lapsed leases) it
rewrites the stored Redis-clock milliseconds relative to Redis's ``TIME``
instead of waiting; the one test that lets a lease run out for real polls
with a bound.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
import redis
from redis.client import PubSub

from tests.fleet.redis_server import RedisServer
from wslifecycle.fleet import scripts
from wslifecycle.fleet.link import RedisCall, Reply
from wslifecycle.fleet.ops import (
    Attach,
    Detach,
    Done,
    Fetch,
    Ids,
    Live,
    Members,
    Presence,
    Publish,
    Refresh,
    Stored,
    Window,
)
from wslifecycle.fleet.redis import META_TTL, RedisBroker, _answer, _event

CHANNEL = "room"
META, HISTORY, PRESENCE = scripts.keys(CHANNEL)
EVENTS = scripts.events_channel(CHANNEL)
#: The bound on every wait for Redis (each is over in milliseconds).
WAIT = 5.0
#: Published by hand after the ops under test: what a listener saw before it
#: is everything those ops published (one connection's commands run in order,
#: and a subscriber hears a channel's messages in the order they were published).
SENTINEL = b"sentinel"

#: The ops that are script calls (Listen and Unlisten are subscriptions).
Asked = Publish | Attach | Fetch | Detach | Members | Refresh
A = TypeVar("A", Stored, Window, Ids, Done)


class Node:
    """One node's broker (to build calls and decode replies) and its own client."""

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 50,
        history_ttl: float = 60.0,
        presence_ttl: float = 60.0,
    ) -> None:
        self.client = redis.Redis.from_url(url)
        for script in scripts.SCRIPTS:
            assert self.client.script_load(script.source) == script.sha, script.name
        self.broker = RedisBroker(
            history_size=history_size,
            history_ttl=history_ttl,
            presence_ttl=presence_ttl,
            random=lambda: 0.5,
        )
        self._ids = itertools.count(1)

    def raw(self, call: RedisCall) -> Reply:
        reply: Reply = self.client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return reply

    def expect(self, kind: type[A], make: Callable[[int], Asked]) -> A:
        """Run the op ``make`` builds (given a fresh id); its answer, decoded."""
        op = make(next(self._ids))
        answer = _answer(op, self.raw(self.broker._call(op)))
        assert isinstance(answer, kind), answer
        return answer

    def publish(self, data: str, epoch: str = "e1", channel: str = CHANNEL) -> Stored:
        return self.expect(Stored, lambda i: Publish(i, channel, data, epoch))

    def attach(
        self, member: str, since: int | None = None, epoch: str = "e1", channel: str = CHANNEL
    ) -> Window:
        return self.expect(Window, lambda i: Attach(i, channel, member, since, epoch))

    def fetch(self, after: int, epoch: str = "e1", channel: str = CHANNEL) -> Window:
        return self.expect(Window, lambda i: Fetch(i, channel, after, epoch))

    def detach(self, member: str) -> None:
        self.expect(Done, lambda i: Detach(i, CHANNEL, member))

    def members(self) -> set[str]:
        ids = self.expect(Ids, lambda i: Members(i, CHANNEL)).ids
        assert len(set(ids)) == len(ids)
        return set(ids)

    def refresh(self, *members: str) -> int:
        """Renew ``members``; how many lapsed leases the script dropped."""
        op = Refresh(next(self._ids), CHANNEL, members)
        reply = self.raw(self.broker._call(op))
        assert _answer(op, reply) == Done()
        assert isinstance(reply, int)
        return reply

    def redis_ms(self) -> int:
        """Redis's clock, as the scripts read it."""
        seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000

    def close(self) -> None:
        self.client.close()


class Listener:
    """A real pub/sub subscriber of a channel's events."""

    def __init__(self, url: str, channel: str = EVENTS) -> None:
        self.client = redis.Redis.from_url(url)
        # redis-py < 8 leaves pubsub() unannotated, 8 annotates it: taking the
        # method as a typed callable checks under both without an ignore.
        make_pubsub: Callable[[], PubSub] = self.client.pubsub
        self.pubsub = make_pubsub()
        self.pubsub.subscribe(channel)
        confirmed = self._next(ignore_subscribe_messages=False)
        assert confirmed["type"] == "subscribe", confirmed

    def _next(self, *, ignore_subscribe_messages: bool = True) -> dict[str, object]:
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=left
            )
            if message is not None:
                assert isinstance(message, dict)
                return message
        raise AssertionError(f"no pub/sub message within {WAIT} s")

    def payload(self) -> bytes:
        data = self._next()["data"]
        assert isinstance(data, bytes)
        return data

    def heard(self, publisher: Node) -> list[bytes]:
        """Everything published on the channel until now (see SENTINEL)."""
        publisher.client.publish(EVENTS, SENTINEL)
        return list(iter(self.payload, SENTINEL))

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def make_node(redis_server: RedisServer) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(
        *, history_size: int = 50, history_ttl: float = 60.0, presence_ttl: float = 60.0
    ) -> Node:
        node = Node(
            redis_server.url,
            history_size=history_size,
            history_ttl=history_ttl,
            presence_ttl=presence_ttl,
        )
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    return make_node()


@pytest.fixture
def listener(redis_server: RedisServer) -> Iterator[Listener]:
    listening = Listener(redis_server.url)
    yield listening
    listening.close()


def history(node: Node) -> list[tuple[int, int, str]]:
    """The stored history: (seq, Redis ms, data), oldest first."""
    entries = []
    for raw in node.client.lrange(HISTORY, 0, -1):
        assert isinstance(raw, bytes)
        seq, ms, data = raw.decode().split("|", 2)
        entries.append((int(seq), int(ms), data))
    return entries


# ------------------------------------------------------------ the scripts


def test_scripts_load_under_the_sha_the_calls_name(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        for script in scripts.SCRIPTS:
            assert client.script_load(script.source) == script.sha
        assert client.script_exists(*(script.sha for script in scripts.SCRIPTS)) == [True] * 5
    finally:
        client.close()


# ----------------------------------------------------------------- publish


def test_publish_numbers_each_channel_from_one(node: Node) -> None:
    assert node.publish('"a"') == Stored("e1", 1, 0)
    assert node.publish('"b"', epoch="e2") == Stored("e1", 2, 0)  # the sequence keeps its epoch
    assert node.publish('"c"', epoch="e3") == Stored("e1", 3, 0)
    assert node.publish('"x"', epoch="f", channel="other") == Stored("f", 1, 0)
    assert node.client.hgetall(META) == {b"epoch": b"e1", b"seq": b"3"}


def test_publish_stores_seq_time_and_data_with_expiries(node: Node) -> None:
    before = node.redis_ms()
    node.publish('{"k":"a|b"}')
    node.publish('"ü"')
    after = node.redis_ms()
    stored = history(node)
    assert [(seq, data) for seq, _, data in stored] == [(1, '{"k":"a|b"}'), (2, '"ü"')]
    assert all(before <= ms <= after for _, ms, _ in stored)
    assert 0 < node.client.pttl(HISTORY) <= 60_000
    assert META_TTL * 1000 - 60_000 < node.client.pttl(META) <= META_TTL * 1000


def test_history_keeps_the_newest_history_size(make_node: Callable[..., Node]) -> None:
    node = make_node(history_size=3)
    for seq in range(1, 6):
        assert node.publish(f'"{seq}"').seq == seq
    assert [seq for seq, _, _ in history(node)] == [3, 4, 5]
    assert node.fetch(0) == Window("e1", 5, 3, ((3, '"3"'), (4, '"4"'), (5, '"5"')))
    assert node.fetch(3) == Window("e1", 5, 3, ((4, '"4"'), (5, '"5"')))


def test_history_size_zero_keeps_none(make_node: Callable[..., Node]) -> None:
    node = make_node(history_size=0)
    assert [node.publish(f'"{n}"').seq for n in range(3)] == [1, 2, 3]
    assert not node.client.exists(HISTORY)
    assert node.attach("c1", since=0) == Window("e1", 3, 4, ())


def test_receivers_are_the_unexpired_members(node: Node) -> None:
    node.attach("c1")
    node.attach("c2")
    assert node.publish('"x"').receivers == 2
    node.client.zadd(PRESENCE, {"c2": node.redis_ms() - 1})  # its lease ran out
    assert node.publish('"y"').receivers == 1


# ------------------------------------------------------------------ attach


def test_attach_on_a_new_channel_starts_its_sequence(node: Node) -> None:
    assert node.attach("c1", since=0, epoch="fresh") == Window("fresh", 0, 1, ())
    assert node.publish('"a"', epoch="other") == Stored("fresh", 1, 1)


def test_attach_and_fetch_give_the_entries_after_after(node: Node) -> None:
    for n in range(1, 6):
        node.publish(f'"{n}"')
    every = tuple((n, f'"{n}"') for n in range(1, 6))
    assert node.attach("c1", since=None) == Window("e1", 5, 1, ())
    assert node.attach("c1", since=0) == Window("e1", 5, 1, every)
    assert node.attach("c1", since=3) == Window("e1", 5, 1, every[3:])
    assert node.fetch(4) == Window("e1", 5, 1, every[4:])
    assert node.fetch(5) == Window("e1", 5, 1, ())
    assert node.fetch(9) == Window("e1", 5, 1, ())  # ahead of the sequence: the engine's "epoch"


def test_history_older_than_its_ttl_is_dropped_on_attach(node: Node) -> None:
    for n in range(1, 5):
        node.publish(f'"{n}"')
    # Age the two oldest entries past the 60 s TTL, in Redis's own clock.
    now = node.redis_ms()
    node.client.lset(HISTORY, 0, f'1|{now - 120_000}|"1"')
    node.client.lset(HISTORY, 1, f'2|{now - 61_000}|"2"')
    assert node.fetch(0) == Window("e1", 4, 3, ((3, '"3"'), (4, '"4"')))
    assert [seq for seq, _, _ in history(node)] == [3, 4]  # dropped for good
    assert node.fetch(1) == Window("e1", 4, 3, ((3, '"3"'), (4, '"4"')))


def test_history_all_aged_out_holds_none(node: Node) -> None:
    for n in range(1, 4):
        node.publish(f'"{n}"')
    old = node.redis_ms() - 61_000
    for index in range(3):
        node.client.lset(HISTORY, index, f'{index + 1}|{old}|"{index + 1}"')
    assert node.attach("c1", since=0) == Window("e1", 3, 4, ())
    assert not node.client.exists(HISTORY)


def test_history_expires_with_its_ttl(make_node: Callable[..., Node]) -> None:
    node = make_node(history_ttl=0.2)
    node.publish('"a"')
    ttl = node.client.pttl(HISTORY)
    assert ttl <= 200  # -2 (already gone) on a slow machine
    assert ttl != -1  # -1: no expiry at all
    deadline = time.monotonic() + WAIT
    while node.client.exists(HISTORY):
        assert time.monotonic() < deadline, "history outlived its TTL"
        time.sleep(0.01)  # polling Redis's expiry, bounded above
    assert node.fetch(0) == Window("e1", 1, 2, ())  # the sequence is kept


# ------------------------------------------------------------ lost sequence


def test_a_lost_meta_hash_starts_a_new_epoch_without_the_old_history(node: Node) -> None:
    for n in range(1, 4):
        node.publish(f'"{n}"')
    node.client.delete(META)  # evicted, or a failover lost it
    assert node.client.exists(HISTORY)
    assert node.publish('"new"', epoch="e2") == Stored("e2", 1, 0)
    assert node.fetch(0, epoch="e3") == Window("e2", 1, 1, ((1, '"new"'),))
    assert [seq for seq, _, _ in history(node)] == [1]


def test_a_lost_meta_hash_seen_first_by_attach(node: Node) -> None:
    node.publish('"1"')
    node.publish('"2"')
    node.client.delete(META)
    assert node.attach("c1", since=0, epoch="e2") == Window("e2", 0, 1, ())
    assert not node.client.exists(HISTORY)
    assert node.publish('"x"', epoch="e3") == Stored("e2", 1, 1)


def test_a_redis_restarted_empty_starts_a_new_epoch(
    redis_server: RedisServer, make_node: Callable[..., Node]
) -> None:
    before = make_node()
    before.publish('"1"')
    before.publish('"2"')
    before.close()
    redis_server.restart()
    after = make_node()  # its connect loads the scripts again, as the adapter does
    assert after.fetch(2, epoch="e2") == Window("e2", 0, 1, ())
    assert after.publish('"3"', epoch="e3") == Stored("e2", 1, 0)


# ----------------------------------------------------------------- presence


def test_attach_joins_once_and_detach_leaves_once(node: Node, listener: Listener) -> None:
    node.attach("c1")
    node.attach("c1", since=0)  # again: already a member
    node.attach("c2")
    node.fetch(0)  # a fetch joins nobody
    assert node.members() == {"c1", "c2"}
    node.detach("c1")
    node.detach("c1")  # not a member any more
    node.detach("nobody")
    assert node.members() == {"c2"}
    assert listener.heard(node) == [b"j|c1", b"j|c2", b"l|c1"]
    assert 0 < node.client.pttl(PRESENCE) <= 60_000


def test_members_are_only_the_unexpired_leases(node: Node) -> None:
    for member in ("a", "b", "c"):
        node.attach(member)
    node.client.zadd(PRESENCE, {"b": node.redis_ms() - 1})
    assert node.members() == {"a", "c"}


def test_refresh_renews_and_sweeps_lapsed_leases(node: Node, listener: Listener) -> None:
    for member in ("a", "b", "c"):
        node.attach(member)
    start = node.redis_ms()
    node.client.zadd(PRESENCE, {"b": start - 1, "c": start - 1})
    # "c" lapsed while its node could not reach Redis: renewed, it joins again.
    assert node.refresh("a", "c") == 2
    end = node.redis_ms()
    assert node.members() == {"a", "c"}
    assert node.client.zscore(PRESENCE, "b") is None
    for member in ("a", "c"):
        score = node.client.zscore(PRESENCE, member)
        assert score is not None
        assert start + 60_000 <= score <= end + 60_000
    assert node.refresh("a") == 0
    assert listener.heard(node) == [b"j|a", b"j|b", b"j|c", b"l|b", b"l|c", b"j|c"]


def test_a_dead_nodes_leases_run_out_and_are_swept(
    make_node: Callable[..., Node], listener: Listener
) -> None:
    dying = make_node(presence_ttl=0.2)
    living = make_node()
    before = living.redis_ms()
    dying.attach("x")
    living.attach("y")
    lease = living.client.zscore(PRESENCE, "x")
    assert lease is not None
    assert before + 200 <= lease <= living.redis_ms() + 200
    deadline = time.monotonic() + WAIT
    while living.members() != {"y"}:
        assert time.monotonic() < deadline, "x's lease did not run out"
        time.sleep(0.01)  # polling Redis's clock, bounded above
    assert living.refresh("y") == 1
    assert listener.heard(living) == [b"j|x", b"j|y", b"l|x"]


# ------------------------------------------------------------------ pub/sub


def test_pubsub_payloads_are_exact_and_decode(node: Node, listener: Listener) -> None:
    node.publish('{"a":"x|y"}')
    node.publish('"ü"', epoch="ignored")
    node.attach("c|1")
    node.detach("c|1")
    payloads = listener.heard(node)
    assert payloads == [
        b'm|e1|1|{"a":"x|y"}',
        'm|e1|2|"ü"'.encode(),
        b"j|c|1",
        b"l|c|1",
    ]
    assert [_event(CHANNEL, payload) for payload in payloads] == [
        Live(CHANNEL, "e1", 1, '{"a":"x|y"}'),
        Live(CHANNEL, "e1", 2, '"ü"'),
        Presence(CHANNEL, "c|1", True),
        Presence(CHANNEL, "c|1", False),
    ]


def test_concurrent_publishers_get_one_gapless_order(
    redis_server: RedisServer, make_node: Callable[..., Node], listener: Listener
) -> None:
    writers, each = 4, 200
    nodes = [make_node() for _ in range(writers)]
    start = threading.Barrier(writers)

    def publish_all(index: int) -> list[int]:
        start.wait(WAIT)
        return [nodes[index].publish(f'"{index}:{n}"', epoch=f"e{index}").seq for n in range(each)]

    with ThreadPoolExecutor(writers) as pool:
        seqs = list(pool.map(publish_all, range(writers)))
    total = writers * each
    for mine in seqs:
        assert mine == sorted(mine)  # one client's publishes in its own order
    assert sorted(itertools.chain.from_iterable(seqs)) == list(range(1, total + 1))
    heard = [_event(CHANNEL, payload) for payload in listener.heard(nodes[0])]
    assert len(heard) == total
    lives = [event for event in heard if isinstance(event, Live)]
    assert [live.seq for live in lives] == list(range(1, total + 1))
    assert len({live.epoch for live in lives}) == 1
    # Each message's seq is the one its publisher was answered.
    answered = {
        f'"{index}:{n}"': seq for index, mine in enumerate(seqs) for n, seq in enumerate(mine)
    }
    assert all(answered[live.data] == live.seq for live in lives)
    assert nodes[0].fetch(total - 3).entries == tuple((live.seq, live.data) for live in lives[-3:])
