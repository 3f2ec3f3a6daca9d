"""Real sockets for driver tests: a server in a thread, a log watcher to wait
on events (bounded, never a fixed sleep), a TCP proxy that can freeze, and
independent peers (the `websockets` client, the Node.js `ws` client, and a
client process that can be paused with SIGSTOP)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self, TypeVar

from wslifecycle import Config, MetricsSnapshot
from wslifecycle.hub import Hub

T = TypeVar("T")
PEERS = pathlib.Path(__file__).resolve().parent.parent / "peers"
NODE_CLIENT = PEERS / "node" / "client.js"


# --------------------------------------------------------------------- logs


class LogWatch(logging.Handler):
    """Collects the server's log lines; tests wait on them with a timeout."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[float, str]] = []
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.lines.append((time.monotonic(), record.getMessage()))
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> tuple[float, str]:
        """The first line from index ``since`` that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for when, line in self.lines[since:]:
                    if regex.search(line):
                        return when, line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(line for _, line in self.lines[-20:])
                    raise TimeoutError(f"no log line matched {pattern!r} in {timeout} s:\n{tail}")
                self._changed.wait(remaining)

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        with self._changed:
            return [line for _, line in self.lines if regex.search(line)]

    def mark(self) -> int:
        with self._changed:
            return len(self.lines)

    def __enter__(self) -> LogWatch:
        logger = logging.getLogger("wslifecycle")
        logger.addHandler(self)
        self._previous_level = logger.level
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("wslifecycle")
        logger.removeHandler(self)
        logger.setLevel(self._previous_level)


# ------------------------------------------------------------------ servers


class ServerThread:
    """A driver's server running in its own thread, for one test."""

    driver = "abstract"

    def __init__(self, config: Config, mode: str = "relay", **listen: Any) -> None:
        """``listen``: serve()'s arguments beyond loopback and a free port
        (``unix_path``, ``ssl``, ``metrics_port``, ``process_request``)."""
        self.config = config
        self.mode = mode
        self.listen = listen
        self.port = 0
        self.metrics_port: int | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"server-{self.driver}")

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Drain, wait for the thread; fail if it does not finish in time."""
        if self._thread.is_alive():
            self.request_drain()
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "server did not finish draining"
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as error:  # reported to the test thread
            self._error = error
            self._ready.set()

    def listen_args(self) -> dict[str, Any]:
        """serve()'s address arguments: 127.0.0.1 and a free port, or a unix
        socket (with 127.0.0.1 kept for a metrics port)."""
        args: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
        if "unix_path" in self.listen:
            del args["port"]
            if "metrics_port" not in self.listen:
                del args["host"]
        args.update(self.listen)
        return args

    def _started(self, server: Any) -> None:
        """Record the running server's hub and ports, then report ready."""
        self.hub = server.hub
        if "unix_path" not in self.listen:
            self.port = server.port
        self.metrics_port = server.metrics_port
        self._ready.set()

    # Each driver implements these three.
    def run(self) -> None:
        raise NotImplementedError

    def request_drain(self) -> None:
        raise NotImplementedError

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the server's thread (its loop) and return its result."""
        raise NotImplementedError

    # Built on call():
    def metrics(self) -> MetricsSnapshot:
        return self.call(lambda: self.hub.scheduler.metrics.snapshot())

    def connection_count(self) -> int:
        return self.call(lambda: len(self.hub.scheduler))

    def connection_id_for_peer_port(self, port: int) -> str | None:
        """The id of the server connection whose peer uses this local port."""
        return self.call(lambda: self._id_for_port(port))

    hub: Hub

    def _id_for_port(self, port: int) -> str | None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _discover() -> dict[str, type[ServerThread]]:
    """One module per driver in tests/drivers/servers/, each defining SERVER."""
    import importlib

    found: dict[str, type[ServerThread]] = {}
    for path in sorted((pathlib.Path(__file__).parent / "servers").glob("*_server.py")):
        module = importlib.import_module(f"tests.drivers.servers.{path.stem}")
        server: type[ServerThread] = module.SERVER
        found[server.driver] = server
    return found


SERVERS: dict[str, type[ServerThread]] = _discover()


# -------------------------------------------------------------------- proxy


class FrozenProxy:
    """A TCP proxy between a client and the server that can freeze: both
    directions stop, both sockets stay open (a half-open path, as when a
    phone leaves Wi-Fi or a NAT entry is reaped)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self.upstream_local_ports: list[int] = []
        self._thread = threading.Thread(target=self._run, name="frozen-proxy", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self.frozen.set()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    self.upstream_local_ports.append(upstream.getsockname()[1])
                    self._pairs[client] = upstream
                    self._pairs[upstream] = client
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(upstream, selectors.EVENT_READ)
                    continue
                if self.frozen.is_set():
                    sel.unregister(sock)  # stop reading; the socket stays open
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self._pairs[sock].sendall(data)
                else:
                    sel.unregister(sock)
                    self._pairs[sock].close()
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in set(self._pairs):
            sock.close()
        self.listener.close()


# -------------------------------------------------------------------- peers


def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP exchange (the server closes after answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), fields, body


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def worker_count(server: ServerThread) -> int | None:
    """The server's tasks (asyncio, trio) or threads (selector), to compare
    with a baseline; None for a driver that has neither."""
    if hasattr(server, "task_count"):
        return int(server.task_count())
    if hasattr(server, "thread_count"):
        return int(server.thread_count())
    return None


def node_client(url: str, channel: str, seconds: float, origin: str | None = None) -> Peer:
    argv = ["node", str(NODE_CLIENT), url, channel, str(seconds)]
    if origin:
        argv += ["--origin", origin]
    return Peer(argv)


def python_client(url: str, channel: str) -> Peer:
    """A `websockets` client in its own process (so it can be SIGSTOPped)."""
    return Peer([sys.executable, str(PEERS / "python_client.py"), url, channel])


class Peer:
    """A client process that prints one JSON line per event on stdout."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"peer events so far: {self.events[-10:]}")
                self._changed.wait(remaining)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") == name, timeout)

    def count(self, name: str) -> int:
        with self._changed:
            return sum(1 for e in self.events if e.get("event") == name)

    def pause(self) -> None:
        """SIGSTOP: the process stops; its kernel socket stays open and keeps
        acknowledging TCP, but nothing answers a ping."""
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def events_of(peers: list[Peer]) -> Iterator[dict[str, Any]]:
    for peer in peers:
        yield from peer.events


# ---------------------------------------------------------------- the CLI


@contextlib.contextmanager
def cli_server(driver: str, *flags: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``wslifecycle serve`` on a free port, in a process of its own: the
    process and its port (from the serving line). Leaving drains it (SIGTERM,
    exit 0 asserted); a stopped process (SIGSTOP) is continued first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0",
         "--driver", driver, "--log-level", "warning", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 15)
        assert ready, "the server printed no serving line in 15 s"
        banner = process.stdout.readline()
        assert f"(driver {driver})" in banner, banner
        yield process, int(banner.rsplit(":", 1)[1].split()[0])
        process.send_signal(signal.SIGCONT)
        process.terminate()
        assert process.wait(15) == 0
    finally:
        reap(process)


def reap(process: subprocess.Popen[str]) -> None:
    """Make sure ``process`` has ended (killed if it still runs) and its pipes are closed."""
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(5)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
