"""Churn and soak: 10,000 connect-handshake-close cycles against each driver,
mixing clean closes, resets, silent peers (half-open) and oversized messages;
afterwards descriptors, tasks or threads, and RSS are back to baseline.

RSS tolerance: 8 MiB, measured from a baseline taken after a warm-up round of
2,500 cycles of the same mix. CPython keeps freed memory in its own arenas
and rarely returns it, so the first round raises RSS to a high-water mark
(500 silent peers held at once) that later rounds reuse; a leak of even
1 KiB per cycle would be 10 MiB and fail.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.drivers.harness import SERVERS, ServerThread, open_fds
from tests.drivers.torture import (
    close_outcome,
    read_until_end,
    rst,
    upgraded,
)
from tests.wire.helpers import close_frame, frame
from tests.wire.helpers import upgrade_request as request
from wslifecycle import Config, TerminationCause

CYCLES = 10_000
RSS_TOLERANCE = 8 * 1024 * 1024


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def clean(port: int) -> None:
    """Handshake, one message, close: all in one write; read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request() + frame(0x1, b"hello") + close_frame(1000))
        data, _ = read_until_end(sock, 5)
        assert data.startswith(b"HTTP/1.1 101 "), data[:40]
        assert data.endswith(b"\x88\x02\x03\xe8"), data[-8:]  # our close echoed


def reset(port: int) -> None:
    rst(upgraded(port))


def oversized(port: int) -> None:
    """A frame declaring more than the cap: closed with 1009 at its header."""
    with upgraded(port) as sock:
        sock.sendall(frame(0x2, b"", length=1 << 20)[:14])  # the whole header, no payload
        outcome = close_outcome(sock)  # answers the close, as a client should
        assert (outcome.kind, outcome.value) == ("close", 1009), outcome


def _settle(server: ServerThread, fds: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.connection_count() or open_fds() > fds:
        assert time.monotonic() < deadline, (server.connection_count(), open_fds(), fds)
        time.sleep(0.05)  # polling counters, bounded by the deadline above


def _workers(server: ServerThread) -> int | None:
    for name in ("task_count", "thread_count"):
        if hasattr(server, name):
            return int(getattr(server, name)())
    return None


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_ten_thousand_cycles_leave_nothing_behind(driver: str) -> None:
    """After 10,000 mixed cycles the server holds no connection and its
    descriptors, tasks or threads, and RSS are back to their baseline."""
    config = Config(
        heartbeat_interval=0.5,
        max_missed_pongs=1,
        handshake_timeout=2.0,
        max_message_size=16 * 1024,
        allow_no_origin=True,
    )
    with SERVERS[driver](config, mode="echo") as server:
        # Warm up with one round of the same mix, so the baseline includes the
        # high-water mark of 500 held silent peers (arenas, buffers, caches).
        _cycles(server, 2_500)
        _settle(server, open_fds(), 10)
        fds, workers, memory = open_fds(), _workers(server), rss()

        started = time.monotonic()
        _cycles(server, CYCLES)
        elapsed = time.monotonic() - started

        _settle(server, fds, 15)
        assert open_fds() == fds
        assert _workers(server) == workers
        grown = rss() - memory
        assert grown < RSS_TOLERANCE, f"RSS grew by {grown / 1e6:.1f} MB"
        snapshot = server.metrics()
        assert snapshot.terminations[TerminationCause.HEARTBEAT_TIMEOUT] >= CYCLES // 4
        print(
            f"\n[{driver}] {CYCLES:,} churn cycles in {elapsed:.1f} s"
            f" ({CYCLES / elapsed:,.0f}/s); RSS {grown / 1e6:+.1f} MB; fds {open_fds() - fds:+d}"
        )


def _cycles(server: ServerThread, count: int) -> None:
    """``count`` cycles: clean, reset, oversized, silent, in turn."""
    port = server.port
    silent: list[socket.socket] = []
    kinds = (clean, reset, oversized, None)
    for cycle in range(count):
        kind = kinds[cycle % 4]
        if kind is None:  # a silent peer: handshake, then nothing, socket kept
            silent.append(upgraded(port))
        else:
            kind(port)
        if len(silent) == 500:  # the server terminates them at the bound
            _wait_terminated(server, silent)
            silent = []
    _wait_terminated(server, silent)


def _wait_terminated(server: ServerThread, sockets: list[socket.socket]) -> None:
    """Every silent peer is dropped by the heartbeat (RST): read each to the end."""
    for sock in sockets:
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass  # pings from the server until it gives up on us
        except ConnectionResetError:
            pass
        finally:
            sock.close()
