"""The fleet end to end: ``wslifecycle serve --redis`` processes on the three
drivers, one real redis-server, `websockets` clients.

What a client of the fleet is promised (core/relay.py): one sequence per
channel across every node, each message once and in order, any hole
announced with ``drift``; presence that forgets a dead node's members
within the lease; a Redis outage that degrades (never silences) and
recovers. Timings worth knowing are printed (``pytest -s``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import pytest
from websockets.frames import Close

from tests.fleet.nodes import (
    Client,
    Frame,
    Node,
    Sequence,
    fleet,
    learn_id,
    read_sequence,
    wait_each,
    wait_until,
)
from tests.fleet.redis_server import RedisServer

DRIVERS = ("asyncio", "selector", "trio")


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Every client a test opens is appended here and closed after it."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def is_type(kind: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("type") == kind


def presence_event(kind: str, member: str) -> Callable[[Frame], bool]:
    """A ``join`` or ``leave`` of ``member``."""
    return lambda frame: frame.get("type") == kind and frame.get("id") == member


def carrying(data: object) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("data") == data


def timings(took: Mapping[Node, float] | Mapping[Client, float]) -> str:
    """``asyncio 0.12 s, selector 0.10 s, …`` (a client by its node's driver)."""
    return ", ".join(
        f"{thing.driver if isinstance(thing, Node) else thing.node.driver} {seconds:.2f} s"
        for thing, seconds in took.items()
    )


def publish(client: Client, channel: str, data: object) -> Frame:
    """Publish and wait for the answer (``published`` or ``error``)."""
    return client.ask(
        {"type": "publish", "channel": channel, "data": data},
        lambda f: f.get("type") in ("published", "error") and f.get("channel") == channel,
    )


def sequence_of(client: Client, channel: str, since: int | None = None) -> Sequence:
    """What ``client`` was delivered on ``channel`` since it subscribed (or
    since the seq it resumed from), checked to read as one sequence (see
    read_sequence)."""
    subscribed = client.of(channel, "subscribed")[0]
    start = subscribed["seq"] if since is None else since
    frames = client.of(channel, "message", "drift")
    return read_sequence(frames, start, subscribed["epoch"])


# ------------------------------------------------------------ 1. fan-out


def test_a_publish_on_each_node_reaches_every_node_once_in_order(
    redis_server: RedisServer, clients: list[Client]
) -> None:
    channel = "news"
    with fleet(redis_server.url, DRIVERS) as nodes:
        subscribers = [Client(node, f"sub-{node.driver}") for node in nodes]
        publishers = [Client(node, f"pub-{node.driver}") for node in nodes]
        clients += subscribers + publishers
        for subscriber in subscribers:
            answer = subscriber.subscribe(channel)
            assert answer["type"] == "subscribed", answer
            assert answer["seq"] == 0, answer
        epoch = subscribers[0].of(channel, "subscribed")[0]["epoch"]
        assert {s.of(channel, "subscribed")[0]["epoch"] for s in subscribers} == {epoch}

        sent: list[object] = []
        for round_ in range(3):
            for publisher in publishers:
                data = {"from": publisher.name, "round": round_}
                answer = publish(publisher, channel, data)
                sent.append(data)
                # receivers: the fleet's members (the three subscribers, not the publishers)
                assert answer == {
                    "type": "published",
                    "channel": channel,
                    "seq": len(sent),
                    "receivers": 3,
                }, answer
        # A last one: whatever came before it on a connection has arrived when it has.
        sent.append("end")
        assert publish(publishers[0], channel, "end")["seq"] == len(sent)

        for subscriber in subscribers:
            subscriber.wait_for(lambda f: f.get("data") == "end")
            messages = subscriber.of(channel, "message")
            assert [m["seq"] for m in messages] == list(range(1, len(sent) + 1)), subscriber
            assert [m["data"] for m in messages] == sent, subscriber
            assert not subscriber.of(channel, "drift"), subscriber
        # Publishers that did not subscribe got their answers, and nothing else.
        for publisher in publishers:
            assert not publisher.of(channel, "message"), publisher


# ----------------------------------------------- 2. concurrent publishers


def test_concurrent_publishers_on_every_node_make_one_sequence(
    redis_server: RedisServer, clients: list[Client]
) -> None:
    channel = "busy"
    per_publisher = 200
    with fleet(redis_server.url, DRIVERS, "--history-size", "1000") as nodes:
        subscribers = [Client(node, f"sub-{node.driver}") for node in nodes]
        publishers = [Client(node, f"pub-{node.driver}") for node in nodes]
        clients += subscribers + publishers
        for subscriber in subscribers:
            assert subscriber.subscribe(channel)["type"] == "subscribed"

        start = threading.Barrier(len(publishers))

        def flood(publisher: Client) -> None:
            start.wait(10)
            for n in range(per_publisher):
                publisher.send({"type": "publish", "channel": channel, "data": [publisher.name, n]})

        threads = [threading.Thread(target=flood, args=(p,)) for p in publishers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()

        # Each publisher's answers come in the order it published (one
        # connection, one node, one pipeline to Redis): its n-th answer is
        # the seq of its n-th message.
        seq_of: dict[tuple[str, int], int] = {}
        for publisher in publishers:
            answers = publisher.wait_count(
                lambda f: f.get("type") in ("published", "error"), per_publisher, timeout=30
            )
            assert all(a["type"] == "published" for a in answers), answers
            seqs = [a["seq"] for a in answers]
            assert seqs == sorted(seqs), publisher
            assert len(set(seqs)) == per_publisher, publisher
            for n, seq in enumerate(seqs):
                seq_of[(publisher.name, n)] = seq
        total = per_publisher * len(publishers)
        assert sorted(seq_of.values()) == list(range(1, total + 1))
        data_of = {seq: [name, n] for (name, n), seq in seq_of.items()}

        for subscriber in subscribers:
            subscriber.wait_for(
                lambda f: (
                    (f.get("type") == "message" and f["seq"] == total)
                    or (f.get("type") == "drift" and f["oldest"] > total)
                ),
                timeout=30,
            )
            delivered = sequence_of(subscriber, channel)  # consecutive, or drift says why
            drifts = subscriber.of(channel, "drift")
            messages = subscriber.of(channel, "message")
            for message in messages:
                assert message["data"] == data_of[message["seq"]], message
            if not drifts:
                assert [seq for _, seq in delivered.delivered] == list(range(1, total + 1)), (
                    subscriber
                )
                assert sorted(tuple(m["data"]) for m in messages) == sorted(seq_of), subscriber
            print(f"\n{subscriber}: {len(messages)} messages, {len(drifts)} drifts")


# ----------------------------------------------------- 3. a node dies


@pytest.mark.parametrize("victim", DRIVERS)
def test_a_killed_nodes_members_are_gone_within_the_lease(
    redis_server: RedisServer, clients: list[Client], victim: str
) -> None:
    channel = "room"
    ttl = 3.0
    with fleet(redis_server.url, DRIVERS, "--presence-ttl", str(ttl)) as nodes:
        dead = next(node for node in nodes if node.driver == victim)
        alive = [node for node in nodes if node is not dead]
        watchers = [Client(node, f"watch-{node.driver}") for node in alive]
        doomed = [Client(dead, f"doomed-{i}") for i in range(2)]
        clients += watchers + doomed
        known: set[str] = set()
        for watcher in watchers:  # with presence: they hear joins and leaves
            learn_id(watcher, watchers[0], channel, known, presence=True)
        doomed_ids = {learn_id(client, watchers[0], channel, known) for client in doomed}
        for watcher in watchers:
            for member in doomed_ids:
                watcher.wait_for(presence_event("join", member))

        def heard_both_leave(watcher: Client) -> bool:
            left = {f["id"] for f in watcher.of(channel, "leave")}
            return doomed_ids <= left

        killed = time.monotonic()
        dead.kill()
        gone_at = wait_each(
            watchers,
            lambda w: not (w.member_ids(channel) & doomed_ids),
            ttl + 2,
            "the dead node's members no longer listed",
            since=killed,
        )
        left_at = wait_each(watchers, heard_both_leave, ttl + 3, "leave events", since=killed)
        print(
            f"\nkill -9 {victim} (presence-ttl {ttl}): members gone on {timings(gone_at)};"
            f" leave events by {timings(left_at)}"
        )
        # A lease runs ttl from its last renewal (here the doomed clients'
        # subscribe, just before the kill): gone within ttl, whatever the node did.
        assert max(gone_at.values()) <= ttl + 0.75, gone_at
        # A leave is published by the first renewal (every ttl/3) after the lease ran out.
        assert max(left_at.values()) <= ttl + ttl / 3 + 0.75, left_at
        for watcher in watchers:
            assert watcher.member_ids(channel) == {w.id for w in watchers}
        for client in doomed:
            client.closed.wait(5)
            assert client.closed.is_set()


# ------------------------------------------------ 4. teardown, fleet-wide


def test_a_closed_client_is_gone_from_members_on_another_node_at_once(
    redis_server: RedisServer, clients: list[Client]
) -> None:
    channel = "lobby"
    # --close-timeout: how long a failed connection lingers (see below).
    flags = ("--max-message-size", "1024", "--close-timeout", "1")
    with fleet(redis_server.url, DRIVERS, *flags) as nodes:
        watchers = [Client(node, f"watch-{node.driver}") for node in nodes]
        clients += watchers
        known: set[str] = set()
        for watcher in watchers:
            learn_id(watcher, watchers[0], channel, known)

        for i, node in enumerate(nodes):
            other = watchers[(i + 1) % len(nodes)]  # asked on another node
            # The client closes: the server's close frame comes after its leave.
            leaving = Client(node, f"leaving-{node.driver}")
            clients.append(leaving)
            learn_id(leaving, other, channel, known)
            leaving.ws.close()
            close = leaving.ws.protocol.close_rcvd
            assert close is not None
            assert close.code == 1000, close
            assert leaving.id not in other.member_ids(channel), node
            known.discard(leaving.id)

            # The server closes (a message over --max-message-size: 1009).
            refused = Client(node, f"refused-{node.driver}")
            clients.append(refused)
            learn_id(refused, other, channel, known)
            refused.ws.send("x" * 2048)

            # The close frame, not the end of TCP: after failing a connection
            # the server waits close_timeout for a close reply it no longer reads.
            def close_frame(c: Client = refused) -> Close | None:
                return c.ws.protocol.close_rcvd

            closing = wait_until(close_frame, 10, "the 1009 close frame")
            assert closing.code == 1009, closing
            assert refused.id not in other.member_ids(channel), node
            known.discard(refused.id)

        # A drain (SIGTERM) closes with 1001, each client gone before its close frame.
        drained, asked = nodes[0], watchers[1]
        stayers = [Client(drained, f"stayer-{i}") for i in range(3)]
        clients += stayers
        for stayer in stayers:
            learn_id(stayer, asked, channel, known)
        drained.process.terminate()
        for stayer in stayers:
            assert stayer.closed.wait(15)
            close = stayer.ws.protocol.close_rcvd
            assert close is not None
            assert close.code == 1001, close
            assert stayer.id not in asked.member_ids(channel)
        assert drained.process.wait(20) == 0, drained.log()
        assert asked.member_ids(channel) == {w.id for w in watchers[1:]}


# --------------------------------------------------- 5. Redis goes away


@pytest.mark.slow  # 8-11 s: a 5 s outage, then a reconnect backoff of up to 5 s
def test_a_redis_outage_degrades_every_node_and_the_fleet_recovers(
    redis_server: RedisServer, clients: list[Client]
) -> None:
    channel = "feed"
    flags = ("--heartbeat-interval", "1", "--presence-ttl", "3")
    with fleet(redis_server.url, DRIVERS, *flags) as nodes:
        subscribers = [Client(node, f"sub-{node.driver}") for node in nodes]
        publishers = [Client(node, f"pub-{node.driver}") for node in nodes]
        clients += subscribers + publishers
        known: set[str] = set()
        for subscriber in subscribers:
            learn_id(subscriber, subscribers[0], channel, known)
        old_epoch = subscribers[0].of(channel, "subscribed")[0]["epoch"]
        pongs = {node: node.metric("wslifecycle_pongs_received_total") for node in nodes}

        # A burst, and Redis killed while some of it may still be on its way.
        burst = 20
        for n in range(burst):
            publishers[0].send({"type": "publish", "channel": channel, "data": ["before", n]})
        publishers[0].wait_for(is_type("published"))
        killed = time.monotonic()
        redis_server.kill()
        degraded_at = wait_each(nodes, Node.degraded, 10, "degraded")
        answers = publishers[0].wait_count(lambda f: f["type"] in ("published", "error"), burst)
        acked = [answer["seq"] for answer in answers if answer["type"] == "published"]
        for node in nodes:
            status, body = node.health()
            assert status == 200, body
            assert body.startswith("degraded: redis unavailable ("), body
            assert node.metric("wslifecycle_broker_up") == 0
            assert node.metric("wslifecycle_broker_outages_total") >= 1

        # A publish now is refused out loud; this node's subscribers still get it, unsequenced.
        for node, publisher, subscriber in zip(nodes, publishers, subscribers, strict=True):
            data = ["during", node.driver]
            answer = publish(publisher, channel, data)
            assert answer["type"] == "error", answer
            assert "not published to the fleet" in answer["reason"], answer
            assert answer["local_receivers"] == 1, answer
            local = subscriber.wait_for(carrying(data))
            assert local["local"] is True, local
            assert "seq" not in local, local
            members = subscriber.members(channel)  # this node's only, and said so
            assert members["partial"] is True, members
            assert members["ids"] == [subscriber.id], members

        # The outage lasts while heartbeats go round five times (two clients
        # a node, one a second): nobody is dropped.
        wait_each(
            nodes,
            lambda n: n.metric("wslifecycle_pongs_received_total") >= pongs[n] + 10,
            10,
            "heartbeats during the outage",
        )
        outage = time.monotonic() - killed
        assert not any(client.closed.is_set() for client in clients), clients

        redis_server.start()  # the same port, empty: every sequence starts anew
        ok_at = wait_each(nodes, Node.healthy, 15, "back on redis")
        for node in nodes:
            assert node.metric("wslifecycle_broker_up") == 1
        # Presence registered again, on every node.
        wait_each(subscribers, lambda s: s.member_ids(channel) == known, 5, "members")
        print(
            f"\nredis killed for {outage:.1f} s: degraded on {timings(degraded_at)} after"
            f" the kill; ok on {timings(ok_at)} after the restart"
        )

        for round_, publisher in enumerate(publishers, start=1):
            answer = publish(publisher, channel, ["after", round_])
            assert answer["type"] == "published", answer
            assert answer["seq"] == round_, answer
            assert answer["receivers"] == 3, answer
        for subscriber in subscribers:
            subscriber.wait_for(lambda f: f.get("data") == ["after", len(publishers)])
            seen = sequence_of(subscriber, channel)
            # Told that the old sequence ended before anything of the new one.
            epoch_drifts = [
                drift for drift in subscriber.of(channel, "drift") if drift["reason"] == "epoch"
            ]
            assert len(epoch_drifts) == 1, subscriber.of(channel, "drift")
            new_epoch = epoch_drifts[0]["epoch"]
            assert new_epoch != old_epoch
            assert seen.delivered[-3:] == [(new_epoch, 1), (new_epoch, 2), (new_epoch, 3)]
            # Whatever was stored before the kill reached it, or a drift said it would not.
            for seq in acked:
                assert seen.accounts_for(old_epoch, seq), (subscriber, seq, seen)
            # Unsequenced messages stayed on their own node.
            assert [f["data"] for f in subscriber.frames if f.get("local")] == [
                ["during", subscriber.node.driver]
            ]


@pytest.mark.parametrize("late", DRIVERS)
def test_a_node_back_late_after_a_restart_replays_the_new_sequence_from_its_start(
    redis_server: RedisServer, clients: list[Client], late: str
) -> None:
    """The other nodes published the new sequence's first messages while
    this one was away (held with SIGSTOP): its old cursor (1) is no seq of
    the new sequence, so what history holds of it is replayed, all of it,
    after the epoch drift."""
    channel = "later"
    with fleet(redis_server.url, DRIVERS) as nodes:
        away = next(node for node in nodes if node.driver == late)
        here = next(node for node in nodes if node is not away)
        subscriber, publisher = Client(away, "away"), Client(here, "publisher")
        clients += [subscriber, publisher]
        old_epoch = subscriber.subscribe(channel)["epoch"]
        assert publish(publisher, channel, "old")["seq"] == 1
        subscriber.wait_for(lambda f: f.get("seq") == 1)

        away.process.send_signal(signal.SIGSTOP)
        try:
            redis_server.kill()
            wait_until(here.degraded, 10, f"{here} lost redis")
            redis_server.start()
            wait_until(here.healthy, 15, f"{here} back on redis")
            for n in range(1, 4):
                assert publish(publisher, channel, f"new{n}")["seq"] == n
        finally:
            away.process.send_signal(signal.SIGCONT)
        wait_until(away.healthy, 15, f"{away} back on redis")
        assert publish(publisher, channel, "new4")["seq"] == 4
        subscriber.wait_for(lambda f: f.get("data") == "new4")
        frames = subscriber.of(channel, "message", "drift")
        drift = frames[1]
        assert drift["reason"] == "epoch", frames
        assert drift["epoch"] != old_epoch, frames
        assert (drift["since"], drift["oldest"]) == (1, 1), drift
        assert [(m["seq"], m["data"]) for m in frames[2:]] == [
            (n, f"new{n}") for n in range(1, 5)
        ], frames


# --------------------------------------------- 6. resume on another node


def messages_after(client: Client, channel: str, since: int) -> list[Frame]:
    return [m for m in client.of(channel, "message") if m["seq"] > since]


def test_a_client_resumes_on_another_node(redis_server: RedisServer, clients: list[Client]) -> None:
    channel = "story"
    with fleet(redis_server.url, DRIVERS, "--history-size", "5") as nodes:
        first, second, third = nodes
        publisher = Client(third, "publisher")
        reader = Client(first, "reader")
        clients += [publisher, reader]
        subscribed = reader.subscribe(channel)
        epoch = subscribed["epoch"]
        assert subscribed["seq"] == 0, subscribed

        def send(n: int) -> None:
            answer = publish(publisher, channel, f"m{n}")
            assert answer["type"] == "published", answer
            assert answer["seq"] == n, answer

        for n in range(1, 4):
            send(n)
        reader.wait_for(lambda f: f.get("seq") == 3)
        k = 3
        reader.close()  # read up to k, then gone
        for n in range(4, 7):
            send(n)  # history (5) now holds 2..6

        # Within history: the messages after k in order, then live ones.
        back = Client(second, "back")
        clients.append(back)
        answer = back.subscribe(channel, since=k, epoch=epoch)
        assert answer == {"type": "subscribed", "channel": channel, "seq": 6, "epoch": epoch}
        send(7)
        back.wait_for(lambda f: f.get("seq") == 7)
        assert [(m["seq"], m["data"]) for m in back.of(channel, "message")] == [
            (n, f"m{n}") for n in range(4, 8)
        ]
        assert not back.of(channel, "drift")

        # Older than history: drift {since, oldest} first, then what history holds.
        for n in range(8, 15):
            send(n)  # history holds 10..14
        late = Client(third, "late")
        clients.append(late)
        assert late.subscribe(channel, since=k, epoch=epoch)["seq"] == 14
        late.wait_for(lambda f: f.get("seq") == 14)
        frames = late.of(channel, "drift", "message")
        assert frames[0] == {
            "type": "drift",
            "channel": channel,
            "since": k,
            "oldest": 10,
            "epoch": epoch,
            "reason": "history",
        }, frames
        assert [(m["seq"], m["data"]) for m in frames[1:]] == [(n, f"m{n}") for n in range(10, 15)]

        # Redis restarted empty: a since from the old epoch is never replayed silently.
        redis_server.kill()
        wait_each(nodes, Node.degraded, 10, "lost redis")
        redis_server.start()
        wait_each(nodes, Node.healthy, 15, "back on redis")
        stale = Client(first, "stale")
        clients.append(stale)
        answer = stale.subscribe(channel, since=14, epoch=epoch)
        assert answer["type"] == "subscribed", answer
        assert answer["seq"] == 0, answer
        new_epoch = answer["epoch"]
        assert new_epoch != epoch
        drift = stale.wait_for(is_type("drift"))
        assert drift == {
            "type": "drift",
            "channel": channel,
            "since": 14,
            "oldest": 1,
            "epoch": new_epoch,
            "reason": "epoch",
        }, drift
        answer = publish(publisher, channel, "new")
        assert answer["type"] == "published", answer
        assert answer["seq"] == 1, answer
        stale.wait_for(lambda f: f.get("data") == "new")
        assert [(m["seq"], m["data"]) for m in stale.of(channel, "message")] == [(1, "new")]
        # The subscriber that stayed was told too, before the new sequence's first message.
        back.wait_for(lambda f: f.get("data") == "new")
        seen = sequence_of(back, channel, since=k)
        assert seen.delivered[-1] == (new_epoch, 1)
        assert seen.holes[-1][3] == new_epoch


# ------------------------------------------------------ 7. Redis hangs


def test_a_hung_redis_degrades_the_nodes_and_nothing_is_lost_silently(
    redis_server: RedisServer, clients: list[Client]
) -> None:
    channel = "pulse"
    with fleet(redis_server.url, DRIVERS) as nodes:
        subscribers = [Client(node, f"sub-{node.driver}") for node in nodes]
        publishers = [Client(node, f"pub-{node.driver}") for node in nodes]
        clients += subscribers + publishers
        for subscriber in subscribers:
            assert subscriber.subscribe(channel)["type"] == "subscribed"
        epoch = subscribers[0].of(channel, "subscribed")[0]["epoch"]
        for n in range(1, 4):
            assert publish(publishers[n % 3], channel, ["before", n])["seq"] == n
        for subscriber in subscribers:
            subscriber.wait_for(lambda f: f.get("seq") == 3)

        redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
        mark = publishers[0].mark()
        publishers[0].send({"type": "publish", "channel": channel, "data": ["hung"]})
        degraded_at = wait_each(nodes, Node.degraded, 10, "the hang noticed")
        # The publish sent into the hang was answered when the command timed
        # out: an error that says it may have been stored.
        hung = publishers[0].wait_for(lambda f: f["type"] in ("published", "error"), since=mark)
        assert hung["type"] == "error", hung
        assert "may have been stored" in hung["reason"], hung
        for node, publisher in zip(nodes, publishers, strict=True):
            answer = publish(publisher, channel, ["during", node.driver])
            assert answer["type"] == "error", answer
            assert answer["local_receivers"] == 1, answer

        redis_server.resume()
        ok_at = wait_each(nodes, Node.healthy, 15, "back on redis")
        print(
            f"\nredis SIGSTOP: degraded on {timings(degraded_at)};"
            f" after SIGCONT ok on {timings(ok_at)}"
        )
        # Noticed by the command timeout (2 s), or by the pub/sub connection's
        # idle PING (after 1 s) going unanswered for as long.
        assert max(degraded_at.values()) <= 3 + 1, degraded_at

        answer = publish(publishers[1], channel, ["after"])
        assert answer["type"] == "published", answer
        top = answer["seq"]  # 4, or 5 if the hung publish ran once Redis woke
        for subscriber in subscribers:
            subscriber.wait_for(lambda f: f.get("data") == ["after"])
            seen = sequence_of(subscriber, channel)
            # The same sequence went on: what was missed was replayed or announced.
            assert all(hole[3] == epoch for hole in seen.holes), seen.holes
            for seq in range(1, top + 1):
                assert seen.accounts_for(epoch, seq), (subscriber, seq, seen)
            print(f"{subscriber}: delivered {seen.delivered}, drifts {seen.holes}")
