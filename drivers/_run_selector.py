"""``wslifecycle serve --driver selector``: start, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from wslifecycle import Config

from .cli import start_failed
from .selector import echo_handler, relay_handler, serve


def run(args: argparse.Namespace, config: Config) -> int:
    handler = relay_handler if args.mode == "relay" else echo_handler
    try:
        server = serve(handler, args.host, args.port, config=config, workers=args.workers)
    except (OSError, ValueError) as error:  # no thread was started: one line, no traceback
        return start_failed(args, error)

    def request_drain(signum: int, frame: FrameType | None) -> None:
        server.begin_drain()  # takes no lock: the I/O thread drains

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_drain)
    host, port = server.sockets[0].getsockname()[:2]
    # One line on stdout, so scripts and tests learn the port (with --port 0).
    print(f"wslifecycle: serving {args.mode} on ws://{host}:{port} (driver selector)", flush=True)
    # The main thread only waits (signal handlers run here); lock waits are
    # interrupted by signals on POSIX, so SIGTERM is handled at once.
    drained = server.wait_drained()
    server.close()
    if not drained:
        print("wslifecycle: the I/O thread failed", file=sys.stderr, flush=True)
        return 1
    print("wslifecycle: drained, exiting", file=sys.stderr, flush=True)
    return 0
