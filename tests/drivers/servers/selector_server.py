"""The selector driver's server, in a thread, for the conformance suite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from tests.drivers.harness import ServerThread
from wslifecycle.drivers.selector import Handler, Server

T = TypeVar("T")

#: Handler threads for the tests: few, so a leak or a stuck run shows.
WORKERS = 4


class SelectorServerThread(ServerThread):
    driver = "selector"
    #: A handler of the test's own instead of the relay or echo handler.
    custom_handler: Handler | None = None
    workers = WORKERS
    server: Server

    def __enter__(self) -> SelectorServerThread:  # typed for the tests' own use
        self.start()
        return self

    def run(self) -> None:
        from wslifecycle.drivers.selector import echo_handler, relay_handler, serve

        handler = self.custom_handler or (relay_handler if self.mode == "relay" else echo_handler)
        self.server = serve(handler, **self.listen_args(), config=self.config, workers=self.workers)
        self._started(self.server)
        drained = self.server.wait_drained()
        self.server.close()
        if not drained:
            raise RuntimeError("the selector I/O thread ended without draining")

    def request_drain(self) -> None:
        self.server.begin_drain()

    def call(self, fn: Callable[[], T]) -> T:
        return self.server.call(fn)

    def thread_count(self) -> int:
        """Live threads in the whole process: a thread per connection, or one
        left behind by a handler run, would show here."""
        return threading.active_count()

    def _id_for_port(self, port: int) -> str | None:
        for wire, transport in self.server._transports.items():
            if isinstance(transport.peer, tuple) and transport.peer[1] == port:
                return wire.id
        return None


SERVER = SelectorServerThread
