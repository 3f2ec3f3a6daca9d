"""The browser client (drivers/client.js) in Debian's headless Chromium,
against real servers: ``wslifecycle serve --serve-client`` nodes (one in
memory, or two on a real redis-server), killed with SIGKILL, restarted on
their port or stopped with SIGSTOP, and small ``websockets`` servers that
close with a chosen code or play a scripted relay.

The page (tests/browser/client_harness.js, from tests/browser/site.py, an
origin of its own) records every event the client emits and every frame it
sends; the tests wait on those with bounded timeouts.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from tests.browser.chromium import Browser, launched
from tests.browser.site import Site
from tests.fleet.nodes import Client, Node, wait_until
from tests.fleet.redis_server import RedisServer, find_redis_server

#: Short backoff, so a test sees several retries in a second.
BASE, CAP = 0.1, 0.4
FAST: dict[str, Any] = {"policy": {"baseDelay": BASE, "maxDelay": CAP}}

#: Helpers for the conditions (the harness's kinds, times and sentOf are global).
JS = """
const state = () => window.client ? window.client.state : null;
const frames = (type) => kinds("frame").filter((f) => f.type === type);
const messages = (channel) => kinds("message").filter((m) => m.channel === channel);
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with launched(tmp_path_factory, JS) as driver:
        yield driver


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site() as serving:
        yield serving


class Page:
    """The harness page, fresh, with one client on it."""

    def __init__(self, browser: Browser, site: Site) -> None:
        self.browser = browser
        browser.console.clear()
        loaded = browser.do("goto", url=site.origin + "/")
        assert loaded["status"] == 200

    def start(self, module: str, url: str, **options: Any) -> None:
        args = ", ".join(json.dumps(value) for value in (module, url, options))
        assert self.browser.value(f"start({args})") == "connecting"

    def run(self, statement: str) -> Any:
        return self.browser.value(statement)

    def wait(self, condition: str, timeout: float = 5.0) -> None:
        try:
            self.browser.wait(condition, timeout)
        except AssertionError as error:  # what the client did, to read with the failure
            story = self.browser.value("JSON.stringify({events, sent}, null, 1)")
            said = f"{error}\nwaiting for {condition}; the page saw {story}"
            raise AssertionError(said) from None

    def kinds(self, kind: str) -> list[Any]:
        found: list[Any] = self.browser.value(f"kinds({json.dumps(kind)})")
        return found

    def sent(self, kind: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.browser.value(f"sentOf({json.dumps(kind)})")
        return found

    def messages(self, channel: str) -> list[tuple[int, Any]]:
        return [(m["seq"], m["data"]) for m in self.kinds("message") if m["channel"] == channel]

    def close(self) -> None:
        """Stop the client (its socket closes with 1000) and check the page
        raised nothing on the way."""
        self.run("(client.close(), state())")
        errors = [line for line in self.browser.console if "pageerror" in line]
        assert not errors, errors


@contextlib.contextmanager
def node(driver: str, redis_url: str | None, *flags: str) -> Iterator[Node]:
    """A ``wslifecycle serve`` node, reaped on the way out whatever happened."""
    started = Node(driver, redis_url, *flags)
    try:
        yield started
    except BaseException:
        print(f"--- log of {started} ---\n{started.log()}")
        raise
    finally:
        started.close()


def publish(client: Client, channel: str, data: object) -> int:
    """Publish through ``client``; the message's seq."""
    answer = client.ask(
        {"type": "publish", "channel": channel, "data": data},
        lambda f: f.get("type") in ("published", "error") and f.get("channel") == channel,
    )
    assert answer["type"] == "published", answer
    seq: int = answer["seq"]
    return seq


def check_backoff(reconnects: list[dict[str, Any]]) -> None:
    """Each retry n (attempt n + 1) waited a delay in [0, min(CAP, BASE * 2^n)]."""
    for n, retry in enumerate(reconnects):
        assert retry["attempt"] == n + 1, reconnects
        assert 0 <= retry["delay"] <= min(CAP, BASE * 2**n), (n, retry)


def resubscribes(page: Page, channel: str) -> list[tuple[int, dict[str, Any]]]:
    """The subscribes the client sent for ``channel``: (socket number, frame)."""
    sent = page.sent("subscribe")
    return [(s["socket"], s["frame"]) for s in sent if s["frame"]["channel"] == channel]


# ------------------------------------------------------ one node, in memory


@pytest.mark.parametrize("driver", ["asyncio", "selector", "trio"])
def test_a_killed_node_is_reconnected_with_backoff_and_its_lost_history_is_a_drift(
    driver: str, browser: Browser, site: Site
) -> None:
    """The page imports /client.js from the node and subscribes; the node
    echoes its application heartbeats; it is SIGKILLed: the client retries
    with full-jitter backoff until the node is back on its port, subscribes
    again once with since and epoch, and, the history having died with the
    process, is told so by a drift before the new messages, in order."""
    started = time.monotonic()
    flags = ("--serve-client", "--allow-origin", site.origin,
             "--heartbeat-mode", "application", "--heartbeat-interval", "0.5")  # fmt: skip
    page = Page(browser, site)
    with node(driver, None, *flags) as first:
        port = first.port
        page.start(f"http://127.0.0.1:{port}/client.js", f"ws://127.0.0.1:{port}/", **FAST)
        page.run("(client.subscribe('news'), true)")
        page.wait("frames('subscribed').length === 1")
        (subscribed,) = page.kinds("frame")
        epoch = subscribed["epoch"]
        publisher = Client(first)
        sent = [publish(publisher, "news", {"n": n}) for n in range(3)]
        assert sent == [1, 2, 3]
        page.wait("messages('news').length === 3")
        # The node's heartbeats are echoed (else it would end the connection).
        page.wait("sentOf('heartbeat').length >= 2")
        wait_until(lambda: first.metric("wslifecycle_app_heartbeat_echoes_total") >= 2, 5, "echoes")
        assert page.kinds("reconnect") == []
        publisher.close()
        first.kill()
    # Retries while nothing listens on the port; three of them seen, the node comes back.
    page.wait("kinds('reconnect').length >= 3")
    with node(driver, None, "--port", str(port), *flags) as second:
        page.wait("state() === 'open' && kinds('drift').length === 1", 10)
        (drift,) = page.kinds("drift")
        assert drift["channel"] == "news"
        assert drift["reason"] in ("epoch", "history")
        assert drift["since"] == 3
        assert drift["epoch"] != epoch
        publisher = Client(second)
        again = [publish(publisher, "news", {"again": n}) for n in range(3)]
        page.wait("messages('news').length === 6")
        publisher.close()
        page.close()

    assert page.messages("news") == [
        (1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2}),
        (again[0], {"again": 0}), (again[1], {"again": 1}), (again[2], {"again": 2}),
    ]  # fmt: skip
    assert again == [drift["oldest"], drift["oldest"] + 1, drift["oldest"] + 2]
    reconnects = page.kinds("reconnect")
    check_backoff(reconnects)
    assert {r["code"] for r in reconnects} == {1006}
    # Once per connection; the one after the kill resumes from seq 3 of the old epoch.
    subscribes = resubscribes(page, "news")
    sockets = page.run("sockets")
    assert subscribes == [
        (1, {"type": "subscribe", "channel": "news"}),
        (sockets, {"type": "subscribe", "channel": "news", "since": 3, "epoch": epoch}),
    ]
    assert page.run("JSON.stringify(listened) === JSON.stringify(kinds('message'))")
    print(f"\n[{driver}] retries: delay drawn, start after it, attempt's length (s):")
    for retry in page.run(TIMELINE):
        print("   ", retry)
    assert time.monotonic() - started < 30


#: Each retry: the delay drawn, how late the attempt started after it, and
#: how long until the attempt ended (the next retry, or the open), in seconds.
TIMELINE = """(() => {
  const ms = (x) => Math.round(x) / 1000;
  const state = (f, name) => f.type === "statechange" && f.detail.state === name;
  const connecting = (f) => state(f, "connecting");
  const over = (f) => f.type === "reconnect" || state(f, "open");
  return events.flatMap((e, i) => {
    if (e.type !== "reconnect") return [];
    const start = events.slice(i).find(connecting);
    const end = start && events.slice(events.indexOf(start)).find(over);
    return [{
      delay: ms(e.detail.delay * 1000),
      late: start ? ms(start.at - e.at - e.detail.delay * 1000) : null,
      attempt: end ? ms(end.at - start.at) : null,
      ended: end ? (end.type === "reconnect" ? "failed" : "open") : null,
    }];
  });
})()"""


# ------------------------------------------------------ a fleet on Redis


def test_a_node_killed_in_a_fleet_is_resumed_from_redis_history_with_nothing_lost(
    browser: Browser, site: Site
) -> None:
    """Nodes A and B share a real redis-server. The page, on A, subscribes;
    A is SIGKILLed and messages are published through B meanwhile; A comes
    back on its port: the client resumes there and gets every message it
    missed, from the fleet's history, in order, with no duplicate and no
    drift."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (bash .ci/setup installs it)")
    started = time.monotonic()
    flags = ("--serve-client", "--allow-origin", site.origin)
    page = Page(browser, site)
    with (
        RedisServer() as redis,
        node("selector", redis.url, *flags) as a,
        node("trio", redis.url, *flags) as b,
    ):
        for each in (a, b):
            wait_until(each.healthy, 15, f"{each} connected to redis")
        port = a.port
        page.start(f"http://127.0.0.1:{port}/client.js", f"ws://127.0.0.1:{port}/", **FAST)
        page.run("(client.subscribe('news'), true)")
        page.wait("frames('subscribed').length === 1")
        epoch = page.kinds("frame")[0]["epoch"]
        publisher = Client(b)
        before = [publish(publisher, "news", f"before {n}") for n in range(2)]
        page.wait("messages('news').length === 2")

        a.kill()
        page.wait("kinds('reconnect').length >= 1")
        away = [publish(publisher, "news", f"away {n}") for n in range(5)]
        with node("selector", redis.url, "--port", str(port), *flags) as back:
            wait_until(back.healthy, 15, f"{back} connected to redis")
            page.wait("messages('news').length >= 7 && state() === 'open'", 10)
            after = [publish(publisher, "news", f"after {n}") for n in range(2)]
            page.wait("messages('news').length >= 9")
            publisher.close()
            page.close()

    assert before + away + after == list(range(1, 10))
    data = [f"before {n}" for n in range(2)] + [f"away {n}" for n in range(5)]
    data += [f"after {n}" for n in range(2)]
    assert page.messages("news") == list(zip(range(1, 10), data, strict=True))
    assert page.kinds("drift") == []
    check_backoff(page.kinds("reconnect"))
    sockets = page.run("sockets")
    assert resubscribes(page, "news") == [
        (1, {"type": "subscribe", "channel": "news"}),
        (sockets, {"type": "subscribe", "channel": "news", "since": 2, "epoch": epoch}),
    ]
    assert time.monotonic() - started < 30


# ------------------------------------------------------ close codes


@contextlib.contextmanager
def scripted(
    script: Callable[[ServerConnection], None],
) -> Iterator[tuple[str, list[ServerConnection]]]:
    """A ``websockets`` server on a free loopback port that runs ``script``
    for each connection: its ws:// URL and the connections it took."""
    taken: list[ServerConnection] = []
    failures: queue.SimpleQueue[BaseException] = queue.SimpleQueue()

    def handler(connection: ServerConnection) -> None:
        taken.append(connection)
        try:
            script(connection)
        except BaseException as error:  # shown by the test, not lost in a thread
            failures.put(error)
            raise

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", taken
        finally:
            server.shutdown()
            thread.join(10)
    if not failures.empty():
        raise failures.get()


def closes_with(code: int) -> Callable[[ServerConnection], None]:
    def script(connection: ServerConnection) -> None:
        connection.close(code, "scripted")

    return script


@pytest.mark.parametrize("code", [1008, 4001])
def test_a_close_code_that_stops_stops_the_client(code: int, browser: Browser, site: Site) -> None:
    """A server that accepts and closes with 1008 (policy violation) or an
    application code (4001): the client stops with that code and does not
    reconnect."""
    page = Page(browser, site)
    with scripted(closes_with(code)) as (url, taken):
        page.start(site.origin + "/client.js", url, **FAST)
        page.wait("kinds('stop').length === 1")
        (stop,) = page.kinds("stop")
        assert stop == {"code": code, "reason": "scripted", "gaveUp": False}
        # The client decides in the close event: a stop is never followed by a retry.
        assert page.kinds("reconnect") == []
        assert page.run("state()") == "stopped"
        assert len(taken) == 1


def test_a_close_code_that_reconnects_reconnects(browser: Browser, site: Site) -> None:
    """1012 (service restart) is retried, with backoff, each time; until the
    client is closed."""
    page = Page(browser, site)
    with scripted(closes_with(1012)) as (url, taken):
        page.start(site.origin + "/client.js", url, **FAST)
        page.wait("kinds('reconnect').length >= 3")
        page.close()
        reconnects = page.kinds("reconnect")
        check_backoff(reconnects)
        assert {r["code"] for r in reconnects} == {1012}
        assert len(taken) >= 3
        assert page.kinds("stop") == [{"code": 1000, "reason": "", "gaveUp": False}]


def test_a_connection_that_stayed_open_resets_the_backoff(browser: Browser, site: Site) -> None:
    """resetAfter: a connection that stayed open that long starts the count
    again (the retry after it is attempt 1, drawn within baseDelay); one
    closed at once does not (the next is attempt 2, within 2 * baseDelay)."""
    held = 0.3  # the scenario: how long the server keeps every other connection

    def script(ws: ServerConnection) -> None:
        if len(taken) % 2 == 1:
            time.sleep(held)  # a connection that lives past resetAfter, then ends
        ws.close(1012, "restart")

    page = Page(browser, site)
    with scripted(script) as (url, taken):
        policy = {"baseDelay": 0.05, "maxDelay": 1, "resetAfter": held / 2}
        page.start(site.origin + "/client.js", url, policy=policy)
        page.wait("kinds('reconnect').length >= 6", 10)
        page.close()
    reconnects = page.kinds("reconnect")[:6]
    assert [r["attempt"] for r in reconnects] == [1, 2, 1, 2, 1, 2]
    for retry in reconnects:
        assert 0 <= retry["delay"] <= 0.05 * 2 ** (retry["attempt"] - 1), retry


def test_the_default_policy_and_an_override(browser: Browser, site: Site) -> None:
    """The module's own policy: the stop and reconnect codes, and the
    full-jitter bound min(maxDelay, baseDelay * 2^n) (a random() of 1 draws
    it). A policy's ``reconnects`` replaces the choice: with it, 4001 is
    retried."""
    page = Page(browser, site)
    module = json.dumps(site.origin + "/client.js")
    codes = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
             1014, 1015, 2999, 3000, 4000, 4999, 5000]  # fmt: skip
    table = page.run(f"import({module}).then((m) => {json.dumps(codes)}.map(m.reconnects))")
    stops = {1000, 1002, 1003, 1007, 1008, 1009, 1010, 3000, 4000, 4999}
    assert dict(zip(codes, table, strict=True)) == {code: code not in stops for code in codes}
    bounds = page.run(
        f"import({module}).then((m) => [0, 1, 2, 3, 4, 5, 6, 7, 8]"
        ".map((n) => m.retryDelay(n, m.DEFAULT_POLICY, () => 1)))"
    )
    assert bounds == [min(30, 0.5 * 2**n) for n in range(9)]

    with scripted(closes_with(4001)) as (url, taken):
        override = "(code) => code === 4001"
        page.run(
            f"start({module}, {json.dumps(url)}, {{policy: {{baseDelay: {BASE},"
            f" maxDelay: {CAP}, reconnects: {override}}}}})"
        )
        page.wait("kinds('reconnect').length >= 2")
        page.close()
        assert {r["code"] for r in page.kinds("reconnect")} == {4001}
        assert len(taken) >= 2


def test_a_refused_handshake_is_retried_until_max_attempts(browser: Browser, site: Site) -> None:
    """The node refuses the page's Origin (HTTP 403): the browser shows the
    client a 1006 before open, which it retries like a drop; after
    maxAttempts failed retries it gives up."""
    page = Page(browser, site)
    with node("asyncio", None) as refusing:  # --allow-no-origin only: the page's origin is foreign
        url = f"ws://127.0.0.1:{refusing.port}/"
        page.start(site.origin + "/client.js", url, policy={**FAST["policy"], "maxAttempts": 2})
        page.wait("kinds('stop').length === 1")
        assert page.kinds("stop") == [{"code": 1006, "reason": "", "gaveUp": True}]
        check_backoff(page.kinds("reconnect"))
        assert len(page.kinds("reconnect")) == 2
        assert page.run("sockets") == 3
        assert refusing.metric('wslifecycle_handshakes_rejected_total{status="403"}') == 3


# ------------------------------------------------------ dead-server detection


def test_a_stopped_server_is_declared_dead_and_the_client_comes_back(
    browser: Browser, site: Site
) -> None:
    """The client probes a silent node every heartbeatInterval (0.5 s; the
    relay echoes the probes, which the application never sees). The node is
    SIGSTOPped: its socket stays open but nothing comes, and the client
    declares it dead within interval * (maxMissed + 1) and retries. Messages
    published while it was stopped (queued in its socket) come once it is
    continued and the client has resumed, with no gap or duplicate."""
    interval, max_missed = 0.5, 2
    page = Page(browser, site)
    with node("asyncio", None, "--serve-client", "--allow-origin", site.origin) as stopped:
        port = stopped.port
        page.start(
            f"http://127.0.0.1:{port}/client.js",
            f"ws://127.0.0.1:{port}/",
            heartbeatInterval=interval,
            maxMissed=max_missed,
            openTimeout=1,
            **FAST,
        )
        page.run("(client.subscribe('news'), true)")
        publisher = Client(stopped)
        publish(publisher, "news", "first")
        page.wait("messages('news').length === 1")
        page.wait("sentOf('ping').length >= 2")  # probes of a quiet, live server...
        assert frames_of(page, "ping") == []  # ... whose echoes are not passed on
        assert page.kinds("reconnect") == []

        stopped.process.send_signal(signal.SIGSTOP)
        since = time.time()
        try:
            bound = interval * (max_missed + 1)
            page.wait("kinds('reconnect').length >= 1", bound + 2)
            dead = page.kinds("reconnect")[0]
            took = page.run("times('reconnect')[0]") / 1000 - since
            assert dead["code"] == 1006
            assert dead["reason"] == "no answer from the server"
            # Something was heard within the interval before the stop: dead
            # no sooner than 2 intervals after it, no later than 3 (+ slack).
            assert interval * max_missed - 0.1 <= took <= bound + 0.5, took
            for n in range(2):  # fire and forget: answered once it runs again
                publisher.send({"type": "publish", "channel": "news", "data": f"stopped {n}"})
            page.wait("kinds('reconnect').length >= 2", 5)  # an attempt timed out
        finally:
            stopped.process.send_signal(signal.SIGCONT)
        page.wait("state() === 'open' && messages('news').length === 3", 10)
        publish(publisher, "news", "last")
        page.wait("messages('news').length === 4")
        publisher.close()
        page.close()

    assert page.messages("news") == [(1, "first"), (2, "stopped 0"), (3, "stopped 1"), (4, "last")]
    assert page.kinds("drift") == []
    assert frames_of(page, "ping") == []
    sockets = page.run("sockets")
    subscribes = resubscribes(page, "news")
    assert subscribes[0] == (1, {"type": "subscribe", "channel": "news"})
    assert subscribes[-1][0] == sockets
    assert subscribes[-1][1]["since"] == 1
    print(f"\ndead declared {took:.3f} s after SIGSTOP (bound {bound} s)")


def frames_of(page: Page, kind: str) -> list[Any]:
    return [f for f in page.kinds("frame") if isinstance(f, dict) and f.get("type") == kind]


# ------------------------------------------------------ the resume rules, scripted


def test_resume_rules_against_a_scripted_relay(browser: Browser, site: Site) -> None:
    """A scripted relay checks what the client sends and feeds it duplicates,
    stale messages, a new epoch, a heartbeat: the client echoes the
    heartbeat unchanged, drops what it has seen, takes a drift's numbering,
    and after a drop subscribes each channel once, from where it was, with a
    channel subscribed while it was away among them."""
    inbox: queue.SimpleQueue[tuple[int, dict[str, Any] | str]] = queue.SimpleQueue()

    def expect(connection: int) -> dict[str, Any] | str:
        got_connection, frame = inbox.get(timeout=5)
        assert got_connection == connection, (got_connection, frame)
        return frame

    def script(ws: ServerConnection) -> None:
        number = len(taken)
        for raw in ws:  # everything the client sends, in order, for the test to check
            assert isinstance(raw, str), raw
            inbox.put((number, json.loads(raw) if raw.startswith('{"type":"sub') else raw))
            if number == 1 and raw.startswith('{"type":"subscribe"'):
                for frame in (
                    {"type": "subscribed", "channel": "news", "seq": 5, "epoch": "E1"},
                    {"type": "message", "channel": "news", "seq": 6, "data": "six"},
                    {"type": "message", "channel": "news", "seq": 6, "data": "six again"},
                    {"type": "message", "channel": "news", "seq": 4, "data": "four, late"},
                    {"type": "message", "channel": "news", "seq": 7, "data": "seven"},
                ):
                    ws.send(json.dumps(frame))
                ws.send('{"type":"heartbeat","id":"h-1"}')
            elif number == 1 and raw == '{"type":"heartbeat","id":"h-1"}':
                ws.close(1012, "restart")
                return
            elif number == 2 and raw.startswith('{"type":"subscribe","channel":"sports"'):
                for frame in (
                    {"type": "subscribed", "channel": "news", "seq": 9, "epoch": "E1"},
                    {"type": "message", "channel": "news", "seq": 7, "data": "seven again"},
                    {"type": "message", "channel": "news", "seq": 8, "data": "eight"},
                    {"type": "message", "channel": "news", "seq": 9, "data": "nine"},
                    {"type": "subscribed", "channel": "sports", "seq": 0, "epoch": "S1"},
                    {"type": "drift", "channel": "news", "since": 9, "oldest": 1,
                     "epoch": "E2", "reason": "epoch"},
                    {"type": "message", "channel": "news", "seq": 1, "data": "one of E2"},
                    {"type": "message", "channel": "news", "seq": 1, "data": "one again"},
                    {"type": "message", "channel": "news", "seq": 2, "data": "two of E2"},
                    {"type": "message", "channel": "sports", "seq": 1, "data": "goal"},
                ):  # fmt: skip
                    ws.send(json.dumps(frame))
                ws.close(1000, "done")
                return

    page = Page(browser, site)
    with scripted(script) as (url, taken):
        page.start(site.origin + "/client.js", url, heartbeatInterval=0, **FAST)
        # One statement: the first connection may be over before the next one.
        page.run("(onNextReconnect = () => client.subscribe('sports'), client.subscribe('news'))")
        page.wait("kinds('stop').length === 1")
        assert expect(1) == {"type": "subscribe", "channel": "news"}
        assert expect(1) == '{"type":"heartbeat","id":"h-1"}'  # echoed unchanged
        assert expect(2) == {"type": "subscribe", "channel": "news", "since": 7, "epoch": "E1"}
        assert expect(2) == {"type": "subscribe", "channel": "sports"}
        assert inbox.empty()

    assert page.messages("news") == [
        (6, "six"), (7, "seven"), (8, "eight"), (9, "nine"), (1, "one of E2"), (2, "two of E2"),
    ]  # fmt: skip
    assert page.messages("sports") == [(1, "goal")]
    assert [d["epoch"] for d in page.kinds("drift")] == ["E2"]
    assert page.kinds("stop") == [{"code": 1000, "reason": "done", "gaveUp": False}]
    assert [r["code"] for r in page.kinds("reconnect")] == [1012]
    assert frames_of(page, "heartbeat") == []
