"""``wslifecycle serve --driver trio``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial

import trio

from wslifecycle import Config

from . import dashboard
from ._pages import add_pages, announce_pages
from .cli import announce, listen_options, start_failed
from .trio import Handler, Server, echo_handler, relay_handler, serve


def run(args: argparse.Namespace, config: Config) -> int:
    exit_status: int = trio.run(_serve, args, config)
    return exit_status


async def _serve(args: argparse.Namespace, config: Config) -> int:
    handler: Handler = relay_handler if args.mode == "relay" else echo_handler
    if args.dashboard:
        handler = dashboard.route_async(dashboard.Dashboard(), handler)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                server: Server = await nursery.start(
                    partial(serve, handler, **listen_options(args), config=config)
                )
            except (OSError, ValueError, BaseExceptionGroup) as error:
                # serve() failed before it started: nothing of it is left in
                # the nursery. The error may come wrapped in an exception group.
                return start_failed(args, error)
            add_pages(args, server.hub)
            address = None if args.unix else server.sockets[0].getsockname()[:2]
            announce(args, "trio", address, server.metrics_port)
            announce_pages(args, address)
            async for _ in signals:
                server.begin_drain()
                break
            # serve() returns once drained, and the nursery with it.
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
    return 0
