"""The client drivers (asyncio, Trio, selector) against real servers, each a
process of its own: ``wslifecycle serve`` (ws:// and wss://), the
`websockets` server and the Node.js `ws` server; and the endings after which
a client must not come back (HTTP 403, a 1008, a certificate that does not
verify) or must wait (503 with Retry-After)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trio
import trustme

from tests.client.runners import DRIVERS, Runner, runner
from tests.client.servers import (
    ServerProcess,
    node_refusing_server,
    node_server,
    refusing_server,
    websockets_server,
    wsl_serve,
)
from wslifecycle.client import ReconnectPolicy, client_config
from wslifecycle.drivers.asyncio import ClientStopped
from wslifecycle.drivers.asyncio import connect as asyncio_connect
from wslifecycle.drivers.trio import connect as trio_connect

FAST = ReconnectPolicy(base_delay=0.05, max_delay=0.4)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ servers

SERVERS: dict[str, Callable[[], ServerProcess]] = {
    "wslifecycle": lambda: wsl_serve("--allow-no-origin"),
    "websockets": websockets_server,
    "node-ws": node_server,
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def echo_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with SERVERS[request.param]() as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA) -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="wsl-client-tls-") as folder:
        pem = os.path.join(folder, "server.pem")
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
        with wsl_serve("--allow-no-origin", "--certfile", pem, name="wsl-tls") as server:
            yield server


@pytest.fixture(scope="module")
def strict_server() -> Iterator[ServerProcess]:
    """No --allow-no-origin: a client without an Origin gets 403."""
    with wsl_serve("--allow-origin", "https://app.example") as server:
        yield server


# -------------------------------------------------------------------- echo


def echo_both_ways(client: Runner) -> None:
    """Text and binary, small and large, echoed in order; the relay's own
    frames (wslifecycle's 'subscribed' etc.) skipped where a server adds them."""
    sent: list[str | bytes] = ["hello", "", "é" * 1000, b"\x00\x01\xff", os.urandom(200_000)]
    for message in sent:
        client.send(message)
    for message in sent:
        assert client.recv(10) == message


@pytest.mark.parametrize("driver", DRIVERS)
def test_echo_on_each_server(driver: str, echo_server: ServerProcess) -> None:
    with runner(driver, echo_server.url(), policy=FAST) as client:
        assert client.connected
        echo_both_ways(client)
        # A relay request the three servers all answer (subscribe, publish).
        client.subscribe("room")
        assert json.loads(client.recv())["type"] == "subscribed"
        client.publish("room", {"n": 1})
        replies = [json.loads(client.recv()) for _ in range(2)]
        message = next(r for r in replies if r["type"] == "message")
        assert (message["channel"], message["data"]) == ("room", {"n": 1})
        assert client.call(lambda c: c.connections) == 1
    assert client.stopped is not None
    assert client.stopped.outcome.local
    assert client.record.retries == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_wss_with_the_given_context(driver: str, tls_server: ServerProcess, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with runner(driver, tls_server.url(scheme="wss"), ssl=context) as client:
        echo_both_ways(client)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_certificate_that_does_not_verify_stops_with_1015(
    driver: str, tls_server: ServerProcess
) -> None:
    # The default context trusts the system's CAs, not the test's.
    client = runner(driver, tls_server.url(scheme="wss"), policy=FAST)
    with pytest.raises(ClientStopped) as raised:
        client.start()
    assert raised.value.outcome.code == 1015
    assert "certificate" in raised.value.outcome.reason
    assert client.record.retries == []
    assert client.record.connects == []


# ----------------------------------------------------------- no coming back


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_403_stops_before_any_connection(driver: str, strict_server: ServerProcess) -> None:
    client = runner(driver, strict_server.url(), policy=FAST)
    with pytest.raises(ClientStopped) as raised:
        client.start()
    assert raised.value.outcome.status == 403
    assert client.record.retries == []
    # With the Origin the server allows, the same client gets in.
    with runner(driver, strict_server.url(), origin="https://app.example") as allowed:
        assert allowed.connected


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", ["node-ws", "websockets"])
def test_a_1008_after_the_upgrade_is_not_retried(kind: str, driver: str) -> None:
    """(wslifecycle serve refuses by policy at the upgrade, 403: above.)"""
    start = node_refusing_server if kind == "node-ws" else lambda: refusing_server("policy")
    with start() as server:
        client = runner(driver, server.url(), policy=FAST).start()
        try:
            assert client.wait_ended() == []
            assert client.stopped is not None
            assert client.stopped.outcome.code == 1008
            assert client.stopped.outcome.reason == "not welcome"
        finally:
            client.close()
        assert client.record.retries == []
        assert len(server.attempts()) == 1  # one upgrade request, never a second


@pytest.mark.parametrize("driver", DRIVERS)
def test_503_with_retry_after_is_honoured(driver: str) -> None:
    with refusing_server("busy", "--retry-after", "1") as server:
        started = time.monotonic()
        with runner(driver, server.url(), policy=FAST) as client:
            connected = time.monotonic()
            echo_both_ways(client)
        (_, retry), *more = client.record.retries
        assert more == []
        assert retry.outcome.status == 503
        assert retry.outcome.retry_after == 1.0
        assert 1.0 <= retry.delay <= 1.0 + FAST.window(0)
        first, second = server.attempts()
        assert second - first >= 1.0  # measured on the server's clock
        assert connected - started >= 1.0


# ---------------------------------------------------------------- leaks


@pytest.mark.parametrize("driver", DRIVERS)
def test_close_leaves_no_thread_or_descriptor(driver: str, echo_server: ServerProcess) -> None:
    threads, fds = threading.active_count(), open_fds()
    for _ in range(3):
        with runner(driver, echo_server.url(), config=client_config(close_timeout=2.0)) as client:
            client.send("ping")
            assert client.recv() == "ping"
    assert threading.active_count() == threads
    assert open_fds() == fds


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("driver", DRIVERS)
def test_refused_dials_stop_after_max_attempts(driver: str) -> None:
    policy = ReconnectPolicy(base_delay=0.01, max_delay=0.02, max_attempts=3)
    client = runner(driver, f"ws://127.0.0.1:{free_port()}/", policy=policy)
    with pytest.raises(ClientStopped) as raised:
        client.start()
    outcome = raised.value.outcome
    assert outcome.code == 1006
    assert "refused" in outcome.reason.lower()
    assert [retry.attempt for _, retry in client.record.retries] == [0, 1, 2]
    assert "gave up after 3 retries" in raised.value.stop.reason


def test_an_outer_timeout_while_retrying_leaves_nothing_behind() -> None:
    """asyncio: connect() under asyncio.timeout with no server: the timeout
    wins, and the client's task is gone with it."""

    async def main() -> int:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await asyncio_connect(f"ws://127.0.0.1:{free_port()}/", policy=FAST)
        return len(asyncio.all_tasks()) - 1  # all but this one

    assert asyncio.run(main()) == 0


def test_a_trio_cancel_while_retrying_leaves_nothing_behind() -> None:
    async def main() -> None:
        with trio.move_on_after(0.3) as scope:
            async with trio_connect(f"ws://127.0.0.1:{free_port()}/", policy=FAST):
                pytest.fail("connected to nothing")
        assert scope.cancelled_caught

    trio.run(main)


def test_awaiting_connect_gives_the_connected_client(echo_server: ServerProcess) -> None:
    async def main() -> None:
        client = await asyncio_connect(echo_server.url())
        try:
            await client.send("awaited")
            assert await client.recv() == "awaited"
        finally:
            await client.close()
        assert client.stopped is not None
        with pytest.raises(ClientStopped):
            await client.recv()

    asyncio.run(main())
