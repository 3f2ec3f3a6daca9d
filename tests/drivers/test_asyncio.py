"""What is specific to the asyncio driver: handler failures, a handler that
falls behind (reading pauses and nobody is blamed), the metrics hint."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.drivers.harness import LogWatch
from tests.drivers.servers.asyncio_server import AsyncioServerThread
from wslifecycle import Config, MetricsSnapshot
from wslifecycle.drivers import asyncio as driver
from wslifecycle.drivers._common import prometheus_exporter

INTERVAL = 0.3


def server_with(handler: driver.Handler, **changes: object) -> AsyncioServerThread:
    values: dict[str, object] = {"heartbeat_interval": INTERVAL, "allow_no_origin": True}
    values.update(changes)
    server = AsyncioServerThread(Config(**values))  # type: ignore[arg-type]
    server.custom_handler = handler
    return server


def test_a_handler_that_raises_closes_with_1011_and_is_logged() -> None:
    """Handler exceptions close with 1011 and are logged with their traceback."""

    async def broken(conn: driver.Connection) -> None:
        async for message in conn:
            raise ValueError(f"cannot handle {message!r}")

    with LogWatch() as logs, server_with(broken) as server:

        async def client() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("boom")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code

        assert asyncio.run(client()) == 1011
        logs.wait_for("handler failed connection=", 5)
        logs.wait_for("cause=handler_error", 5)


def test_a_handler_that_returns_closes_with_1000() -> None:
    """When the handler returns, the connection is closed normally."""

    async def one_reply(conn: driver.Connection) -> None:
        async for message in conn:
            conn.send(message)
            return

    with server_with(one_reply) as server:

        async def client() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("once")
                assert await ws.recv() == "once"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code

        assert asyncio.run(client()) == 1000


def test_a_handler_that_falls_behind_pauses_reading_and_blames_nobody() -> None:
    """Messages queue up, reading pauses, and for four heartbeat intervals
    with unread pongs nobody is terminated; once the handler catches up,
    every message is answered, in order."""
    release = asyncio.Event()

    async def slow(conn: driver.Connection) -> None:
        async for message in conn:
            await release.wait()
            conn.send(message, critical=True)

    # max_missed_pongs=6: four paused slots stay under the stalled-handler cap.
    with server_with(slow, max_missed_pongs=6) as server:

        def paused() -> bool:
            return any(c.wire.lifecycle.reading_paused for c in server.server._connections)

        def ticks() -> int:  # called from the test thread: metrics() enters the loop
            return server.metrics().loop_lag.count

        async def client() -> list[str]:
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/", ping_interval=None, max_queue=None
            ) as ws:
                for i in range(200):
                    await ws.send(f"m{i}")
                deadline = time.monotonic() + 10
                while not server.call(paused):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)  # polling a flag, bounded above
                start = ticks()
                while ticks() < start + 4:  # four heartbeat ticks pass
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                assert server.metrics().terminations == {}
                server.loop.call_soon_threadsafe(release.set)
                return [str(await ws.recv()) for _ in range(200)]

        assert asyncio.run(client()) == [f"m{i}" for i in range(200)]
        assert not server.call(paused)


def test_a_handler_stuck_for_the_detection_bound_is_closed_with_1013() -> None:
    """A handler that never takes another message holds reading paused; after
    max_missed_pongs + 1 slots the connection is closed with 1013 (try again
    later), cleanly: reading resumes so the peer's close frame is read."""
    never = asyncio.Event()

    async def stuck(conn: driver.Connection) -> None:
        async for _ in conn:
            await never.wait()

    with LogWatch() as logs, server_with(stuck) as server:

        async def client() -> int | None:
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/", ping_interval=None, max_queue=None
            ) as ws:
                for i in range(200):
                    await ws.send(f"m{i}")
                with pytest.raises(ConnectionClosed):
                    await _read_until_closed(ws)
                return ws.close_code

        assert asyncio.run(client()) == 1013
        logs.wait_for("cause=handler_stalled", 5)
        assert server.metrics().terminations == {}  # a clean close, not a drop
        server.loop.call_soon_threadsafe(never.set)


async def _read_until_closed(ws: websockets.ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


def test_without_prometheus_client_metrics_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/metrics without the optional package answers 501 with the pip command."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    status, content_type, body = prometheus_exporter()(_snapshot())
    assert status == 501
    assert b"pip install 'wslifecycle[prometheus]'" in body
    assert content_type.startswith("text/plain")


def _snapshot() -> MetricsSnapshot:
    from wslifecycle import Metrics

    return Metrics().snapshot()
