"""The built-in handlers of ``wslifecycle serve`` (echo, relay) run where the
asyncio driver reads, with no task per connection; a handler of the
application's own keeps its task. Real sockets, the websockets client."""

from __future__ import annotations

import asyncio
import json

import websockets

from wslifecycle import Config
from wslifecycle.drivers.asyncio import Connection, echo_handler, relay_handler, serve

CONFIG = Config(allow_no_origin=True)


def test_echo_and_relay_answer_without_a_task_per_connection() -> None:
    async def main() -> None:
        for handler in (echo_handler, relay_handler):
            async with serve(handler, "127.0.0.1", 0, config=CONFIG) as server:
                url = f"ws://127.0.0.1:{server.port}/"
                async with websockets.connect(url) as a, websockets.connect(url) as b:
                    await a.send("plain text")
                    assert await asyncio.wait_for(a.recv(), 5) == "plain text"
                    if handler is relay_handler:
                        await b.send(json.dumps({"type": "subscribe", "channel": "c"}))
                        assert json.loads(await asyncio.wait_for(b.recv(), 5))["type"] == (
                            "subscribed"
                        )
                    else:
                        await b.send(b"\x00" * 70_000)  # a message over several reads
                        assert await asyncio.wait_for(b.recv(), 5) == b"\x00" * 70_000
                    assert server._tasks == set()  # no handler task for either

    asyncio.run(main())


def test_an_application_handler_keeps_its_task() -> None:
    async def handler(conn: Connection) -> None:
        async for message in conn:
            conn.send(message)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, config=CONFIG) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with websockets.connect(url) as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 5) == "hi"
                assert len(server._tasks) == 1

    asyncio.run(main())
