"""The torture suite: every hostile case of tests/drivers/torture.py against
every driver, each with its expected status or close code and a time bound,
then a leak check: no connection left, and descriptors, tasks or threads and
Python memory back to their baseline."""

from __future__ import annotations

import collections
import gc
import socket
import threading
import time
import tracemalloc

import pytest

from tests.drivers.harness import SERVERS, ServerThread, open_fds, worker_count
from tests.drivers.torture import (
    CASES,
    LIMITS,
    OP_BINARY,
    connect,
    http_outcome,
    upgraded,
)
from tests.wire.helpers import close_frame, frame
from tests.wire.helpers import upgrade_request as request
from wslifecycle import Config

#: Python memory the suite may leave behind (interned strings, import caches,
#: logging records): far below what one leaked connection per case would cost.
MEMORY_TOLERANCE = 512 * 1024


def _settle(server: ServerThread, fds: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.connection_count() or open_fds() > fds:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still {server.connection_count()} connections, {open_fds()} fds (baseline {fds})"
            )
        time.sleep(0.05)  # polling counters, bounded by the deadline above


def run_cases(port: int) -> tuple[list[str], collections.Counter[str]]:
    """Every torture case once against ``port``: what went wrong, and the
    cases run by family."""
    failures = []
    families: collections.Counter[str] = collections.Counter()
    for case in CASES:
        families[case.family] += 1
        started = time.monotonic()
        try:
            outcome = case.run(port)
        except Exception as error:  # report every case, not just the first
            failures.append(f"{case.family}/{case.name}: raised {error!r}")
            continue
        took = time.monotonic() - started
        if (outcome.kind, outcome.value) != (case.expected.kind, case.expected.value):
            failures.append(f"{case.family}/{case.name}: got {outcome}, want {case.expected}")
        elif took > case.within:
            failures.append(f"{case.family}/{case.name}: took {took:.2f} s > {case.within}")
    return failures, families


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_hostile_clients_get_the_right_answer_and_leave_nothing_behind(driver: str) -> None:
    """Each case gets its documented status or close code within its bound,
    twice over; after the second round connections, descriptors,
    tasks/threads and memory are back to where the first round left them.
    (The first round warms what a first use allocates once: caches, and
    the coverage tool's tables when it measures; a leak repeats.)"""
    tracemalloc.start()
    try:
        with SERVERS[driver](Config(**LIMITS), mode="echo") as server:  # type: ignore[arg-type]
            warm = upgraded(server.port)
            warm.close()
            failures, _ = run_cases(server.port)
            _settle(server, open_fds())
            gc.collect()
            fds = open_fds()
            workers = worker_count(server)
            threads = threading.active_count()
            memory = tracemalloc.get_traced_memory()[0]

            again, families = run_cases(server.port)
            failures += again
            assert not failures, "\n".join(failures)

            _settle(server, fds)
            gc.collect()
            # Not more than before: a leak adds descriptors. (Fewer is no
            # leak: sockets of round one, or of an earlier test, that were
            # still closing at the baseline may finish meanwhile.)
            assert open_fds() <= fds
            assert worker_count(server) == workers
            assert threading.active_count() == threads
            leaked = tracemalloc.get_traced_memory()[0] - memory
            assert leaked < MEMORY_TOLERANCE, f"{leaked} bytes of Python memory left behind"
            print(f"\n[{driver}] {len(CASES)} torture cases by family: {dict(families)}")
            print(f"[{driver}] Python memory after the second round: {leaked:+d} bytes")
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_handshakes_during_a_drain_get_503(driver: str) -> None:
    """While the server drains (held open by a client that does not answer
    the close), a full request, a request in pieces, and /healthz all get 503."""
    config = Config(**{**LIMITS, "close_timeout": 3.0, "drain_timeout": 3.0})  # type: ignore[arg-type]
    server = SERVERS[driver](config, mode="echo").start()
    holdout = upgraded(server.port)  # never answers the 1001 close
    try:
        server.request_drain()
        deadline = time.monotonic() + 5
        while not server.call(lambda: server.hub.draining):
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling a flag, bounded by the deadline above
        statuses = []
        with connect(server.port) as sock:
            sock.sendall(request())
            statuses.append(http_outcome(sock).value)
        with connect(server.port) as sock:
            data = request()
            for i in range(0, len(data), 10):
                sock.sendall(data[i : i + 10])
            statuses.append(http_outcome(sock).value)
        with connect(server.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            statuses.append(http_outcome(sock).value)
        assert statuses == [503, 503, 503]
    finally:
        holdout.close()
        server.stop()


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_a_close_that_cannot_flush_is_cut_at_the_close_timeout(driver: str) -> None:
    """A client fills the server's send buffer, sends its close frame and
    never reads again: the server's graceful close cannot flush, so it drops
    the socket once close_timeout has passed, instead of holding it forever."""
    config = Config(**{**LIMITS, "close_timeout": 1.0, "max_write_buffer": 64 << 20})  # type: ignore[arg-type]
    with SERVERS[driver](config, mode="echo") as server:
        fds = open_fds()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request())
        assert read_head(sock).startswith(b"HTTP/1.1 101 ")
        chunk = frame(OP_BINARY, b"x" * 64 * 1024)
        for _ in range(160):  # 10 MiB of echoes: more than kernel buffers hold
            sock.sendall(chunk)
        sock.sendall(close_frame(1000))
        started = time.monotonic()
        deadline = started + 15
        while open_fds() > fds + 1:  # +1: our own socket
            assert time.monotonic() < deadline, (server.connection_count(), open_fds(), fds)
            time.sleep(0.05)  # polling a counter, bounded by the deadline above
        took = time.monotonic() - started
        sock.close()
        # It really lingered (the flush could not finish), and it was cut in time.
        assert 0.5 < took < config.close_timeout + 2, took
        assert server.connection_count() == 0
        print(f"\n[{driver}] a close that could not flush was cut after {took:.2f} s")


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # one byte at a time: leave the frames unread
        assert chunk
        head += chunk
    return head
