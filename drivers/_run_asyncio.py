"""``wslifecycle serve --driver asyncio``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from wslifecycle import Config

from . import dashboard
from .asyncio import Handler, echo_handler, relay_handler, serve


def run(args: argparse.Namespace, config: Config) -> int:
    asyncio.run(_serve(args, config))
    return 0


async def _serve(args: argparse.Namespace, config: Config) -> None:
    handler: Handler = relay_handler if args.mode == "relay" else echo_handler
    if args.dashboard:
        handler = dashboard.route_async(dashboard.Dashboard(), handler)
    server = await serve(handler, args.host, args.port, config=config)
    if args.dashboard:
        dashboard.add_page(server.hub)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.begin_drain)
    host, port = server.sockets[0].getsockname()[:2]
    # One line on stdout, so scripts and tests learn the port (with --port 0).
    print(f"wslifecycle: serving {args.mode} on ws://{host}:{port} (driver asyncio)", flush=True)
    if args.dashboard:
        dashboard.announce(host, port)
    await server.serve_forever()
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
