"""The event-loop lag probe, the same in every benchmarked server.

A timer asks to wake up every 10 ms and records how late it fired; once a
second the samples go to stdout as one line ``LAG <µs>,<µs>,...``, which the
benchmark collects with the time it read them. The Node.js server
(``tests/bench/node/ws_server.js``) does the same with ``setTimeout``.

Each probe costs the server about 100 wake-ups a second, the same for all.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable

PERIOD = 0.010


class _Samples:
    __slots__ = ("report_at", "values")

    def __init__(self) -> None:
        self.values: list[int] = []
        self.report_at = time.monotonic() + 1.0

    def add(self, lateness: float, now: float) -> None:
        self.values.append(max(0, int(lateness * 1e6)))
        if now >= self.report_at:
            sys.stdout.write("LAG " + ",".join(map(str, self.values)) + "\n")
            sys.stdout.flush()
            self.values = []
            self.report_at = now + 1.0


async def _probe(sleep: Callable[[float], Awaitable[None]]) -> None:
    samples = _Samples()
    while True:
        start = time.monotonic()
        await sleep(PERIOD)
        now = time.monotonic()
        samples.add(now - start - PERIOD, now)


async def asyncio_probe() -> None:
    """Run forever on the current asyncio loop (cancel to stop)."""
    await _probe(asyncio.sleep)


async def trio_probe() -> None:
    """Run forever in the current Trio run (cancel to stop)."""
    import trio

    await _probe(trio.sleep)


def start_thread_probe() -> None:
    """For a driver with no event loop of ours to join (threads): a daemon
    thread that sleeps 10 ms at a time. It measures scheduling and GIL
    delays, not a loop's; the table says so."""

    def run() -> None:
        samples = _Samples()
        while True:
            start = time.monotonic()
            time.sleep(PERIOD)
            now = time.monotonic()
            samples.add(now - start - PERIOD, now)

    threading.Thread(target=run, name="lag-probe", daemon=True).start()
