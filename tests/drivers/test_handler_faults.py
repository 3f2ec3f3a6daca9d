"""The torture family of handler faults, on every driver: handlers that
raise (logged with the traceback, close 1011), that send after the connection
ended, and that are cancelled (or give up) in the middle of a close. Each
case names what the peer must see; after them all, connections, descriptors
and tasks or threads are back to baseline.

``send`` never blocks in any driver (it queues and returns), so there is no
await inside a send to cancel; the cancellation cases are the ones where a
handler can be suspended: waiting for its close to complete."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.drivers.harness import SERVERS, LogWatch, ServerThread, open_fds, worker_count
from tests.drivers.torture import (
    LIMITS,
    OP_TEXT,
    _close_code,
    close_outcome,
    read_until_end,
    upgraded,
)
from tests.wire.helpers import close_frame, frame
from wslifecycle import Config

CLOSE_TIMEOUT = 0.5
GIVE_UP = 0.05  # how long a handler waits for its close before giving up


# ------------------------------------------------------- one handler per driver
#
# Each reads one message, and the message names the fault to commit.


async def asyncio_handler(conn: Any) -> None:
    async for message in conn:
        if message == "raise":
            conn.send(message)
            raise RuntimeError("handler bug after a send")
        if message == "late-send":
            await conn.wait_closed()
            conn.send("too late")  # raises ConnectionClosed: the handler ends quietly
        if message in ("give-up-close", "raise-in-close"):
            code = 4000 if message == "give-up-close" else 4001
            try:
                async with asyncio.timeout(GIVE_UP):  # cancels the close's wait
                    await conn.close(code)
            except TimeoutError:
                if message == "raise-in-close":
                    raise RuntimeError("gave up closing") from None
                return


async def trio_handler(conn: Any) -> None:
    async for message in conn:
        if message == "raise":
            conn.send(message)
            raise RuntimeError("handler bug after a send")
        if message == "late-send":
            await conn.wait_closed()
            conn.send("too late")
        if message in ("give-up-close", "raise-in-close"):
            code = 4000 if message == "give-up-close" else 4001
            with trio.move_on_after(GIVE_UP):  # cancels the close's wait
                await conn.close(code)
            if message == "raise-in-close":
                raise RuntimeError("gave up closing")
            return


def selector_handler(conn: Any) -> None:
    for message in conn:
        if message == "raise":
            conn.send(message)
            raise RuntimeError("handler bug after a send")
        if message == "late-send":
            conn.wait_closed(5.0)
            conn.send("too late")
        if message in ("give-up-close", "raise-in-close"):
            code = 4000 if message == "give-up-close" else 4001
            assert not conn.close(code, timeout=GIVE_UP)  # the peer never answers
            if message == "raise-in-close":
                raise RuntimeError("gave up closing")
            return


HANDLERS: dict[str, Callable[..., Any]] = {
    "asyncio": asyncio_handler,
    "trio": trio_handler,
    "selector": selector_handler,
}


# ----------------------------------------------------------------- the cases


def _send(sock: socket.socket, text: str) -> None:
    sock.sendall(frame(OP_TEXT, text.encode()))


def _until_close(sock: socket.socket) -> bytes:
    """Everything the server sends up to and including its close frame."""
    sock.settimeout(5.0)
    data = b""
    while _close_code(data) is None:
        chunk = sock.recv(65536)
        assert chunk, f"ended without a close frame: {data[:100]!r}"
        data += chunk
    return data


def raise_after_send(port: int, logs: LogWatch) -> None:
    """The echo arrives, then close 1011 (internal error)."""
    sock = upgraded(port)
    _send(sock, "raise")
    data = _until_close(sock)
    assert data.index(b"raise") < len(data) - 4  # the echo, before the close frame
    assert _close_code(data) == 1011
    sock.sendall(close_frame(1011))
    read_until_end(sock, 5.0)
    sock.close()


def send_after_the_peer_closed(port: int, logs: LogWatch) -> None:
    """The peer's close 1000 is answered with 1000; the handler's late send
    raises ConnectionClosed inside the handler, which ends quietly."""
    sock = upgraded(port)
    sock.sendall(frame(OP_TEXT, b"late-send") + close_frame(1000))
    outcome = close_outcome(sock)
    assert (outcome.kind, outcome.value) == ("close", 1000), outcome
    read_until_end(sock, 5.0)
    sock.close()


def cancelled_while_closing(port: int, logs: LogWatch) -> None:
    """The handler's close 4000 goes out; the handler stops waiting for it;
    the peer never answers, so the core terminates at the close timeout."""
    sock = upgraded(port)
    _send(sock, "give-up-close")
    data, seconds = read_until_end(sock, CLOSE_TIMEOUT + 5)
    assert _close_code(data) == 4000, data[:100]
    assert seconds <= CLOSE_TIMEOUT + 1.0, seconds
    sock.close()


def raises_while_closing(port: int, logs: LogWatch) -> None:
    """A handler that raises after its close 4001 began does not turn it into
    1011: the close code already sent stands, and the close completes."""
    sock = upgraded(port)
    mark = logs.mark()
    _send(sock, "raise-in-close")
    assert _close_code(_until_close(sock)) == 4001
    logs.wait_for("handler failed connection=", 5.0, mark)  # it gave up and raised
    sock.sendall(close_frame(4001))
    rest, _ = read_until_end(sock, 5.0)
    assert _close_code(rest) is None, "a second close frame"
    sock.close()


CASES = [
    raise_after_send,
    send_after_the_peer_closed,
    cancelled_while_closing,
    raises_while_closing,
]
#: Cases whose handler raises, each logged once with its traceback.
FAILING = 2


def _settle(server: ServerThread, fds: int, workers: int | None) -> None:
    deadline = time.monotonic() + 10
    while server.connection_count() or open_fds() > fds or worker_count(server) != workers:
        assert time.monotonic() < deadline, (
            server.connection_count(),
            (open_fds(), fds),
            (worker_count(server), workers),
        )
        time.sleep(0.05)  # polling counters, bounded by the deadline above


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_handler_faults_get_the_right_close_and_leave_nothing_behind(driver: str) -> None:
    """Each handler fault gives the peer its documented close; only the
    handlers that raised are logged as failed; nothing is left behind."""
    config = Config(**{**LIMITS, "close_timeout": CLOSE_TIMEOUT})  # type: ignore[arg-type]
    server = SERVERS[driver](config, mode="echo")
    server.custom_handler = HANDLERS[driver]  # type: ignore[attr-defined]
    with LogWatch() as logs, server:
        workers = worker_count(server)  # before any connection: the server's own
        warm = upgraded(server.port)  # warms caches before the descriptor baseline
        warm.close()
        _settle(server, open_fds(), workers)
        fds = open_fds()
        for case in CASES:
            case(server.port, logs)
        _settle(server, fds, workers)
        failures = [r for r in logs.records if r.getMessage().startswith("handler failed")]
        assert len(failures) == FAILING
        for failure in failures:  # each with its traceback
            assert failure.exc_info is not None
            assert failure.exc_info[0] is RuntimeError
        assert len(logs.matching("to=draining cause=handler_error")) == 1  # only the first: 1011
        assert logs.matching("cause=close_timeout"), "the unanswered close was not cut"
