"""What is specific to the selector driver: a bounded thread count however
many connections are idle, connection methods called from many threads at
once, handler failures, the per-burst handler model, inbound backpressure,
and the server's own start/drain/close. Real loopback sockets; waits are on
events or bounded polls, never a fixed sleep."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import ClientConnection, connect

from tests.drivers.harness import LogWatch
from tests.drivers.servers.selector_server import SelectorServerThread
from wslifecycle import Config, ConnectionClosed, State
from wslifecycle.drivers import selector as driver

INTERVAL = 0.3
UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def server_with(
    handler: driver.Handler | None = None, *, workers: int = 4, **changes: object
) -> SelectorServerThread:
    values: dict[str, object] = {"heartbeat_interval": INTERVAL, "allow_no_origin": True}
    values.update(changes)
    server = SelectorServerThread(Config(**values), mode="echo")  # type: ignore[arg-type]
    server.custom_handler = handler
    server.workers = workers
    return server


def url(server: SelectorServerThread) -> str:
    return f"ws://127.0.0.1:{server.port}/"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)  # polling, bounded by the deadline above


def masked_text(payload: bytes) -> bytes:
    """A client text frame (RFC 6455 §5.3: clients mask), payload < 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


def read_message(sock: socket.socket) -> bytes:
    """The next server text frame's payload (short, unmasked), skipping pings."""
    while True:
        opcode, length = read_exactly(sock, 2)
        payload = read_exactly(sock, length)
        if opcode != 0x89:  # a heartbeat ping: not what we wait for
            assert (opcode, length < 126) == (0x81, True)
            return payload


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "server closed before answering the upgrade"
        data += chunk
    return data


# ----------------------------------------------------------------- threads


def test_thread_count_stays_bounded_with_2000_idle_connections() -> None:
    """2,000 open, idle connections cost no thread: the process has exactly
    the threads it had before them (the server's are its workers + 1 I/O
    thread), also while a burst of them is being answered."""
    workers = 4
    with server_with(workers=workers, heartbeat_interval=30.0) as server:
        baseline = threading.active_count()
        assert sum(t.is_alive() for t in server.server.threads) == workers + 1
        clients: list[socket.socket] = []
        try:
            for _ in range(10):  # batches: stay below the listen backlog
                batch = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
                clients += batch
                for sock in batch:
                    sock.sendall(UPGRADE)
                for sock in batch:
                    assert read_head(sock).startswith(b"HTTP/1.1 101 ")
            assert server.connection_count() == 2000
            assert threading.active_count() == baseline
            # A burst on 100 of them: runs go through the bounded pool.
            for i, sock in enumerate(clients[:100]):
                sock.sendall(masked_text(b"m%d" % i))
            for i, sock in enumerate(clients[:100]):
                assert read_message(sock) == b"m%d" % i
            assert threading.active_count() == baseline
            assert sum(t.is_alive() for t in server.server.threads) == workers + 1
        finally:
            for sock in clients:
                sock.close()
        wait_until(lambda: server.connection_count() == 0)
        assert threading.active_count() == baseline


def test_the_server_starts_drains_and_closes_without_leaving_a_thread() -> None:
    """serve() starts the I/O thread and returns; begin_drain() closes with
    1001; wait_drained() reports it; close() ends every server thread."""
    baseline = threading.active_count()
    config = Config(heartbeat_interval=INTERVAL, allow_no_origin=True)
    server = driver.serve(driver.echo_handler, "127.0.0.1", 0, config=config, workers=3)
    try:
        assert threading.active_count() == baseline + 4
        with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            ws.send("hi")
            assert ws.recv(10) == "hi"
            assert not server.wait_drained(0)
            server.begin_drain()
            with pytest.raises(ClientClosed):
                ws.recv(10)
            assert ws.close_code == 1001
        assert server.wait_drained(10)
    finally:
        server.close()
    assert not any(thread.is_alive() for thread in server.threads)
    # The websockets client's reader thread may end a moment after its close.
    wait_until(lambda: threading.active_count() == baseline, 5.0)


# ------------------------------------------------------- many threads at once


def _collect(ws: ClientConnection, into: list[str]) -> None:
    try:
        while True:
            into.append(str(ws.recv()))
    except ClientClosed:
        pass


def test_send_and_close_from_many_threads_at_once() -> None:
    """Eight non-I/O threads send to ten connections at once: every message
    arrives, each thread's in its order. Then senders and closers race: each
    connection is closed by two threads at once, sends after the close raise
    ConnectionClosed, and every client sees close code 4000."""
    conns: dict[str, driver.Connection] = {}
    registered = threading.Condition()

    def register(conn: driver.Connection) -> None:
        for message in conn:
            with registered:
                conns[str(message)] = conn
                registered.notify_all()

    with server_with(register) as server, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(url(server))) for _ in range(10)]
        received: list[list[str]] = [[] for _ in clients]
        readers = [
            threading.Thread(target=_collect, args=(ws, into))
            for ws, into in zip(clients, received, strict=True)
        ]
        try:
            for reader in readers:
                reader.start()
            for i, ws in enumerate(clients):
                ws.send(f"client {i}")
            with registered:
                assert registered.wait_for(lambda: len(conns) == 10, 10)
            targets = [conns[f"client {i}"] for i in range(10)]

            errors: list[BaseException] = []
            start = threading.Barrier(8)

            def sender(t: int, count: int | None) -> None:
                try:
                    start.wait(10)
                    i = 0
                    while count is None or i < count:
                        for conn in targets:
                            try:
                                conn.send(f"{t}:{i}", critical=True)
                            except ConnectionClosed:
                                if count is not None:
                                    raise
                        if count is None and all(c.state is State.CLOSED for c in targets):
                            return
                        i += 1
                except BaseException as error:  # reported to the test thread
                    errors.append(error)

            def closer(half: int) -> None:
                try:
                    start.wait(10)
                    for conn in targets[::-1] if half else targets:
                        assert conn.close(4000, "done", timeout=10)
                except BaseException as error:
                    errors.append(error)

            phase_one = [threading.Thread(target=sender, args=(t, 100)) for t in range(8)]
            for thread in phase_one:
                thread.start()
            for thread in phase_one:
                thread.join(30)
            assert not errors
            wait_until(lambda: all(len(into) >= 800 for into in received))

            senders = [threading.Thread(target=sender, args=(100 + t, None)) for t in range(6)]
            closers = [threading.Thread(target=closer, args=(half,)) for half in (0, 1)]
            for thread in senders + closers:
                thread.start()
            for thread in senders + closers:
                thread.join(30)
                assert not thread.is_alive()
            assert not errors
            for reader in readers:
                reader.join(10)
        finally:
            for ws in clients:
                ws.close()
        for ws, into in zip(clients, received, strict=True):
            assert ws.close_code == 4000
            by_thread: dict[str, list[int]] = {}
            for message in into:
                sender_id, number = message.split(":")
                by_thread.setdefault(sender_id, []).append(int(number))
            for steady in range(8):
                assert by_thread[str(steady)] == list(range(100))
            for racer, numbers in by_thread.items():  # the racing senders: a prefix each
                assert numbers == list(range(len(numbers))), racer
        assert all(conn.state is State.CLOSED for conn in targets)


# ---------------------------------------------------------------- handlers


class Runs:
    """Records each handler run: what it iterated, and how many ran at once."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.conns: list[driver.Connection] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self._active = 0
        self.max_active = 0
        self._changed = threading.Condition()

    def handler(self, conn: driver.Connection) -> None:
        with self._changed:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            self.conns.append(conn)
        self.started.set()
        assert self.release.wait(10)
        seen = [str(message) for message in conn]
        with self._changed:
            self._active -= 1
            self.seen.append(seen)
            self._changed.notify_all()

    def wait_runs(self, count: int) -> list[list[str]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.seen) >= count, 10)
            return list(self.seen)


def test_a_handler_runs_per_burst_and_iteration_ends_when_the_queue_is_empty() -> None:
    """The first message starts a run; messages queued meanwhile are yielded
    by the same iteration, which then ends with the connection still open;
    the next message starts another run; at most one run at a time."""
    runs = Runs()
    with server_with(runs.handler) as server, connect(url(server)) as ws:
        ws.send("a")
        assert runs.started.wait(10)
        conn = runs.conns[0]
        ws.send("b")
        ws.send("c")
        wait_until(lambda: server.call(lambda: conn.wire.messages_waiting) == 3)
        runs.release.set()
        assert runs.wait_runs(1) == [["a", "b", "c"]]
        assert conn.state is State.ACTIVE
        wait_until(lambda: not server.call(lambda: conn._running))
        ws.send("d")
        assert runs.wait_runs(2) == [["a", "b", "c"], ["d"]]
        ws.send("e")
        assert runs.wait_runs(3)[-1] == ["e"]
        assert runs.max_active == 1
        assert all(c is conn for c in runs.conns)


def test_order_is_preserved_across_bursts_and_workers() -> None:
    """Two clients each send 1,000 messages as fast as they can through four
    workers; each gets its echoes back in order."""
    with server_with(workers=4) as server:

        def client(tag: str, out: list[str]) -> None:
            with connect(url(server), max_queue=None) as ws:
                for i in range(1000):
                    ws.send(f"{tag}{i}")
                out.extend(str(ws.recv(10)) for _ in range(1000))

        results: list[list[str]] = [[], []]
        threads = [
            threading.Thread(target=client, args=(tag, out))
            for tag, out in zip("xy", results, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results[0] == [f"x{i}" for i in range(1000)]
        assert results[1] == [f"y{i}" for i in range(1000)]


def test_a_handler_that_does_not_read_drops_the_burst_and_runs_again() -> None:
    """A run that returns without reading its messages drops them (logged)
    instead of spinning a worker; the next message runs the handler again."""
    calls: list[str] = []
    ran = threading.Semaphore(0)

    def ignores(conn: driver.Connection) -> None:
        calls.append(conn.id)
        ran.release()

    with LogWatch() as logs, server_with(ignores) as server, connect(url(server)) as ws:
        ws.send("x")
        assert ran.acquire(timeout=10)
        logs.wait_for("handler returned without reading connection=.* dropped=1", 5)
        ws.send("y")
        assert ran.acquire(timeout=10)
        assert len(calls) == 2
        assert server.connection_count() == 1


def test_close_from_a_handler_waits_until_closed() -> None:
    """conn.close() sends the close frame and returns once CLOSED."""
    outcome: list[tuple[bool, State]] = []

    def closes(conn: driver.Connection) -> None:
        next(conn)
        outcome.append((conn.close(4001, "bye"), conn.state))

    with server_with(closes) as server, connect(url(server)) as ws:
        ws.send("please")
        with pytest.raises(ClientClosed):
            ws.recv(10)
        assert ws.close_code == 4001
        wait_until(lambda: bool(outcome))
        assert outcome == [(True, State.CLOSED)]
