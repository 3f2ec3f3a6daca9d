"""TLS on every driver (``serve(..., ssl=context)``), with certificates made
on the fly by trustme: a real wss:// client (the `websockets` client) echoes;
the handshake timeout covers the TLS handshake (a client that connects and
stalls is cut, with an RST, and counted as a handshake timeout); a plain
client on the TLS port is closed cleanly, with one log line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator

import pytest
import trustme
import websockets
from websockets.asyncio.client import unix_connect
from websockets.exceptions import InvalidMessage

from tests.drivers.harness import SERVERS, LogWatch, ServerThread
from wslifecycle import Config, TerminationCause

DRIVERS = sorted(SERVERS)


def config(**changes: object) -> Config:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 30.0}
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: a unix socket's path is at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="wsl-") as path:
        yield path


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client (its ClientHello)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


async def echo_some(ws: websockets.ClientConnection) -> None:
    for i in range(20):
        await ws.send(f"message {i}")
        assert await ws.recv() == f"message {i}"
    big = os.urandom(300_000)  # many TLS records each way
    await ws.send(big)
    assert await ws.recv() == big


def closed_by(server: ServerThread, cause: TerminationCause) -> int:
    return server.metrics().closed_by_cause.get(cause, 0)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_wss_client_echoes_and_closes_cleanly(
    driver: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """The websockets client, trusting the test CA, talks wss://; its close
    is an ordinary peer close (no TLS error on either side)."""
    with (
        LogWatch() as logs,
        SERVERS[driver](config(), mode="echo", ssl=server_context) as server,
    ):

        async def client() -> None:
            url = f"wss://127.0.0.1:{server.port}/"
            async with websockets.connect(url, ssl=client_context) as ws:
                await echo_some(ws)

        asyncio.run(client())
        logs.wait_for("to=closed cause=peer_close", 5)
        assert not logs.matching("tls failed")


@pytest.mark.parametrize("driver", DRIVERS)
def test_wss_over_a_unix_socket(
    driver: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext, short_dir: str
) -> None:
    """TLS and a unix socket together: the listener kind does not matter."""
    path = os.path.join(short_dir, "wss.sock")
    with SERVERS[driver](config(), mode="echo", ssl=server_context, unix_path=path):

        async def client() -> None:
            async with unix_connect(path, "wss://localhost/", ssl=client_context) as ws:
                await echo_some(ws)

        asyncio.run(client())


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("sends", ["nothing", "half a ClientHello"])
def test_a_stalled_tls_handshake_is_cut_at_the_handshake_timeout(
    driver: str, sends: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """A client that connects and sends nothing, or starts the TLS handshake
    and stalls, is reset at the handshake timeout (not before it, and well
    within a second after), logged and counted as a handshake timeout."""
    timeout = 0.5
    with (
        LogWatch() as logs,
        SERVERS[driver](
            config(handshake_timeout=timeout), mode="echo", ssl=server_context
        ) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        connected = time.monotonic()
        if sends != "nothing":
            hello = client_hello(client_context)
            sock.sendall(hello[: len(hello) // 2])
        sock.settimeout(10)
        with pytest.raises(ConnectionResetError):  # Terminate: an RST
            sock.recv(1024)
        waited = time.monotonic() - connected
        logs.wait_for("terminated connection=.* cause=handshake_timeout", 5)
        assert timeout - 0.05 <= waited < timeout + 2.5
        assert closed_by(server, TerminationCause.HANDSHAKE_TIMEOUT) == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_plain_client_on_the_tls_port_is_closed_cleanly(
    driver: str, server_context: ssl.SSLContext
) -> None:
    """A plain-HTTP upgrade on the TLS port gets no HTTP answer: the server
    logs one ``tls failed`` line and closes (a FIN, not a reset); the
    websockets client, speaking ws:// to it, fails its opening handshake."""
    request = (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with (
        LogWatch() as logs,
        SERVERS[driver](config(), mode="echo", ssl=server_context) as server,
    ):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request)
            sock.settimeout(10)
            received = b""
            while chunk := sock.recv(4096):  # until EOF; a reset would raise
                received += chunk
        assert not received.startswith(b"HTTP/")
        logs.wait_for(r"tls failed connection=\S+ error=\S+", 5)
        logs.wait_for("to=closed cause=transport_lost", 5)

        async def ws_client() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5):
                pass

        with pytest.raises(InvalidMessage):
            asyncio.run(ws_client())
        assert len(logs.matching("tls failed")) == 2
        assert closed_by(server, TerminationCause.TRANSPORT_LOST) == 2
        assert server.metrics().handshakes_accepted == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_close_notify_mid_connection_ends_it_like_an_eof(
    driver: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """A client that upgrades, then ends TLS (close_notify) without a close
    frame: the connection ends as a lost transport, and the server goes on
    serving."""
    request = (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with (
        LogWatch() as logs,
        SERVERS[driver](config(), mode="echo", ssl=server_context) as server,
    ):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            assert head.startswith(b"HTTP/1.1 101 ")
            mark = logs.mark()
            # close_notify, then wait for the server's (it may close TCP first)
            with contextlib.suppress(ssl.SSLError, OSError):
                tls.unwrap()
            logs.wait_for("to=closed cause=transport_lost", 5, since=mark)

        async def client() -> None:
            url = f"wss://127.0.0.1:{server.port}/"
            async with websockets.connect(url, ssl=client_context) as ws:
                await echo_some(ws)

        asyncio.run(client())
        assert not logs.matching("tls failed")
