"""``wslifecycle serve --driver asyncio``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import cast

from wslifecycle import Config

from . import dashboard
from ._common import log
from ._pages import add_pages, announce_pages
from .asyncio import Handler, echo_handler, relay_handler, serve
from .cli import announce, listen_options, start_failed


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        factory = loop_factory(args.loop)
    except ImportError as missing:
        print(f"wslifecycle: --loop uvloop: {missing}; pip install uvloop", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(args, config))


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop when it is installed (``auto``) or
    asked for, else the standard one (None)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)
    return None


def describe_loop(loop: asyncio.AbstractEventLoop, choice: str) -> str:
    """Which loop runs, for the log: it changes what a heartbeat costs
    (docs/benchmarks.md)."""
    module = type(loop).__module__
    if module.startswith("uvloop"):
        version = getattr(sys.modules.get("uvloop"), "__version__", "")
        return f"uvloop {version}".strip()
    return "asyncio's standard loop" + (" (uvloop is not installed)" if choice == "auto" else "")


async def _serve(args: argparse.Namespace, config: Config) -> int:
    handler: Handler = relay_handler if args.mode == "relay" else echo_handler
    if args.dashboard:
        handler = dashboard.route_async(dashboard.Dashboard(), handler)
    try:
        server = await serve(handler, **listen_options(args), config=config)
    except (OSError, ValueError) as error:  # nothing was started: one line, no traceback
        return start_failed(args, error)
    add_pages(args, server.hub)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.begin_drain)
    address = None if args.unix else server.sockets[0].getsockname()[:2]
    announce(args, "asyncio", address, server.metrics_port)
    log.info("event loop: %s; %s", describe_loop(loop, args.loop), server.socket_reader)
    announce_pages(args, address)
    await server.serve_forever()
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
    return 0
