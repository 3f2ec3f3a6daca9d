"""``wslifecycle serve`` behind a real nginx whose proxy_read_timeout is
shorter than the idle periods: the server's heartbeat is the traffic that
keeps an idle client's flow open through the proxy, and a client that goes
silent behind the proxy is still terminated within the liveness bound
(docs/theory.md: (M + 1) × I + 2L)."""

from __future__ import annotations

import base64
import contextlib
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from typing import IO, Protocol

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.drivers.harness import SERVERS
from tests.nginx import NGINX, listening
from tests.nginx import nginx_conf as shared_conf
from wslifecycle import Config

INTERVAL = 1.0  # --heartbeat-interval
MAX_MISSED = 2  # --max-missed-pongs
PROXY_TIMEOUT = 2  # nginx proxy_read_timeout and proxy_send_timeout, seconds
IDLE = 10.0  # how long the idle clients stay quiet, five proxy timeouts
# The bound's L is the timer slack plus the loop's lag; the lag is not
# configured, so allow for it (twice, as in the bound) and for the log line's
# trip through a pipe, on a shared two-core CI machine.
LAG_ALLOWANCE = 0.5
SERVE_FLAGS = [
    "--heartbeat-interval", str(INTERVAL), "--max-missed-pongs", str(MAX_MISSED),
    "--allow-no-origin", "--drain-timeout", "2", "--log-level", "info",
]  # fmt: skip


# ---------------------------------------------------------------- processes


class Lines:
    """A subprocess stream's lines, each stamped with its arrival time
    (monotonic), collected by a thread so tests can wait on them."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.ended = False  # the process closed the stream (it exited)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for when, line in self.lines:
                    if regex.search(line):
                        return when, line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended:
                    tail = "\n".join(line for _, line in self.lines[-20:])
                    raise TimeoutError(f"no line matched {pattern!r} in {timeout} s:\n{tail}")
                self._changed.wait(remaining)

    def matching(self, pattern: str) -> list[str]:
        with self._changed:
            return [line for _, line in self.lines if re.search(pattern, line)]

    def join(self) -> None:
        self._thread.join(5)


class Serve:
    """A running ``wslifecycle serve``: its driver, port and stderr log."""

    def __init__(self, driver: str, port: int, log: Lines) -> None:
        self.driver = driver
        self.port = port
        self.log = log


class ServeFactory(Protocol):
    def __call__(self, driver: str, *flags: str) -> Serve: ...


class NginxFactory(Protocol):
    def __call__(self, routes: Mapping[str, int], host: str = "$http_host") -> int: ...


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """Starts ``wslifecycle serve`` subprocesses; SIGTERM and waits for each
    at the end of the test."""
    started: list[subprocess.Popen[str]] = []
    readers: list[Lines] = []

    def start(driver: str, *flags: str) -> Serve:
        process = subprocess.Popen(
            [sys.executable, "-m", "wslifecycle.drivers.cli", "serve", "--port", "0",
             "--driver", driver, *SERVE_FLAGS, *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        assert process.stderr is not None
        stdout, log = Lines(process.stdout), Lines(process.stderr)
        readers.extend((stdout, log))
        try:
            _, banner = stdout.wait_for(r"^wslifecycle: serving ", 15)
        except TimeoutError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)  # stdout ended when it exited; its log says why
            log.join()
            raise AssertionError("\n".join(line for _, line in log.lines[-20:])) from None
        port = int(banner.rsplit(":", 1)[1].split()[0])
        return Serve(driver, port, log)

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for reader in readers:
        reader.join()
    for process in started:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    # SIGTERM is a drain, which ends in exit 0.
    assert [process.returncode for process in started] == [0] * len(started)


@pytest.fixture
def nginx(tmp_path: pathlib.Path) -> Iterator[NginxFactory]:
    """Starts one nginx (single process, everything in tmp_path, so no root is
    needed) proxying path prefixes to upstream ports; stopped at the end."""
    binary = NGINX
    if binary is None:
        pytest.fail("nginx is not installed: bash .ci/setup installs it")
    started: list[subprocess.Popen[bytes]] = []

    def start(routes: Mapping[str, int], host: str = "$http_host") -> int:
        # The free port is found by binding port 0 and closing; another
        # process may take it before nginx binds it, so retry then.
        for _ in range(3):
            with socket.create_server(("127.0.0.1", 0)) as probe:
                port: int = probe.getsockname()[1]
            conf = tmp_path / f"nginx-{port}.conf"
            conf.write_text(nginx_conf(tmp_path, port, routes, host))
            process = subprocess.Popen(
                [binary, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            started.append(process)
            if listening(port, process, timeout=10):
                return port
        errors = (tmp_path / "error.log").read_text(errors="replace")
        raise AssertionError(f"nginx did not start:\n{errors[-2000:]}")

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()  # SIGTERM: nginx's fast shutdown
        process.wait(10)


def nginx_conf(tmp: pathlib.Path, port: int, routes: Mapping[str, int], host: str) -> str:
    """An nginx.conf that a non-root user can run: one process in the
    foreground, every file in ``tmp``. ``routes``: path prefix → upstream port
    (the prefix is stripped, so /metrics stays reachable under it); ``host``:
    the Host header sent upstream ($http_host keeps the client's port, $host
    drops it)."""
    locations = "".join(
        f"""
        location {prefix} {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host {host};
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout {PROXY_TIMEOUT}s;
            proxy_send_timeout {PROXY_TIMEOUT}s;
        }}"""
        for prefix, upstream in routes.items()
    )
    http_block = f"""
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" close;
    }}
    server {{
        listen 127.0.0.1:{port};{locations}
    }}"""
    return shared_conf(tmp, port, http_block, connections=64)


def metric(proxy_port: int, prefix: str, name: str) -> float:
    """One sample of the upstream's /metrics, fetched through nginx."""
    url = f"http://127.0.0.1:{proxy_port}{prefix}metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: str = response.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found[1])


def silent_client(port: int, path: str) -> tuple[socket.socket, float]:
    """A client that completes the upgrade through the proxy and then never
    sends another byte (a peer whose application froze). Returns the socket
    and the time the 101 arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: leave any frame unread
            byte = sock.recv(1)
            assert byte, f"closed during the handshake: {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 101 "), head
    except BaseException:
        sock.close()
        raise
    return sock, time.monotonic()


def frames_until_closed(sock: socket.socket, timeout: float) -> list[int]:
    """Read what is left until the proxy closes the connection; the opcodes
    of the (unmasked, short) server frames read."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    opcodes = []
    while data:
        length = data[1] & 0x7F
        assert length < 126, data  # pings and closes are short
        assert not data[1] & 0x80, data  # a server's frames are not masked
        opcodes.append(data[0] & 0x0F)
        data = data[2 + length :]
    return opcodes


# -------------------------------------------------------------------- tests


@pytest.mark.slow
def test_heartbeat_keeps_idle_clients_open_through_nginx(
    serve: ServeFactory, nginx: NginxFactory
) -> None:
    """One client per driver, each behind nginx with a 2 s proxy_read_timeout,
    says nothing for 10 s: the 1 s heartbeat (pings down, the client's
    automatic pongs up) keeps every flow open, and a message still goes
    through both ways afterwards."""
    servers = [serve(driver) for driver in SERVERS]
    proxy = nginx({f"/{s.driver}/": s.port for s in servers})
    with contextlib.ExitStack() as stack:
        clients: list[ClientConnection] = []
        for server in servers:
            # The client sends no pings of its own: only the server's
            # heartbeat crosses the proxy while the client is idle.
            url = f"ws://127.0.0.1:{proxy}/{server.driver}/chat"
            clients.append(stack.enter_context(connect(url, ping_interval=None, open_timeout=10)))
        quiet_until = time.monotonic() + IDLE
        for ws in clients:
            # Nothing arrives and nothing closes until the idle period is over.
            with pytest.raises(TimeoutError):
                ws.recv(timeout=max(0.0, quiet_until - time.monotonic()))
        for server, ws in zip(servers, clients, strict=True):
            ws.send(f"still here ({server.driver})")
            assert ws.recv(timeout=5) == f"still here ({server.driver})"
            pongs = metric(proxy, f"/{server.driver}/", "wslifecycle_pongs_received_total")
            print(f"{server.driver}: {pongs:.0f} pongs through nginx while idle")
            assert pongs >= IDLE / INTERVAL - 2, server.driver
    for server in servers:
        assert not server.log.matching("terminated"), server.driver


def test_nginx_reaps_an_idle_flow_without_heartbeats(
    serve: ServeFactory, nginx: NginxFactory
) -> None:
    """The control: with a heartbeat interval above proxy_read_timeout the
    same proxy cuts the idle client after about 2 s. This is what the
    heartbeat prevents above, and what --proxy-idle-timeout refuses."""
    server = serve("asyncio", "--heartbeat-interval", "30")
    proxy = nginx({"/": server.port})
    with connect(f"ws://127.0.0.1:{proxy}/chat", ping_interval=None, open_timeout=10) as ws:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=PROXY_TIMEOUT + 5)
        cut_after = time.monotonic() - opened
    print(f"nginx cut the idle flow {cut_after:.3f} s after its upgrade")
    assert PROXY_TIMEOUT - 0.1 <= cut_after < PROXY_TIMEOUT + 2, cut_after


@pytest.mark.parametrize("driver", list(SERVERS))
def test_a_client_gone_silent_behind_nginx_is_terminated_within_the_bound(
    driver: str, serve: ServeFactory, nginx: NginxFactory
) -> None:
    """A client completes the upgrade through nginx and then never answers:
    the server's pings reach it through the proxy, none is answered, and the
    server terminates it within (M + 1) × I + 2L of the handshake, then nginx
    closes the client's side too."""
    server = serve(driver)
    proxy = nginx({"/": server.port})
    config = Config(heartbeat_interval=INTERVAL, max_missed_pongs=MAX_MISSED)
    sock, upgraded = silent_client(proxy, "/chat")
    with sock:
        terminated, line = server.log.wait_for(
            r"terminated connection=\S+ cause=", config.detection_bound + 10
        )
        assert "cause=heartbeat_timeout" in line, line
        after = terminated - upgraded
        print(f"{driver}: silent client terminated {after:.3f} s after its upgrade")
        # Never before M full intervals; never later than the bound.
        assert after >= MAX_MISSED * INTERVAL - 0.1, after
        bound = config.detection_bound + 2 * config.effective_timer_slack + LAG_ALLOWANCE
        assert after <= bound, (after, bound)
        # What reached the client: the unanswered pings (one per slot), then the
        # proxy's close once the server had cut its upstream connection.
        assert frames_until_closed(sock, timeout=5) == [0x9] * MAX_MISSED
    assert metric(proxy, "/", 'wslifecycle_terminations_total{cause="heartbeat_timeout"}') == 1


def test_a_same_origin_browser_passes_when_nginx_forwards_the_port(
    serve: ServeFactory, nginx: NginxFactory
) -> None:
    """The Origin check compares the browser's Origin with the Host header
    the server receives: behind nginx on a non-default port, Host $http_host
    (the client's host:port) lets a same-origin page in, Host $host (port
    dropped) gets it refused with 403."""
    server = serve("asyncio")
    keeps_port = nginx({"/": server.port}, host="$http_host")
    drops_port = nginx({"/": server.port}, host="$host")
    page = Origin(f"http://127.0.0.1:{keeps_port}")
    with connect(f"ws://127.0.0.1:{keeps_port}/chat", origin=page, open_timeout=10) as ws:
        ws.send("same origin")
        assert ws.recv(timeout=5) == "same origin"
    page = Origin(f"http://127.0.0.1:{drops_port}")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{drops_port}/chat", origin=page, open_timeout=10)
    assert refused.value.response.status_code == 403
