"""The fleet's Redis link (drivers/_redis.py) against a real redis-server.

Events reach the test through a queue (``deliver`` puts them there); every
wait is bounded. Failures are real: the server is killed, restarted, paused
(SIGSTOP), or Redis itself kills one of the link's connections.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import redis

from tests.drivers.harness import open_fds
from tests.fleet.redis_server import RedisServer
from wslifecycle.drivers._redis import RedisLink, asyncio_deliver, locked_deliver, trio_deliver
from wslifecycle.fleet.link import (
    Connected,
    Disconnected,
    LinkEvent,
    Listening,
    Message,
    RedisCall,
    RedisFailure,
    Replies,
    Script,
)

E = TypeVar("E", bound=LinkEvent)

#: The bound on any one awaited event.
WAIT = 5.0
#: The link's timeouts in these tests (short, so failures are found fast).
TIMEOUT = 0.5


def script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


INCR = script("incr", "return redis.call('INCR', KEYS[1])")
ECHO = script("echo", "return {KEYS[1], ARGV[1], tonumber(ARGV[2]), false}")
FAIL = script("fail", "return redis.error_reply('nope: ' .. ARGV[1])")
#: Runs ARGV[1] ms: a call that stays in flight (the server answers BUSY meanwhile).
SPIN = script(
    "spin",
    """
    local t = redis.call('TIME')
    local stop = t[1] * 1000000 + t[2] + tonumber(ARGV[1]) * 1000
    repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop
    return 1
    """,
)
SCRIPTS = (INCR, ECHO, FAIL, SPIN)


class Events:
    """What the link delivered, in order."""

    def __init__(self) -> None:
        self.queue: queue.Queue[LinkEvent] = queue.Queue()

    def deliver(self, event: LinkEvent) -> None:
        self.queue.put(event)

    def next(self, timeout: float = WAIT) -> LinkEvent:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def expect(self, kind: type[E], timeout: float = WAIT) -> E:
        event = self.next(timeout)
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    def empty(self) -> bool:
        return self.queue.empty()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_link(events: Events) -> Iterator[Callable[[str], RedisLink]]:
    links: list[RedisLink] = []

    def make(url: str) -> RedisLink:
        link = RedisLink(
            url, SCRIPTS, events.deliver, connect_timeout=TIMEOUT, command_timeout=TIMEOUT
        )
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()


def resources() -> tuple[int, int]:
    """Threads and descriptors, once garbage (an earlier test's) is gone."""
    gc.collect()
    return threading.active_count(), open_fds()


def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)  # polling a condition, bounded by the deadline


def call(call_id: int, which: Script, keys: tuple[str, ...] = (), *args: str) -> RedisCall:
    return RedisCall(call_id, which, keys, args)


def connected(make_link: Callable[[str], RedisLink], events: Events, url: str) -> RedisLink:
    link = make_link(url)
    link.connect()
    events.expect(Connected)
    return link


# ------------------------------------------------------------------ calls


def test_calls_are_answered_in_order_in_one_replies_per_batch(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.send([call(i, INCR, ("counter",)) for i in range(1, 6)])
    assert events.expect(Replies).replies == [(i, i) for i in range(1, 6)]

    link.send([call(7, ECHO, ("k",), "v", "42")])
    assert events.expect(Replies).replies == [(7, [b"k", b"v", 42, None])]


def test_many_sends_all_answered_in_order(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    for start in range(0, 2000, 100):
        link.send([call(i, INCR, ("n",)) for i in range(start, start + 100)])
    answered: list[tuple[int, object]] = []
    while len(answered) < 2000:
        answered += events.expect(Replies).replies
    assert answered == [(i, i + 1) for i in range(2000)]


def test_a_lua_error_fails_only_its_call(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.send([call(1, INCR, ("c",)), call(2, FAIL, (), "why"), call(3, INCR, ("c",))])
    (first, second, third) = events.expect(Replies).replies
    assert first == (1, 1)
    assert third == (3, 2)
    assert second[0] == 2
    assert isinstance(second[1], RedisFailure)
    assert "nope: why" in second[1].reason
    assert not second[1].lost


def test_flushed_scripts_are_loaded_again(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    redis_server.client().script_flush()
    link.send([call(1, INCR, ("c",)), call(2, INCR, ("c",))])
    assert events.expect(Replies).replies == [(1, 1), (2, 2)]
    assert redis_server.client().script_exists(*(s.sha for s in SCRIPTS)) == [True] * 4


def test_a_call_sent_while_down_is_answered_at_once(
    events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = make_link("redis://127.0.0.1:1")  # never connected
    link.send([call(1, INCR, ("c",)), call(2, INCR, ("c",))])
    assert events.expect(Replies).replies == [
        (1, RedisFailure("redis unavailable")),
        (2, RedisFailure("redis unavailable")),
    ]


def test_a_script_that_does_not_compile_fails_the_attempt(
    redis_server: RedisServer, events: Events
) -> None:
    broken = Script("broken", "return {", "0" * 40)
    link = RedisLink(redis_server.url, [INCR, broken], events.deliver, command_timeout=TIMEOUT)
    try:
        link.connect()
        reason = events.expect(Disconnected).reason
        assert reason.startswith(f"redis at 127.0.0.1:{redis_server.port}: script broken")
    finally:
        link.close()


# ---------------------------------------------------------------- pub/sub


def test_listen_confirms_then_delivers_messages_in_order(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.listen(["a", "b"], [])
    assert events.expect(Listening) == Listening("a")
    assert events.expect(Listening) == Listening("b")

    publisher = redis_server.client()
    for i in range(200):
        publisher.publish("ab"[i % 2], f"m{i}")
    for i in range(200):
        assert events.expect(Message) == Message("ab"[i % 2], f"m{i}".encode())

    link.listen([], ["a"])
    until(lambda: publisher.pubsub_numsub("a") == [(b"a", 0)])
    assert publisher.publish("a", "unheard") == 0
    publisher.publish("b", "heard")
    assert events.expect(Message) == Message("b", b"heard")


def test_a_flood_is_delivered_in_order_and_listen_still_gets_its_turn(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.listen(["flood"], [])
    events.expect(Listening)
    publisher = redis_server.client().pipeline(transaction=False)
    for i in range(5000):
        publisher.publish("flood", str(i))
    publisher.execute()  # all in the pub/sub connection's buffers at once
    link.listen(["late"], [])
    payloads: list[bytes] = []
    confirmed = False
    while len(payloads) < 5000 or not confirmed:
        event = events.next()
        if isinstance(event, Message):
            payloads.append(event.payload)
        else:
            assert event == Listening("late")
            confirmed = True
    assert payloads == [str(i).encode() for i in range(5000)]


def test_listen_while_down_is_not_kept(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = make_link(redis_server.url)
    link.listen(["early"], [])
    link.connect()
    events.expect(Connected)
    link.listen(["late"], [])
    assert events.expect(Listening) == Listening("late")
    assert redis_server.client().pubsub_numsub("early") == [(b"early", 0)]


# --------------------------------------------------------------- failures


def test_kill_fails_the_call_in_flight_then_disconnects(
    events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    with RedisServer("--busy-reply-threshold", "20") as server:
        link = connected(make_link, events, server.url)
        link.send([call(1, SPIN, (), "3000")])
        watcher = server.client()
        until(lambda: _busy(watcher))  # the call is running: in flight
        server.kill()
        ((call_id, failure),) = events.expect(Replies).replies
        assert call_id == 1
        assert isinstance(failure, RedisFailure)
        assert failure.lost
        assert failure.reason.startswith(f"redis at 127.0.0.1:{server.port}: ")
        assert events.expect(Disconnected).reason.startswith(f"redis at 127.0.0.1:{server.port}")
        link.send([call(2, INCR, ("c",))])
        assert events.expect(Replies).replies == [(2, RedisFailure("redis unavailable"))]


def _busy(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def test_kill_while_idle_is_noticed_by_the_pubsub_connection(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    connected(make_link, events, redis_server.url)
    started = time.monotonic()
    redis_server.kill()
    reason = events.expect(Disconnected, timeout=1.0).reason
    assert time.monotonic() - started < 0.5
    assert reason == f"redis at 127.0.0.1:{redis_server.port}: Connection closed by server"
    assert events.empty()


def test_connect_while_down_says_why(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    redis_server.stop()
    link = make_link(redis_server.url)
    link.connect()
    link.connect()  # an attempt is under way: no second one
    assert events.expect(Disconnected) == Disconnected(
        f"redis at 127.0.0.1:{redis_server.port}: Connection refused"
    )
    link.connect()  # the fleet decides to try again
    events.expect(Disconnected)
    assert events.empty()


def test_restart_then_connect_again_and_resubscribe(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.listen(["a"], [])
    events.expect(Listening)
    link.send([call(1, INCR, ("c",))])
    assert events.expect(Replies).replies == [(1, 1)]

    redis_server.restart()
    events.expect(Disconnected)
    link.connect()
    events.expect(Connected)
    link.send([call(2, INCR, ("c",))])
    assert events.expect(Replies).replies == [(2, 1)]  # an empty server, scripts loaded again
    link.listen(["a"], [])
    assert events.expect(Listening) == Listening("a")
    redis_server.client().publish("a", "again")
    assert events.expect(Message) == Message("a", b"again")


def test_a_hung_redis_is_noticed_while_idle(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.listen(["a"], [])
    events.expect(Listening)
    redis_server.pause()
    started = time.monotonic()
    reason = events.expect(Disconnected).reason
    # An idle ping after min(1 s, command_timeout), its answer due in command_timeout.
    assert time.monotonic() - started < 2 * TIMEOUT + 0.3
    assert reason == f"redis at 127.0.0.1:{redis_server.port}: timed out"


def test_a_hung_redis_fails_the_call_in_flight_within_the_command_timeout(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    redis_server.pause()
    started = time.monotonic()
    link.send([call(1, INCR, ("c",))])
    ((call_id, failure),) = events.expect(Replies).replies
    assert time.monotonic() - started < TIMEOUT + 0.3
    assert call_id == 1
    assert failure == RedisFailure(f"redis at 127.0.0.1:{redis_server.port}: timed out", lost=True)
    events.expect(Disconnected)
    redis_server.resume()
    link.connect()
    events.expect(Connected)


def test_redis_killing_the_pubsub_connection_ends_the_session(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.listen(["a"], [])
    events.expect(Listening)
    assert redis_server.client().client_kill_filter(_type="pubsub") == 1
    assert "Connection closed by server" in events.expect(Disconnected).reason
    link.connect()
    events.expect(Connected)


def test_redis_killing_the_command_connection_fails_the_next_call(
    redis_server: RedisServer, events: Events, make_link: Callable[[str], RedisLink]
) -> None:
    link = connected(make_link, events, redis_server.url)
    link.listen(["a"], [])  # the other connection is now of type pubsub
    events.expect(Listening)
    assert redis_server.client().client_kill_filter(_type="normal") == 1
    link.send([call(1, INCR, ("c",)), call(2, INCR, ("c",))])
    replies = events.expect(Replies).replies
    assert [call_id for call_id, _ in replies] == [1, 2]
    assert all(isinstance(r, RedisFailure) and r.lost for _, r in replies)
    events.expect(Disconnected)
    assert events.empty()


# ------------------------------------------------------------------ close


def test_close_leaves_no_thread_and_no_descriptor(
    redis_server: RedisServer, events: Events
) -> None:
    threads, fds = resources()
    link = RedisLink(redis_server.url, SCRIPTS, events.deliver, command_timeout=TIMEOUT)
    link.connect()
    events.expect(Connected)
    link.listen(["a"], [])
    events.expect(Listening)
    link.send([call(1, INCR, ("c",))])
    events.expect(Replies)
    assert threading.active_count() == threads + 2
    link.close()
    assert resources() == (threads, fds)
    link.send([call(2, INCR, ("c",))])
    link.connect()
    assert events.empty()
    assert resources() == (threads, fds)


def test_close_with_a_call_in_flight_is_bounded(events: Events) -> None:
    threads, fds = resources()
    with RedisServer("--busy-reply-threshold", "20") as server:
        link = RedisLink(
            server.url, SCRIPTS, events.deliver, connect_timeout=TIMEOUT, command_timeout=TIMEOUT
        )
        link.connect()
        events.expect(Connected)
        link.send([call(1, SPIN, (), "3000")])
        watcher = server.client()
        until(lambda: _busy(watcher))  # in flight: the command thread waits for its answer
        started = time.monotonic()
        link.close()
        # The command thread stops at its socket timeout; nothing is delivered.
        assert time.monotonic() - started < TIMEOUT + 0.3
    assert resources() == (threads, fds)
    assert events.empty()


# ------------------------------------------------- delivering on a driver's loop


def test_asyncio_deliver_runs_the_handler_on_the_loop(redis_server: RedisServer) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[tuple[int, LinkEvent]] = asyncio.Queue()
        link = RedisLink(
            redis_server.url,
            SCRIPTS,
            asyncio_deliver(loop, lambda event: got.put_nowait((threading.get_ident(), event))),
        )
        try:
            link.connect()
            ident, event = await asyncio.wait_for(got.get(), WAIT)
            assert (ident, event) == (threading.get_ident(), Connected())
            link.send([call(1, INCR, ("c",))])
            ident, event = await asyncio.wait_for(got.get(), WAIT)
            assert (ident, event) == (threading.get_ident(), Replies([(1, 1)]))
        finally:
            link.close()

    asyncio.run(main())


def test_trio_deliver_runs_the_handler_in_the_run(redis_server: RedisServer) -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        sender, receiver = trio.open_memory_channel[tuple[int, LinkEvent]](100)
        token = trio.lowlevel.current_trio_token()
        link = RedisLink(
            redis_server.url,
            SCRIPTS,
            trio_deliver(token, lambda event: sender.send_nowait((threading.get_ident(), event))),
        )
        try:
            link.connect()
            with trio.fail_after(WAIT):
                ident, event = await receiver.receive()
            assert (ident, event) == (threading.get_ident(), Connected())
            link.listen(["t"], [])
            with trio.fail_after(WAIT):
                ident, event = await receiver.receive()
            assert (ident, event) == (threading.get_ident(), Listening("t"))
        finally:
            link.close()

    trio.run(main)


class WatchedLock:
    """A lock that says when someone waits for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waited = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self.lock.acquire(blocking=False):
            self.waited.set()
            return self.lock.acquire(blocking, timeout)
        return True

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_locked_deliver_handles_holding_the_lock_then_calls_after(
    redis_server: RedisServer,
) -> None:
    lock = WatchedLock()
    seen: queue.Queue[tuple[bool, LinkEvent]] = queue.Queue()
    afters: queue.Queue[bool] = queue.Queue()
    link: RedisLink

    def handle(event: LinkEvent) -> None:
        seen.put((lock.lock.locked(), event))
        # The handler may call the link: it runs on the link's own threads.
        if isinstance(event, Connected):
            link.listen(["s"], [])
        elif isinstance(event, Listening):
            link.send([call(1, INCR, ("c",))])
        elif isinstance(event, Replies):
            link.close()

    link = RedisLink(
        redis_server.url,
        SCRIPTS,
        locked_deliver(lock, handle, lambda: afters.put(lock.lock.locked())),
    )
    link.connect()
    assert seen.get(timeout=WAIT) == (True, Connected())
    assert seen.get(timeout=WAIT) == (True, Listening("s"))
    assert seen.get(timeout=WAIT) == (True, Replies([(1, 1)]))
    assert [afters.get(timeout=WAIT) for _ in range(3)] == [False] * 3
    link.close()


def test_close_under_the_drivers_lock_does_not_wait_for_a_delivery(
    redis_server: RedisServer,
) -> None:
    threads, fds = resources()
    lock = WatchedLock()
    handled: list[LinkEvent] = []
    link = RedisLink(redis_server.url, SCRIPTS, locked_deliver(lock, handled.append, lambda: None))
    with lock:
        link.send([call(1, INCR, ("c",))])  # its answer waits for the lock
        assert lock.waited.wait(WAIT)
        started = time.monotonic()
        link.close()
        assert time.monotonic() - started < 0.5
    assert handled == []
    assert resources() == (threads, fds)
