"""The asyncio driver's server, in a thread, for the conformance suite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from tests.drivers.harness import ServerThread
from wslifecycle.drivers.asyncio import Handler, _Polled

T = TypeVar("T")


class AsyncioServerThread(ServerThread):
    driver = "asyncio"
    #: A handler of the test's own instead of the relay or echo handler.
    custom_handler: Handler | None = None

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from wslifecycle.drivers.asyncio import echo_handler, relay_handler, serve

        self.loop = asyncio.get_running_loop()
        handler = self.custom_handler or (relay_handler if self.mode == "relay" else echo_handler)
        self.server = await serve(handler, **self.listen_args(), config=self.config)
        self._started(self.server)
        await self.server.serve_forever()

    def request_drain(self) -> None:
        self.loop.call_soon_threadsafe(self.server.begin_drain)

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def task_count(self) -> int:
        return self.call(lambda: len(asyncio.all_tasks(self.loop)))

    def _id_for_port(self, port: int) -> str | None:
        for wire, protocol in self.server._protocols.items():
            if isinstance(protocol, _Polled):  # read by the poller: the socket itself
                sock = protocol.sock
                peer = sock.getpeername() if sock.fileno() >= 0 else None
            elif protocol.transport is not None:
                peer = protocol.transport.get_extra_info("peername")
            else:
                peer = None
            if peer is not None and peer[1] == port:
                return wire.id
        return None


SERVER = AsyncioServerThread
