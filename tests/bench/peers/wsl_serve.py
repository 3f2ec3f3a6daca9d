"""``wslifecycle serve`` with the benchmark's lag probe beside it.

    python -m tests.bench.peers.wsl_serve <wslifecycle serve arguments>

This runs the real command line (``wslifecycle.drivers.cli.main``: the same
parser, configuration and ``drivers/_run_<driver>.py`` start-up) and only
adds the probe of :mod:`tests.bench.peers.lagprobe` to the driver's event
loop, so every benchmarked server is probed the same way. The driver's
``_serve`` coroutine is wrapped (asyncio, Trio); a driver without one of its
own (the threaded selector driver) gets the thread probe. The asyncio
driver's loop is the command line's ``--loop`` (the benchmark names it).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from tests.bench.peers.lagprobe import asyncio_probe, start_thread_probe, trio_probe


def _wrap_asyncio(module: Any) -> None:
    original = module._serve

    async def serve_with_probe(*args: Any) -> None:
        probe = asyncio.get_running_loop().create_task(asyncio_probe())
        try:
            await original(*args)
        finally:
            probe.cancel()

    module._serve = serve_with_probe


def _wrap_trio(module: Any) -> None:
    import trio

    original = module._serve

    async def serve_with_probe(*args: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_probe)
            await original(*args)
            nursery.cancel_scope.cancel()

    module._serve = serve_with_probe


def main(argv: Sequence[str] | None = None) -> int:
    from wslifecycle.drivers import cli

    arguments = list(sys.argv[1:] if argv is None else argv)
    driver = cli.parser().parse_args(arguments).driver
    try:
        module: Any = importlib.import_module(f"wslifecycle.drivers._run_{driver}")
    except ImportError as error:
        print(f"wsl_serve: driver {driver} is not available: {error}", file=sys.stderr)
        return 2
    if driver == "asyncio":
        _wrap_asyncio(module)
    elif driver == "trio":
        _wrap_trio(module)
    else:
        start_thread_probe()
    return cli.main(arguments)


if __name__ == "__main__":
    raise SystemExit(main())
