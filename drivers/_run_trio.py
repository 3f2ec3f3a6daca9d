"""``wslifecycle serve --driver trio``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial

import trio

from wslifecycle import Config

from .cli import start_failed
from .trio import Server, echo_handler, relay_handler, serve


def run(args: argparse.Namespace, config: Config) -> int:
    exit_status: int = trio.run(_serve, args, config)
    return exit_status


async def _serve(args: argparse.Namespace, config: Config) -> int:
    handler = relay_handler if args.mode == "relay" else echo_handler
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                server: Server = await nursery.start(
                    partial(serve, handler, args.host, args.port, config=config)
                )
            except (OSError, ValueError, BaseExceptionGroup) as error:
                # serve() failed before it started: nothing of it is left in
                # the nursery. The error may come wrapped in an exception group.
                return start_failed(args, error)
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
            async for _ in signals:
                server.begin_drain()
                break
            # serve() returns once drained, and the nursery with it.
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
    return 0
