"""The client drivers when the server goes away, each server a real process:

* SIGSTOPped: the heartbeat declares it dead within its bound, and the
  client comes back when the process is continued, or when another server
  takes the port;
* killed and started again on the same port: the retries' delays stay in
  their windows and, with ``--redis``, the subscription resumes: what was
  published (on a second node) while the client was away arrives after the
  reconnect, in order, once; on one node without Redis the history died
  with the process and the client is told so by a drift.

Every wait is bounded and waits on what happens; the measured figures are
printed (``pytest -s``) for docs/client.md ("Measured").
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websockets_connect

from tests.client.runners import DRIVERS, Runner, runner
from tests.client.servers import ServerProcess, node_server, websockets_server, wsl_serve
from tests.fleet.nodes import wait_until
from tests.fleet.redis_server import RedisServer, find_redis_server
from wslifecycle.client import ReconnectPolicy, Retry, client_config

INTERVAL, MISSED = 0.5, 2
CONFIG = client_config(
    heartbeat_interval=INTERVAL,
    max_missed_pongs=MISSED,
    handshake_timeout=1.0,  # an attempt stuck in a stopped server's backlog
    close_timeout=1.0,
)
POLICY = ReconnectPolicy(base_delay=0.05, max_delay=0.4)
#: The heartbeat's bound (heartbeat.py), plus what a loaded 2-core machine adds
#: between the client's decision and the test's clock reading it.
DETECTION_BOUND = (MISSED + 1) * INTERVAL + 2 * CONFIG.effective_timer_slack
MARGIN = 0.3
#: A reconnect is due within its backoff window; this much more for the dial
#: and the upgrade on a loaded machine.
RECONNECT_MARGIN = 1.0


def serve(*flags: str) -> ServerProcess:
    return wsl_serve(
        "--allow-no-origin", "--heartbeat-interval", "0.5", "--max-missed-pongs", "2", *flags
    )


#: The three servers, each pinging every 0.5 s: wslifecycle's missed-pong
#: rule, websockets' ping timeout (1 s), Node ws's README pattern.
SERVERS: dict[str, Callable[[], ServerProcess]] = {
    "wslifecycle": lambda: serve(),
    "websockets": lambda: websockets_server("--ping-interval", "0.5", "--ping-timeout", "1"),
    "node-ws": lambda: node_server("--interval-ms", "500"),
}


def echo(client: Runner, text: str) -> None:
    client.send(text)
    assert client.recv() == text


def frames(client: Runner, kind: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Read until ``count`` relay frames of ``kind`` came; those (others skipped)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        message = client.recv(max(0.0, deadline - time.monotonic()))
        assert isinstance(message, str)
        frame = json.loads(message)
        if frame["type"] == kind:
            found.append(frame)
    return found


def check_delays(retries: list[tuple[float, Retry]]) -> None:
    """Each retry waited a draw from [0, min(cap, base × 2ⁿ)], n counting
    the retries in a row."""
    for _, retry in retries:
        assert 0.0 <= retry.delay <= POLICY.window(retry.attempt), retry


def report(what: str, figures: dict[str, object]) -> None:
    print(f"\n{what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --------------------------------------------------------------- dead server


def stop_and_detect(server: ServerProcess, client: Runner) -> float:
    """SIGSTOP the server; seconds until the client declared it dead."""
    before = len(client.record.retries)
    stopped_at = time.monotonic()
    server.pause()
    when, retry = client.record.wait(
        lambda: client.record.retries[before] if len(client.record.retries) > before else None,
        DETECTION_BOUND + 5,
        "the client declares the stopped server dead",
    )
    assert retry.outcome.dead, retry
    took = when - stopped_at
    assert took <= DETECTION_BOUND + MARGIN, f"{took:.3f} s > {DETECTION_BOUND} s + {MARGIN}"
    return took


def reconnected(client: Runner, count: int, timeout: float) -> float:
    """Wait for connection ``count``; when it came."""
    return client.record.wait(
        lambda: client.record.connects[count - 1] if len(client.record.connects) >= count else None,
        timeout,
        f"connection {count}",
    )


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_a_stopped_server_is_declared_dead_and_the_client_comes_back(
    kind: str, driver: str
) -> None:
    with (
        SERVERS[kind]() as server,
        runner(driver, server.url(), config=CONFIG, policy=POLICY) as client,
    ):
        echo(client, "before")
        first = stop_and_detect(server, client)
        continued = time.monotonic()
        server.resume()
        # At worst an attempt was just sent to the stopped server's backlog
        # and is answered now; or the client is in a backoff.
        back = reconnected(client, 2, CONFIG.handshake_timeout + POLICY.max_delay + 2) - continued
        echo(client, "continued")
        second = stop_and_detect(server, client)
        server.restart()  # the stopped one killed, another on the same port
        listening = time.monotonic()
        replaced = reconnected(client, 3, POLICY.max_delay + 5) - listening
        echo(client, "replaced")
        check_delays(client.record.retries)
    report(
        f"{driver} against {kind}: dead server",
        {
            "detected_s": f"{first:.3f}/{second:.3f}",
            "bound_s": f"{DETECTION_BOUND:.3f}",
            "back_after_SIGCONT_s": f"{back:.3f}",
            "back_after_new_server_s": f"{max(replaced, 0):.3f}",
            "delays_s": [round(r.delay, 3) for _, r in client.record.retries],
        },
    )
    assert back <= CONFIG.handshake_timeout + POLICY.max_delay + RECONNECT_MARGIN
    assert replaced <= POLICY.max_delay + RECONNECT_MARGIN


# ------------------------------------------------------------------ restarts


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", ["node-ws", "websockets"])
def test_a_restarted_server_is_redialled_with_jittered_delays(kind: str, driver: str) -> None:
    """Killed and started again on its port: the client retries in growing
    windows while it is down, and is back once it listens (wslifecycle's
    own restarts, with resume, are below)."""
    with (
        SERVERS[kind]() as server,
        runner(driver, server.url(), config=CONFIG, policy=POLICY) as client,
    ):
        echo(client, "before")
        server.kill()
        client.record.wait(lambda: len(client.record.retries) >= 4, 10, "4 retries")
        server.restart()
        listening = time.monotonic()
        back = reconnected(client, 2, POLICY.max_delay + 5) - listening
        echo(client, "after")
        check_delays(client.record.retries)
        assert [retry.attempt for _, retry in client.record.retries[:4]] == [0, 1, 2, 3]
    report(
        f"{driver} against {kind}: restart",
        {
            "back_after_restart_s": f"{max(back, 0):.3f}",
            "delays_s": [round(r.delay, 3) for _, r in client.record.retries],
        },
    )
    assert back <= POLICY.max_delay + RECONNECT_MARGIN


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (bash .ci/setup installs it)")
    with RedisServer() as server:
        yield server


def healthy(server: ServerProcess) -> bool:
    """/healthz on the node's port says it is connected to Redis."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status == 200 and not response.read().startswith(b"degraded")
    except OSError:
        return False
    finally:
        connection.close()


def publish(publisher: ClientConnection, channel: str, data: object) -> int:
    """Publish through another node; the seq it was stored at."""
    publisher.send(json.dumps({"type": "publish", "channel": channel, "data": data}))
    while True:
        answer = json.loads(publisher.recv(timeout=10))
        if answer["type"] == "published":
            seq: int = answer["seq"]
            return seq


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_restart_resumes_with_redis(driver: str, redis: RedisServer) -> None:
    channel = f"feed-{driver}"
    with serve("--redis", redis.url) as node_a, serve("--redis", redis.url) as node_b:
        wait_until(lambda: healthy(node_a) and healthy(node_b), 15, "both nodes on redis")
        with (
            websockets_connect(node_b.url(), open_timeout=10) as publisher,
            runner(driver, node_a.url(), config=CONFIG, policy=POLICY) as client,
        ):
            client.subscribe(channel)
            frames(client, "subscribed", 1)
            for n in range(5):
                publish(publisher, channel, n)
            frames(client, "message", 5)
            node_a.kill()
            # Refused while it is down: retries in a row, their windows growing.
            client.record.wait(lambda: len(client.record.retries) >= 4, 10, "4 retries")
            for n in range(5, 25):
                publish(publisher, channel, n)
            node_a.restart()
            wait_until(lambda: healthy(node_a), 15, "node a back on redis")
            reconnected(client, 2, POLICY.max_delay + 5)
            for n in range(25, 30):
                publish(publisher, channel, n)
            resumed = frames(client, "message", 25)
            retries = client.record.retries
            assert client.record.drifts == []
        # In order, each once, nothing lost: the replay, then the live ones.
        assert [frame["data"] for frame in resumed] == list(range(5, 30))
        seqs = [frame["seq"] for frame in resumed]
        assert seqs == list(range(seqs[0], seqs[0] + 25))
        assert [retry.attempt for _, retry in retries] == list(range(len(retries)))
        check_delays(retries)
        report(
            f"{driver}: restart with redis",
            {
                "retries": len(retries),
                "delays_s": [round(r.delay, 3) for _, r in retries],
                "windows_s": [POLICY.window(r.attempt) for _, r in retries],
            },
        )


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_restart_without_redis_is_a_drift(driver: str) -> None:
    with serve() as server, runner(driver, server.url(), config=CONFIG, policy=POLICY) as client:
        client.subscribe("feed")
        (subscribed,) = frames(client, "subscribed", 1)
        for n in range(3):
            client.publish("feed", n)
        assert [frame["data"] for frame in frames(client, "message", 3)] == [0, 1, 2]
        server.restart()  # the channel's history and sequence died with it
        reconnected(client, 2, POLICY.max_delay + 5)
        (drift,) = frames(client, "drift", 1)
        assert (drift["channel"], drift["since"], drift["reason"]) == ("feed", 3, "epoch")
        assert drift["epoch"] != subscribed["epoch"]
        _when, told = client.record.wait(lambda: client.record.drifts, 5, "on_drift")[0]
        assert told == drift
        # The new epoch counts from its own start: its messages are not
        # taken for duplicates of the old ones.
        client.publish("feed", "after")
        (message,) = frames(client, "message", 1)
        assert message["data"] == "after"
        assert message["seq"] >= drift["oldest"]
        check_delays(client.record.retries)
