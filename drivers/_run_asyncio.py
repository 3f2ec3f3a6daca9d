"""``wslifecycle serve --driver asyncio``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from wslifecycle import Config

from .asyncio import echo_handler, relay_handler, serve
from .cli import start_failed


def run(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_serve(args, config))


async def _serve(args: argparse.Namespace, config: Config) -> int:
    handler = relay_handler if args.mode == "relay" else echo_handler
    try:
        server = await serve(handler, args.host, args.port, config=config)
    except (OSError, ValueError) as error:  # nothing was started: one line, no traceback
        return start_failed(args, error)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.begin_drain)
    host, port = server.sockets[0].getsockname()[:2]
    # One line on stdout, so scripts and tests learn the port (with --port 0).
    print(f"wslifecycle: serving {args.mode} on ws://{host}:{port} (driver asyncio)", flush=True)
    await server.serve_forever()
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
    return 0
