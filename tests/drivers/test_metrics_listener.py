"""A separate listener for /healthz and /metrics (``serve(...,
metrics_port=...)``) on every driver: those two paths are answered there,
every other path is 404, no WebSocket upgrade is accepted, and nothing done
on it counts as a WebSocket connection."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile

import pytest
import trustme
import websockets
from websockets.asyncio.client import unix_connect
from websockets.exceptions import InvalidStatus

from tests.drivers.harness import SERVERS, LogWatch, ServerThread
from wslifecycle import Config, MetricsSnapshot, TerminationCause

DRIVERS = sorted(SERVERS)


def config(**changes: object) -> Config:
    values: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 30.0}
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """A plain HTTP request on a fresh connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def nothing_counted(snapshot: MetricsSnapshot) -> None:
    assert sum(snapshot.connections.values()) == 0
    assert dict(snapshot.closed_by_cause) == {}
    assert dict(snapshot.handshakes_rejected) == {}
    assert snapshot.handshakes_accepted == 0


def metrics_port(server: ServerThread) -> int:
    assert server.metrics_port is not None
    return server.metrics_port


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_metrics_listener_serves_health_and_metrics_only(driver: str) -> None:
    """/healthz and /metrics are answered (Prometheus text); any other path
    is 404; a WebSocket client is refused with 404; none of it is counted."""
    with SERVERS[driver](config(), mode="echo", metrics_port=0) as server:
        port = metrics_port(server)
        assert port != server.port
        assert get(port, "/healthz") == (200, b"ok\n")
        status, body = get(port, "/metrics")
        assert status == 200
        assert b"wslifecycle_handshakes_accepted_total 0.0" in body
        assert get(port, "/")[0] == 404
        assert get(port, "/chat?room=1")[0] == 404
        assert get(port, "/metrics", method="POST")[0] == 405

        async def upgrade() -> int:
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/chat", open_timeout=5):
                    return 101
            except InvalidStatus as refused:
                return refused.response.status_code

        assert asyncio.run(upgrade()) == 404
        nothing_counted(server.metrics())


@pytest.mark.parametrize("driver", DRIVERS)
def test_websocket_connections_count_and_scrapes_do_not(driver: str) -> None:
    """With one WebSocket connection open on the main port, a scrape of the
    metrics port shows exactly it (the scrape itself is not a connection)."""
    with SERVERS[driver](config(), mode="echo", metrics_port=0) as server:
        port = metrics_port(server)

        async def scrape_while_connected() -> bytes:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                return await asyncio.to_thread(lambda: get(port, "/metrics")[1])

        body = asyncio.run(scrape_while_connected())
        assert b'wslifecycle_connections{state="active"} 1.0' in body
        assert b'wslifecycle_connections{state="open"} 0.0' in body
        assert b"wslifecycle_handshakes_accepted_total 1.0" in body


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_silent_metrics_client_is_cut_at_the_handshake_timeout_uncounted(driver: str) -> None:
    """The metrics listener has the handshake deadline too; the cut is logged
    but counted nowhere."""
    with (
        LogWatch() as logs,
        SERVERS[driver](config(handshake_timeout=0.3), metrics_port=0) as server,
        socket.create_connection(("127.0.0.1", metrics_port(server))) as sock,
    ):
        sock.settimeout(10)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        logs.wait_for("cause=handshake_timeout", 5)
        snapshot = server.metrics()
        assert snapshot.closed_by_cause.get(TerminationCause.HANDSHAKE_TIMEOUT, 0) == 0
        nothing_counted(snapshot)


@pytest.mark.parametrize("driver", DRIVERS)
def test_metrics_beside_a_unix_socket_and_tls(driver: str) -> None:
    """The WebSocket listener on a unix socket over TLS, the metrics listener
    on TCP in plain HTTP (it is for probes and scrapers on the inside)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with tempfile.TemporaryDirectory(prefix="wsl-") as directory:
        path = os.path.join(directory, "ws.sock")
        with SERVERS[driver](
            config(), mode="echo", unix_path=path, ssl=server_context, metrics_port=0
        ) as server:

            async def client() -> None:
                async with unix_connect(path, "wss://localhost/", ssl=client_context) as ws:
                    await ws.send("over tls")
                    assert await ws.recv() == "over tls"

            asyncio.run(client())
            assert get(metrics_port(server), "/healthz") == (200, b"ok\n")
            assert server.metrics().handshakes_accepted == 1
