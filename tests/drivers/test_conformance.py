"""One conformance suite for every driver, on real loopback sockets, with
independent peers: the `websockets` client (PyPI) and the Node.js `ws` client
(npm). Timing tests wait on events with bounded timeouts, never on a fixed
sleep; intervals are fractions of a second so the suite stays fast."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.drivers.harness import (
    SERVERS,
    FrozenProxy,
    LogWatch,
    ServerThread,
    node_client,
    open_fds,
    python_client,
)
from wslifecycle import Config, TerminationCause

INTERVAL = 0.3
MAX_MISSED = 2
BOUND = (MAX_MISSED + 1) * INTERVAL  # docs/theory.md, before the timer's slack

pytestmark = pytest.mark.parametrize("driver", sorted(SERVERS))


def config(**changes: object) -> Config:
    values: dict[str, object] = {
        "heartbeat_interval": INTERVAL,
        "max_missed_pongs": MAX_MISSED,
        "allow_no_origin": True,
        "close_timeout": 2.0,
        "drain_timeout": 3.0,
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    with LogWatch() as watch:
        yield watch


def url(server: ServerThread, path: str = "/chat") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def slack(server: ServerThread) -> float:
    """The scheduler's slack (docs/theory.md): twice the worst timer lateness,
    that is the timer-slack grid plus the worst loop lag seen (measured from
    the grid point), plus a little for the test thread to see the log line."""
    lateness = config().effective_timer_slack + server.metrics().loop_lag.maximum
    return 2 * lateness + 0.1


def _bound_text(server: ServerThread) -> str:
    lag = server.metrics().loop_lag.maximum
    slack = config().effective_timer_slack
    return f"(bound {BOUND:.2f} s + 2 × ({slack * 1e3:.0f} ms slack + {lag * 1e3:.1f} ms lag))"


# ----------------------------------------------------------- healthy peers


def test_independent_peers_relay_and_stay_alive_for_many_intervals(
    driver: str, logs: LogWatch
) -> None:
    """The websockets and ws clients subscribe, publish, receive each other's
    messages and answer pings for many intervals without being terminated."""
    with SERVERS[driver](config()) as server:
        node = node_client(url(server), "room", seconds=8 * INTERVAL)

        async def python_side() -> list[dict[str, object]]:
            received = []
            async with websockets.connect(url(server), ping_interval=None) as ws:
                await ws.send(json.dumps({"type": "subscribe", "channel": "room"}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                # The node client subscribes, then publishes: once its message
                # arrives here, it is subscribed, and ours will reach it.
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    received.append(message)
                    if message.get("data") == {"from": "node"}:
                        break
                await ws.send(json.dumps({"type": "publish", "channel": "room", "data": "py"}))
                deadline = time.monotonic() + 8 * INTERVAL
                while time.monotonic() < deadline:
                    try:
                        message = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
                    except TimeoutError:
                        break
                    received.append(json.loads(message))
                await ws.send("still here")
                received.append({"echo": await ws.recv()})
            return received

        try:
            received = asyncio.run(python_side())
            node.wait_event("close", 10)
        finally:
            node.kill()
        py_messages = [m.get("data") for m in received if m.get("type") == "message"]
        assert "py" in py_messages
        assert {"echo": "still here"} in received
        node_data = [json.loads(e["data"]) for e in node.events if e["event"] == "message"]
        assert any(m.get("data") == "py" for m in node_data)
        assert any(m.get("data") == {"from": "node"} for m in node_data)
        assert node.count("ping") >= 5
        assert [e["code"] for e in node.events if e["event"] == "close"] == [1000]
        assert not logs.matching("terminated")
        snapshot = server.metrics()
        assert snapshot.pongs_received >= 5
        assert not snapshot.terminations


# ------------------------------------------------------------ half-open peers


def _healthy_clients(server: ServerThread) -> tuple[object, object]:
    node = node_client(url(server), "room", seconds=60)
    node.wait_event("open", 10)
    py = python_client(url(server), "room")
    py.wait_event("open", 10)
    return node, py


def test_a_peer_behind_a_frozen_proxy_is_terminated_within_the_bound(
    driver: str, logs: LogWatch
) -> None:
    """A half-open path (a proxy that stops both directions, sockets open) is
    terminated for heartbeat timeout within (max_missed+1) × interval + slack,
    and the healthy clients beside it are not."""
    with SERVERS[driver](config()) as server:
        node, py = _healthy_clients(server)
        proxy = FrozenProxy(server.port)
        try:
            frozen = python_client(f"ws://127.0.0.1:{proxy.port}/chat", "room")
            frozen.wait_event("open", 10)
            victim = server.connection_id_for_peer_port(proxy.upstream_local_ports[-1])
            assert victim is not None
            mark = logs.mark()
            t0 = time.monotonic()
            proxy.freeze()
            when, _ = logs.wait_for(
                rf"terminated connection={victim} cause=heartbeat_timeout", BOUND + 5, mark
            )
            detection = when - t0
            assert detection <= BOUND + slack(server), detection
            print(f"\n[{driver}] frozen proxy detected in {detection:.3f} s", _bound_text(server))
            _assert_healthy_survive(server, logs, [node, py], terminated=1)
        finally:
            for peer in (node, py, frozen):
                peer.kill()  # type: ignore[attr-defined]
            proxy.close()


def test_a_sigstopped_client_is_terminated_within_the_bound(driver: str, logs: LogWatch) -> None:
    """A client process paused with SIGSTOP (its kernel still ACKs TCP, nothing
    answers a ping) is terminated within the bound; healthy peers are not."""
    with SERVERS[driver](config()) as server:
        node, py = _healthy_clients(server)
        paused = python_client(url(server), "room")
        try:
            opened = paused.wait_event("open", 10)
            victim = server.connection_id_for_peer_port(opened["port"])
            assert victim is not None
            mark = logs.mark()
            t0 = time.monotonic()
            paused.pause()
            when, _ = logs.wait_for(
                rf"terminated connection={victim} cause=heartbeat_timeout", BOUND + 5, mark
            )
            detection = when - t0
            assert detection <= BOUND + slack(server), detection
            print(f"\n[{driver}] SIGSTOP detected in {detection:.3f} s", _bound_text(server))
            _assert_healthy_survive(server, logs, [node, py], terminated=1)
        finally:
            for peer in (node, py, paused):
                peer.kill()  # type: ignore[attr-defined]


def _assert_healthy_survive(
    server: ServerThread, logs: LogWatch, peers: list[object], terminated: int
) -> None:
    """Watch three more intervals' worth of pings: the healthy stay."""
    pings_before = server.metrics().pongs_received
    deadline = time.monotonic() + 10
    while server.metrics().pongs_received < pings_before + 3 * len(peers):
        assert time.monotonic() < deadline, "healthy peers stopped answering pings"
        time.sleep(INTERVAL / 3)  # polling a counter, bounded by the deadline above
    assert len(logs.matching("terminated")) == terminated
    for peer in peers:
        assert peer.count("close") == 0  # type: ignore[attr-defined]


# ------------------------------------------------------------ refusals, caps


def test_a_disallowed_origin_gets_403_and_no_upgrade(driver: str, logs: LogWatch) -> None:
    """Both clients, with a foreign Origin, get HTTP 403."""
    cfg = config(allow_no_origin=False, allowed_origins=frozenset({"https://app.example.com"}))
    with SERVERS[driver](cfg) as server:

        async def python_side() -> int:
            try:
                async with websockets.connect(url(server), origin="https://evil.example"):  # type: ignore[arg-type]
                    return 101
            except InvalidStatus as refused:
                return refused.response.status_code

        assert asyncio.run(python_side()) == 403
        node = node_client(url(server), "room", 1, origin="https://evil.example")
        try:
            assert node.wait_event("unexpected-response", 10)["status"] == 403
        finally:
            node.kill()
        snapshot = server.metrics()
        assert snapshot.handshakes_rejected == {403: 2}
        assert snapshot.handshakes_accepted == 0

        async def allowed() -> str:
            async with websockets.connect(url(server), origin="https://app.example.com") as ws:  # type: ignore[arg-type]
                await ws.send("hi")
                return str(await ws.recv())

        assert asyncio.run(allowed()) == "hi"


def test_an_oversized_message_gets_1009(driver: str, logs: LogWatch) -> None:
    """A message over max_message_size is closed with 1009."""
    with SERVERS[driver](config(max_message_size=1024)) as server:

        async def python_side() -> int | None:
            async with websockets.connect(url(server), max_size=None) as ws:
                await ws.send("x" * 2000)
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code

        assert asyncio.run(python_side()) == 1009
        logs.wait_for("cause=message_too_big", 5)


# ---------------------------------------------------------------- drain


def test_sigterm_drains_with_1001_and_exits_0(driver: str) -> None:
    """SIGTERM: clients get close 1001; while a straggler (a SIGSTOPped client
    that cannot answer) holds the drain open, a new handshake gets 503; the
    straggler is terminated at the drain deadline and the process exits 0."""
    drain_timeout = 2.0
    process = subprocess.Popen(
        [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0", "--driver", driver,
         "--allow-no-origin", "--heartbeat-interval", "30", "--drain-timeout",
         str(drain_timeout), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peers = []
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.rsplit(":", 1)[1].split()[0])
        target = f"ws://127.0.0.1:{port}/chat"
        node = node_client(target, "room", seconds=60)
        py = python_client(target, "room")
        straggler = python_client(target, "room")
        peers = [node, py, straggler]
        for peer in peers:
            peer.wait_event("open", 10)
        straggler.pause()
        started = time.monotonic()
        process.terminate()  # SIGTERM
        assert node.wait_event("close", 10)["code"] == 1001
        assert py.wait_event("close", 10)["code"] == 1001

        async def late_handshake() -> int:
            try:
                async with websockets.connect(target, open_timeout=5):
                    return 101
            except InvalidStatus as refused:
                return refused.response.status_code

        assert asyncio.run(late_handshake()) == 503
        assert process.wait(15) == 0
        assert time.monotonic() - started < drain_timeout + 3
    finally:
        for peer in peers:
            peer.kill()
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_metrics_and_health_are_served_on_the_same_port(driver: str) -> None:
    """GET /metrics is Prometheus text with the core's counters; /healthz is ok."""
    with SERVERS[driver](config()) as server:

        async def one_echo() -> None:
            async with websockets.connect(url(server)) as ws:
                await ws.send("x")
                await ws.recv()

        asyncio.run(one_echo())
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := sock.recv(65536):
                body += chunk
        assert body.startswith(b"HTTP/1.1 200 ")
        assert b"wslifecycle_handshakes_accepted_total 1.0" in body
        assert b'wslifecycle_connections_closed_total{cause="peer_close"} 1.0' in body
        assert b"wslifecycle_rtt_seconds_bucket" in body
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).endswith(b"ok\n")


def _get(port: int, path: str) -> bytes:
    """One plain HTTP request; the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_probes_do_not_move_the_numbers_they_read(driver: str, logs: LogWatch) -> None:
    """/healthz and /metrics requests are not connections: between two
    scrapes, probes move no connection gauge, closed total or handshake
    counter (only wslifecycle_http_requests_total), and log nothing at info."""
    with SERVERS[driver](config()) as server:

        async def one_echo() -> None:
            async with websockets.connect(url(server)) as ws:
                await ws.send("x")
                await ws.recv()

        asyncio.run(one_echo())
        logs.wait_for("to=closed cause=peer_close", 5)
        mark = logs.mark()

        def watched(scrape: bytes) -> list[str]:
            assert scrape.startswith(b"HTTP/1.1 200 ")
            return [
                line
                for line in scrape.decode().splitlines()
                if line.startswith(
                    ("wslifecycle_connections", "wslifecycle_handshakes", "wslifecycle_termin")
                )
            ]

        before = watched(_get(server.port, "/metrics"))
        for _ in range(3):
            assert _get(server.port, "/healthz").endswith(b"ok\n")
        after = _get(server.port, "/metrics")
        assert watched(after) == before
        assert 'wslifecycle_connections{state="open"} 0.0' in before
        assert 'wslifecycle_connections_closed_total{cause="peer_close"} 1.0' in before
        assert b'wslifecycle_http_requests_total{path="/healthz"} 3.0' in after
        assert b'wslifecycle_http_requests_total{path="/metrics"} 2.0' in after
        assert server.metrics().closed_by_cause == {TerminationCause.PEER_CLOSE: 1}
    noisy = [r.getMessage() for r in logs.records[mark:] if r.levelno >= logging.INFO]
    assert not [line for line in noisy if "transition" in line], noisy


# ---------------------------------------------------------------- leaks


def _fault(port: int, kind: int) -> None:
    """One connection that ends badly, in one of five ways."""
    sock = socket.create_connection(("127.0.0.1", port))
    request = (
        b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    if kind == 0:  # EOF in the middle of the handshake
        sock.sendall(request[:40])
    else:
        sock.sendall(request)
        _read_head(sock)
        if kind == 1:  # an unmasked frame: 1002
            sock.sendall(b"\x81\x02hi")
        elif kind == 2:  # a frame header claiming far too much: 1009
            sock.sendall(b"\x82\xff" + struct.pack("!Q", 2**40) + b"mask")
        elif kind == 3:  # RST after the upgrade
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # kind 4: FIN without a close frame
    sock.close()


def _read_head(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "server closed before answering the upgrade"
        data += chunk


def test_descriptors_and_tasks_return_to_baseline_after_1000_cycles(
    driver: str, logs: LogWatch
) -> None:
    """1,000 connect/close cycles, half ending in faults (EOF mid-handshake,
    protocol errors, huge frames, RST, FIN without close): afterwards the
    server holds no connection, and open descriptors and tasks are back to
    their baseline."""
    with SERVERS[driver](config(heartbeat_interval=5.0)) as server:
        fds_before = open_fds()
        tasks_before = server.task_count() if hasattr(server, "task_count") else None
        threads_before = server.thread_count() if hasattr(server, "thread_count") else None

        async def clean_cycles(count: int) -> None:
            for i in range(count):
                async with websockets.connect(url(server), ping_interval=None) as ws:
                    await ws.send(f"hello {i}")
                    assert await ws.recv() == f"hello {i}"

        for batch in range(10):
            asyncio.run(clean_cycles(50))
            for i in range(50):
                _fault(server.port, (batch * 50 + i) % 5)
        deadline = time.monotonic() + 15
        while server.connection_count() or open_fds() > fds_before:
            assert time.monotonic() < deadline, (server.connection_count(), open_fds())
            time.sleep(0.05)  # polling counters, bounded by the deadline above
        assert open_fds() == fds_before
        if tasks_before is not None:
            assert server.task_count() == tasks_before  # type: ignore[attr-defined]
        if threads_before is not None:  # a driver with threads: none left behind
            assert server.thread_count() == threads_before  # type: ignore[attr-defined]
        snapshot = server.metrics()
        assert snapshot.handshakes_accepted == 900  # 500 clean + 400 faults after upgrade
        assert snapshot.closed_by_cause  # every one of them ended with a cause
        assert sum(snapshot.closed_by_cause.values()) == 1000


# ---------------------------------------------------------------- stalls


def test_a_stalled_server_blames_no_healthy_peer(driver: str) -> None:
    """The server process is paused (SIGSTOP) for two heartbeat intervals and
    resumed: no healthy peer is terminated, and a loop_stall alert with the
    lag is logged and counted in /metrics."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0", "--driver", driver,
         "--allow-no-origin", "--heartbeat-interval", str(INTERVAL), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    changed = threading.Condition()

    def collect() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with changed:
                lines.append(line)
                changed.notify_all()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    def wait_line(needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with changed:
            while True:
                found = [line for line in lines if needle in line]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {needle!r} in {lines[-10:]}"
                changed.wait(remaining)

    peers = []
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().rsplit(":", 1)[1].split()[0])
        target = f"ws://127.0.0.1:{port}/chat"
        node = node_client(target, "room", seconds=60)
        py = python_client(target, "room")
        peers = [node, py]
        for peer in peers:
            peer.wait_event("open", 10)
        wait_line("to=active", 5)
        stopped = time.monotonic()
        process.send_signal(signal.SIGSTOP)
        # The pause itself: the test holds the server stopped for two intervals.
        while time.monotonic() - stopped < 2 * INTERVAL:
            time.sleep(INTERVAL / 10)
        process.send_signal(signal.SIGCONT)
        alert = wait_line("kind=loop_stall", 5)
        lag = float(alert.split("value=")[1].split()[0])
        assert lag >= INTERVAL, alert
        # Healthy peers keep answering: wait for several more intervals of pings.
        before = node.count("ping")
        deadline = time.monotonic() + 10
        while node.count("ping") < before + 4:
            assert time.monotonic() < deadline
            time.sleep(INTERVAL / 3)  # polling a counter, bounded above
        assert not [line for line in lines if "terminated" in line], lines
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := sock.recv(65536):
                body += chunk
        stalls = [
            line for line in body.decode().splitlines()
            if line.startswith("wslifecycle_loop_stalls_total")
        ]  # fmt: skip
        assert stalls
        assert float(stalls[0].split()[1]) >= 1
        print(f"\n[{driver}] stall of {lag:.2f} s: alert logged, nobody terminated")
    finally:
        for peer in peers:
            peer.kill()
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(15)
        reader.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
