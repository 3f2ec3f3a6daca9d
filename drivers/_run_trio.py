"""``wslifecycle serve --driver trio``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial

import trio

from wslifecycle import Config

from . import dashboard
from .trio import Handler, Server, echo_handler, relay_handler, serve


def run(args: argparse.Namespace, config: Config) -> int:
    trio.run(_serve, args, config)
    return 0


async def _serve(args: argparse.Namespace, config: Config) -> None:
    handler: Handler = relay_handler if args.mode == "relay" else echo_handler
    if args.dashboard:
        handler = dashboard.route_async(dashboard.Dashboard(), handler)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                partial(serve, handler, args.host, args.port, config=config)
            )
            if args.dashboard:
                dashboard.add_page(server.hub)
            host = next(
                listener.socket.getsockname()[0]
                for listener in server.listeners
                if isinstance(listener, trio.SocketListener)
            )
            # One line on stdout, so scripts and tests learn the port (with --port 0).
            print(
                f"wslifecycle: serving {args.mode} on ws://{host}:{server.port} (driver trio)",
                flush=True,
            )
            if args.dashboard:
                dashboard.announce(host, server.port)
            async for _ in signals:
                server.begin_drain()
                break
            # serve() returns once drained, and the nursery with it.
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
