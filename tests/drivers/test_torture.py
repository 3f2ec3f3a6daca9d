"""The torture suite: every hostile case of tests/drivers/torture.py against
every driver, each with its expected status or close code and a time bound,
then a leak check: no connection left, and descriptors, tasks or threads and
Python memory back to their baseline."""

from __future__ import annotations

import collections
import gc
import threading
import time
import tracemalloc

import pytest

from tests.drivers.harness import SERVERS, ServerThread, open_fds
from tests.drivers.torture import CASES, LIMITS, connect, http_outcome, request, upgraded
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


def _workers(server: ServerThread) -> int | None:
    if hasattr(server, "task_count"):
        return int(server.task_count())
    if hasattr(server, "thread_count"):
        return int(server.thread_count())
    return None


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_hostile_clients_get_the_right_answer_and_leave_nothing_behind(driver: str) -> None:
    """Each case gets its documented status or close code within its bound;
    afterwards connections, descriptors, tasks/threads and memory are back
    to baseline."""
    tracemalloc.start()
    try:
        with SERVERS[driver](Config(**LIMITS), mode="echo") as server:  # type: ignore[arg-type]
            warm = upgraded(server.port)  # warm caches before the baseline
            warm.close()
            _settle(server, open_fds())
            gc.collect()
            fds = open_fds()
            workers = _workers(server)
            threads = threading.active_count()
            memory = tracemalloc.get_traced_memory()[0]

            failures = []
            families: collections.Counter[str] = collections.Counter()
            for case in CASES:
                families[case.family] += 1
                started = time.monotonic()
                try:
                    outcome = case.run(server.port)
                except Exception as error:  # report every case, not just the first
                    failures.append(f"{case.family}/{case.name}: raised {error!r}")
                    continue
                took = time.monotonic() - started
                if (outcome.kind, outcome.value) != (case.expected.kind, case.expected.value):
                    failures.append(
                        f"{case.family}/{case.name}: got {outcome}, want {case.expected}"
                    )
                elif took > case.within:
                    failures.append(f"{case.family}/{case.name}: took {took:.2f} s > {case.within}")
            assert not failures, "\n".join(failures)

            _settle(server, fds)
            gc.collect()
            assert open_fds() == fds
            assert _workers(server) == workers
            assert threading.active_count() == threads
            leaked = tracemalloc.get_traced_memory()[0] - memory
            assert leaked < MEMORY_TOLERANCE, f"{leaked} bytes of Python memory left behind"
            print(f"\n[{driver}] {len(CASES)} torture cases by family: {dict(families)}")
            print(f"[{driver}] Python memory after: {leaked:+d} bytes")
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
