"""Call a driver's ``serve()`` in the test's own thread and stop it at once:
for what happens before serving (argument checks, binding, socket files).
An error raised by ``serve()`` reaches the caller as it was raised."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import trio

from wslifecycle import Config
from wslifecycle.drivers import asyncio as asyncio_driver
from wslifecycle.drivers import selector as selector_driver
from wslifecycle.drivers import trio as trio_driver

CONFIG = Config(allow_no_origin=True)


def serve_once(driver: str, *args: Any, **kwargs: Any) -> None:
    """``serve(echo_handler, *args, **kwargs)`` on ``driver``, then stop."""
    {"asyncio": _asyncio, "selector": _selector, "trio": _trio}[driver](*args, **kwargs)


def _asyncio(*args: Any, **kwargs: Any) -> None:
    async def main() -> None:
        server = await asyncio_driver.serve(
            asyncio_driver.echo_handler, *args, config=CONFIG, **kwargs
        )
        await server.aclose()

    asyncio.run(main())


def _selector(*args: Any, **kwargs: Any) -> None:
    server = selector_driver.serve(
        selector_driver.echo_handler, *args, config=CONFIG, workers=1, **kwargs
    )
    server.close()


def _trio(*args: Any, **kwargs: Any) -> None:
    raised: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            try:
                server: trio_driver.Server = await nursery.start(
                    partial(
                        trio_driver.serve, trio_driver.echo_handler, *args, config=CONFIG, **kwargs
                    )
                )
            except Exception as error:  # what serve() raised, unwrapped
                raised.append(error)
                return
            server.begin_drain()  # no connections: serve() returns at once

    trio.run(main)
    if raised:
        raise raised[0]
