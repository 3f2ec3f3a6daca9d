"""``wslifecycle serve --driver selector``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from wslifecycle import Config

from . import dashboard
from ._pages import add_pages, announce_pages
from .cli import announce, listen_options, start_failed
from .selector import Handler, echo_handler, relay_handler, serve


def run(args: argparse.Namespace, config: Config) -> int:
    handler: Handler = relay_handler if args.mode == "relay" else echo_handler
    if args.dashboard:
        handler = dashboard.route_threaded(dashboard.Dashboard(), handler)
    try:
        server = serve(handler, **listen_options(args), config=config, workers=args.workers)
    except (OSError, ValueError) as error:  # no thread was started: one line, no traceback
        return start_failed(args, error)
    server.call(lambda: add_pages(args, server.hub))

    def request_drain(signum: int, frame: FrameType | None) -> None:
        server.begin_drain()  # takes no lock: the I/O thread drains

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_drain)
    address = None if args.unix else server.sockets[0].getsockname()[:2]
    announce(args, "selector", address, server.metrics_port)
    announce_pages(args, address)
    # The main thread only waits (signal handlers run here); lock waits are
    # interrupted by signals on POSIX, so SIGTERM is handled at once.
    drained = server.wait_drained()
    server.close()
    if not drained:
        print("wslifecycle: the I/O thread failed", file=sys.stderr, flush=True)
        return 1
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
    return 0
