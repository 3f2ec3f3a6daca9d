"""``wslifecycle serve``: the pub/sub relay (or an echo server) on any driver.

    wslifecycle serve --port 8765 --heartbeat-interval 30 --allow-no-origin
    wslifecycle serve --certfile cert.pem --keyfile key.pem --metrics-port 9100
    wslifecycle serve --unix /run/wslifecycle.sock

Runs until SIGTERM or SIGINT, then drains (new handshakes get 503, every
connection is closed with 1001, stragglers are terminated at the drain
deadline) and exits 0. A configuration error exits 2 naming the field.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from wslifecycle import Config, ConfigError, HeartbeatMode, __version__

from ._tls import server_context

__all__ = ["announce", "build_config", "listen_options", "main", "parser"]

DRIVERS = ("asyncio", "selector", "trio")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="wslifecycle", description="Server-side WebSocket connections that stay honest."
    )
    top.add_argument("--version", action="version", version=f"wslifecycle {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the pub/sub relay (or an echo server)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = serve.add_argument
    add(
        "--host",
        default="127.0.0.1",
        help="address of the TCP listeners, --port and --metrics-port (default: 127.0.0.1)",
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--port", type=int, default=8765, help="port to listen on; 0 picks one (default: 8765)"
    )
    where.add_argument(
        "--unix", metavar="PATH", help="listen on this unix domain socket instead of --port"
    )
    add(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve /healthz and /metrics (nothing else, plain HTTP) on this port of --host",
    )
    add("--certfile", metavar="PATH", help="serve wss://: the PEM certificate chain (and key)")
    add("--keyfile", metavar="PATH", help="the PEM private key, if not in --certfile")
    add("--driver", choices=DRIVERS, default="asyncio", help="I/O driver (default: asyncio)")
    add(
        "--workers",
        type=int,
        default=min(32, (os.cpu_count() or 1) + 4),
        metavar="N",
        help="handler threads of the selector driver (default: min(32, CPUs + 4))",
    )
    add(
        "--mode",
        choices=("relay", "echo"),
        default="relay",
        help="relay: the JSON pub/sub protocol (other messages echoed); echo: echo all",
    )
    add("--heartbeat-interval", type=float, default=30.0, metavar="SECONDS")
    add("--max-missed-pongs", type=int, default=2, metavar="N")
    add(
        "--heartbeat-mode",
        choices=[m.value for m in HeartbeatMode],
        default="protocol",
        help="protocol pings, a JSON heartbeat the client echoes, or both",
    )
    add("--activity-is-liveness", action="store_true", help="inbound messages prove liveness")
    add("--stall-threshold", type=float, default=None, metavar="SECONDS")
    add(
        "--timer-slack",
        type=float,
        default=None,
        metavar="SECONDS",
        help="coalesce deadlines on this grid (default: min(interval/100, 0.02))",
    )
    add(
        "--proxy-idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the idle timeout of the proxy in front (e.g. nginx proxy_read_timeout);"
        " refuse to start unless the heartbeat interval is below it",
    )
    add(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an allowed Origin, e.g. https://app.example.com (repeatable)",
    )
    add("--allow-no-origin", action="store_true", help="accept clients that send no Origin")
    add(
        "--trust-proxy",
        action="append",
        nargs="?",
        const="loopback",
        default=[],
        metavar="ADDR",
        help="read the client's address from Forwarded / X-Forwarded-For when the peer is"
        " this proxy: an IP, a network (10.0.0.0/8), 'unix'; alone: loopback and unix"
        " (repeatable)",
    )
    add("--max-message-size", type=int, default=1024 * 1024, metavar="BYTES")
    add("--max-fragments", type=int, default=1024, metavar="N")
    add("--write-buffer-guard", type=int, default=1024 * 1024, metavar="BYTES")
    add(
        "--max-write-buffer",
        type=int,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="a peer this far behind is terminated as a slow consumer",
    )
    add(
        "--inbox-high-water",
        type=int,
        default=64,
        metavar="N",
        help="messages queued for a handler before its socket stops being read",
    )
    add(
        "--inbox-low-water",
        type=int,
        default=16,
        metavar="N",
        help="reading resumes once the handler is down to this many",
    )
    add("--max-connections", type=int, default=None, metavar="N", help="more get HTTP 503")
    add("--handshake-timeout", type=float, default=10.0, metavar="SECONDS")
    add("--close-timeout", type=float, default=10.0, metavar="SECONDS")
    add("--drain-timeout", type=float, default=10.0, metavar="SECONDS")
    add("--compression", action="store_true", help="negotiate permessage-deflate")
    add(
        "--dashboard",
        action="store_true",
        help="serve the operator's page at /dashboard (its live feed is a WebSocket there)",
    )
    add(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="stdlib logging level (default: info)",
    )
    return top


def build_config(args: argparse.Namespace) -> Config:
    return Config(
        heartbeat_interval=args.heartbeat_interval,
        max_missed_pongs=args.max_missed_pongs,
        heartbeat_mode=HeartbeatMode(args.heartbeat_mode),
        activity_is_liveness=args.activity_is_liveness,
        stall_threshold=args.stall_threshold,
        proxy_idle_timeout=args.proxy_idle_timeout,
        timer_slack=args.timer_slack,
        allowed_origins=frozenset(args.allow_origin),
        allow_no_origin=args.allow_no_origin,
        trusted_proxies=frozenset(args.trust_proxy),
        max_message_size=args.max_message_size,
        max_fragments=args.max_fragments,
        write_buffer_guard=args.write_buffer_guard,
        max_write_buffer=args.max_write_buffer,
        inbox_high_water=args.inbox_high_water,
        inbox_low_water=args.inbox_low_water,
        max_connections=args.max_connections,
        handshake_timeout=args.handshake_timeout,
        close_timeout=args.close_timeout,
        drain_timeout=args.drain_timeout,
        compression=args.compression,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as error:
        print(f"wslifecycle: configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if args.keyfile and not args.certfile:
        print("wslifecycle: --keyfile needs --certfile", file=sys.stderr)
        return 2
    try:
        args.ssl = server_context(args.certfile, args.keyfile) if args.certfile else None
    except OSError as error:  # ssl.SSLError included
        print(f"wslifecycle: cannot use the certificate: {error}", file=sys.stderr)
        return 2
    try:
        runner = _runner(args.driver)
    except ImportError as error:
        print(f"wslifecycle: driver {args.driver} is not available: {error}", file=sys.stderr)
        return 2
    return runner(args, config)


def listen_options(args: argparse.Namespace) -> dict[str, Any]:
    """serve()'s listener arguments from the flags: ``--unix`` replaces
    ``--port``; ``--host`` is where the TCP listeners bind."""
    options: dict[str, Any] = {"ssl": args.ssl, "metrics_port": args.metrics_port}
    if args.unix is None:
        options.update(host=args.host, port=args.port)
    else:
        options["unix_path"] = args.unix
        if args.metrics_port is not None:
            options["host"] = args.host
    return options


def announce(
    args: argparse.Namespace, driver: str, address: tuple[str, int] | None, metrics_port: int | None
) -> None:
    """The lines on stdout that tell scripts and tests where the server
    listens (the ports, with ``--port 0``); ``address`` is None on a unix socket."""
    scheme = "wss" if args.ssl is not None else "ws"
    if address is None:
        where = f"{scheme}+unix:{args.unix}"
    else:
        where = f"{scheme}://{_host(address[0])}:{address[1]}"
    print(f"wslifecycle: serving {args.mode} on {where} (driver {driver})", flush=True)
    if metrics_port is not None:
        metrics = f"http://{_host(args.host)}:{metrics_port}/metrics"
        print(f"wslifecycle: metrics on {metrics}", flush=True)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _runner(driver: str) -> Callable[[argparse.Namespace, Config], int]:
    """``drivers/_run_<driver>.py``'s ``run``, imported on demand (the trio
    driver needs the optional trio package)."""
    module = importlib.import_module(f"wslifecycle.drivers._run_{driver}")
    run: Callable[[argparse.Namespace, Config], int] = module.run
    return run


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
