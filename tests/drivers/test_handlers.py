"""How each driver carries out the core's handler rules, on real sockets.

The rules themselves are the core's and are tested once on a fake clock
(tests/wire/test_inbox.py: the inbox marks; tests/core/test_pubsub.py: 1013
for a handler stalled past the bound; tests/core/test_lifecycle.py: 1011 for
a handler that raised, 1000 for one that returned). Here each driver shows it
really stops reading its socket, resumes, and closes: one row per driver.

The handlers block on a ``threading.Event`` the test sets: the selector's in
their worker thread, the coroutines by polling it every 10 ms (a worker
thread of Trio's would outlive the test in Trio's thread cache and move the
next test's thread baseline).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import websockets
from websockets.exceptions import ConnectionClosed

from tests.drivers.harness import SERVERS, LogWatch, ServerThread
from wslifecycle import Config, MetricsSnapshot

INTERVAL = 0.3
MESSAGES = 200
#: Large enough that the 200 messages need many reads, small enough that
#: they all fit in loopback's socket buffers (so the client never blocks).
SIZE = 2048


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a handler blocked


def slow_handler(driver: str, release: threading.Event) -> Callable[..., Any]:
    """Echoes each message, but only once ``release`` is set: until then it
    takes no other message (a handler that fell behind, or is stuck)."""

    async def asyncio_slow(conn: Any) -> None:
        async for message in conn:
            while not release.is_set():
                await asyncio.sleep(0.01)
            conn.send(message, critical=True)

    async def trio_slow(conn: Any) -> None:
        async for message in conn:
            while not release.is_set():
                await trio.sleep(0.01)
            conn.send(message, critical=True)

    def selector_slow(conn: Any) -> None:
        for message in conn:
            release.wait(30)
            conn.send(message, critical=True)

    return {"asyncio": asyncio_slow, "trio": trio_slow, "selector": selector_slow}[driver]


def server_with(driver: str, handler: Callable[..., Any], **changes: object) -> ServerThread:
    values: dict[str, object] = {"heartbeat_interval": INTERVAL, "allow_no_origin": True}
    values.update(changes)
    server = SERVERS[driver](Config(**values), mode="echo")  # type: ignore[arg-type]
    server.custom_handler = handler  # type: ignore[attr-defined]
    return server


def _paused(server: ServerThread) -> tuple[bool, int]:
    """Whether the one connection's reading is paused, and its queue length."""

    def read() -> tuple[bool, int]:
        (wire,) = server.hub.connections
        return wire.reading_paused, wire.messages_waiting

    return server.call(read)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)  # polling a counter, bounded by the deadline above


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_a_handler_that_falls_behind_pauses_reading_and_blames_nobody(
    driver: str, release: threading.Event
) -> None:
    """200 messages to a handler that is stuck: the driver stops reading (the
    queue stays far below 200, the rest waits in the kernel), four heartbeat
    slots pass with pongs unread and nobody is terminated; released, every
    message is answered, in order, and reading is resumed."""
    # max_missed_pongs=6: four paused slots stay under the stalled-handler cap.
    with server_with(driver, slow_handler(driver, release), max_missed_pongs=6) as server:

        async def client() -> list[str]:
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/", ping_interval=None, max_queue=None
            ) as ws:
                for i in range(MESSAGES):
                    await ws.send(f"m{i}".ljust(SIZE, "."))
                await asyncio.to_thread(_wait, lambda: _paused(server)[0])
                start = server.metrics().loop_lag.count
                await asyncio.to_thread(_wait, lambda: server.metrics().loop_lag.count >= start + 4)
                paused, queued = _paused(server)
                assert paused
                assert queued < MESSAGES, "the driver kept reading its socket"
                assert server.metrics().terminations == {}
                release.set()
                echoes = [str(await ws.recv())[:5].rstrip(".") for _ in range(MESSAGES)]
                assert _paused(server) == (False, 0)
                return echoes

        assert asyncio.run(client()) == [f"m{i}" for i in range(MESSAGES)]


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_a_handler_stuck_for_the_detection_bound_is_closed_with_1013(
    driver: str, release: threading.Event
) -> None:
    """A handler that never takes another message keeps reading paused; after
    max_missed_pongs + 1 slots the connection closes with 1013 (try again
    later), cleanly: reading resumes so the peer's close frame is read."""
    with LogWatch() as logs, server_with(driver, slow_handler(driver, release)) as server:

        async def client() -> int | None:
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/", ping_interval=None, max_queue=None
            ) as ws:
                for i in range(MESSAGES):
                    await ws.send(f"m{i}".ljust(SIZE, "."))
                with pytest.raises(ConnectionClosed):
                    await _read_until_closed(ws)
                return ws.close_code

        assert asyncio.run(client()) == 1013
        logs.wait_for("cause=handler_stalled", 5)
        snapshot: MetricsSnapshot = server.metrics()
        assert snapshot.terminations == {}  # a clean close, not a drop
        release.set()


async def _read_until_closed(ws: websockets.ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


@pytest.mark.parametrize("driver", ["asyncio", "trio"])
def test_a_coroutine_handler_that_returns_closes_with_1000(driver: str) -> None:
    """On the drivers whose handler lives as long as its connection, returning
    ends the connection normally. (The selector's handler runs per burst:
    returning ends the burst, tests/drivers/test_selector.py.)"""

    async def one_reply(conn: Any) -> None:
        async for message in conn:
            conn.send(message)
            return

    with server_with(driver, one_reply) as server:

        async def client() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("once")
                assert await ws.recv() == "once"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code

        assert asyncio.run(client()) == 1000
