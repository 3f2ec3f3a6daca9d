"""The Trio driver's server, in a thread, for the conformance suite."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TypeVar

import trio
import trio.testing

from tests.drivers.harness import ServerThread
from wslifecycle.drivers.trio import Handler, Server, echo_handler, relay_handler, serve

T = TypeVar("T")


class TrioServerThread(ServerThread):
    driver = "trio"
    #: A handler of the test's own instead of the relay or echo handler.
    custom_handler: Handler | None = None

    def run(self) -> None:
        trio.run(self._serve)

    async def _serve(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        handler = self.custom_handler or (relay_handler if self.mode == "relay" else echo_handler)
        async with trio.open_nursery() as nursery:
            self.server: Server = await nursery.start(
                partial(serve, handler, **self.listen_args(), config=self.config)
            )
            self._started(self.server)

    def request_drain(self) -> None:
        trio.from_thread.run_sync(self.server.begin_drain, trio_token=self.token)

    def call(self, fn: Callable[[], T]) -> T:
        return trio.from_thread.run_sync(fn, trio_token=self.token)

    def task_count(self) -> int:
        """Every task in the Trio run, counted once every task is blocked (a
        connection's tasks finish a few scheduling steps after its socket is
        closed, and a count taken in between would see them)."""

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(
                count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
            )

        async def settled() -> int:
            await trio.testing.wait_all_tasks_blocked()
            root = trio.lowlevel.current_root_task()
            assert root is not None
            return count(root) - 1  # not this helper's own task

        return trio.from_thread.run(settled, trio_token=self.token)

    def _id_for_port(self, port: int) -> str | None:
        for transport in list(self.server._transports.values()):
            sock = transport.sock
            if sock is not None:
                try:
                    peer = sock.getpeername()
                except OSError:
                    continue
                if peer[1] == port:
                    return transport.conn.id
        return None


SERVER = TrioServerThread
