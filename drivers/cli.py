"""``wslifecycle serve``: the pub/sub relay (or an echo server) on any driver.
(``wslifecycle probe URL`` checks a server's liveness detection: drivers/probe.py.)

    wslifecycle serve --port 8765 --heartbeat-interval 30 --allow-no-origin
    wslifecycle serve --certfile cert.pem --keyfile key.pem --metrics-port 9100
    wslifecycle serve --unix /run/wslifecycle.sock

Runs until SIGTERM or SIGINT, then drains (new handshakes get 503, every
connection is closed with 1001, stragglers are terminated at the drain
deadline) and exits 0. Every error is one line on stderr: a bad argument or
configuration exits 2 naming the flag, a port it cannot listen on exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from wslifecycle import Config, ConfigError, HeartbeatMode, __version__
from wslifecycle.config import SLACK_CAP, SLACK_DIVISOR, STALL_CAP, STALL_DIVISOR

from . import probe as _probe
from ._tls import server_context

__all__ = ["announce", "build_config", "listen_options", "main", "parser", "start_failed"]

DRIVERS = ("asyncio", "selector", "trio")
#: Drivers that need an optional package: driver → (module, extra).
_OPTIONAL = {"trio": ("trio", "trio")}
#: Where a Config field's flag is not the field's own name, dashed.
_FLAG_OF_FIELD = {
    "allowed_origins": "--allow-origin",
    "trusted_proxies": "--trust-proxy",
    "redis_url": "--redis",
}

_DEFAULTS = Config()


class _Parser(argparse.ArgumentParser):
    """argparse, but a refusal is its one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    port = _integer(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {text}")
    return port


def _at_least_one(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="wslifecycle", description="Server-side WebSocket connections that stay honest."
    )
    top.add_argument("--version", action="version", version=f"wslifecycle {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the pub/sub relay (or an echo server)",
        description=(__doc__ or "").replace("``", ""),  # the help is plain text
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = serve.add_argument
    add(
        "--host",
        default="127.0.0.1",
        help="address of the TCP listeners, --port and --metrics-port (default: %(default)s)",
    )
    where = serve.add_mutually_exclusive_group()
    where.add_argument(
        "--port",
        type=_port,
        default=8765,
        help="port to listen on; 0 picks one (default: %(default)s)",
    )
    where.add_argument(
        "--unix", metavar="PATH", help="listen on this unix domain socket instead of --port"
    )
    add(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="also serve /healthz and /metrics (nothing else, plain HTTP) on this port of --host",
    )
    add("--certfile", metavar="PATH", help="serve wss://: the PEM certificate chain (and key)")
    add("--keyfile", metavar="PATH", help="the PEM private key, if not in --certfile")
    add("--driver", choices=DRIVERS, default="asyncio", help="I/O driver (default: %(default)s)")
    add(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the asyncio driver's event loop: auto = uvloop when it is installed, else the"
        " standard loop (default: %(default)s)",
    )
    add(
        "--workers",
        type=_at_least_one,
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
    # Config's own flags: the defaults are Config's, and Config checks the values.
    add(
        "--heartbeat-interval",
        type=float,
        default=_DEFAULTS.heartbeat_interval,
        metavar="SECONDS",
        help="between two probes of a connection (default: %(default)s)",
    )
    add(
        "--max-missed-pongs",
        type=int,
        default=_DEFAULTS.max_missed_pongs,
        metavar="N",
        help="unanswered probes tolerated (default: %(default)s)",
    )
    add(
        "--heartbeat-mode",
        choices=[m.value for m in HeartbeatMode],
        default=_DEFAULTS.heartbeat_mode.value,
        help="protocol pings, a JSON heartbeat the client echoes, or both (default: %(default)s)",
    )
    add("--activity-is-liveness", action="store_true", help="inbound messages prove liveness")
    add(
        "--stall-threshold",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a later timer tick is a local stall that blames no peer"
        f" (default: min(interval/{STALL_DIVISOR}, {STALL_CAP}))",
    )
    add(
        "--timer-slack",
        type=float,
        default=None,
        metavar="SECONDS",
        help="coalesce deadlines on this grid; 0 turns it off"
        f" (default: min(interval/{SLACK_DIVISOR}, {SLACK_CAP}))",
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
        dest="allowed_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an allowed Origin, e.g. https://app.example.com (repeatable)",
    )
    add(
        "--allow-no-origin",
        action="store_true",
        help="accept clients that send no Origin (non-browser ones; else they get 403)",
    )
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
    add(
        "--max-message-size",
        type=int,
        default=_DEFAULTS.max_message_size,
        metavar="BYTES",
        help="largest message, across fragments (default: %(default)s)",
    )
    add(
        "--max-fragments",
        type=int,
        default=_DEFAULTS.max_fragments,
        metavar="N",
        help="most frames per message (default: %(default)s)",
    )
    add(
        "--write-buffer-guard",
        type=int,
        default=_DEFAULTS.write_buffer_guard,
        metavar="BYTES",
        help="above it non-critical sends are skipped (default: %(default)s)",
    )
    add(
        "--max-write-buffer",
        type=int,
        default=_DEFAULTS.max_write_buffer,
        metavar="BYTES",
        help="a peer this far behind is terminated as a slow consumer (default: %(default)s)",
    )
    add(
        "--inbox-high-water",
        type=int,
        default=_DEFAULTS.inbox_high_water,
        metavar="N",
        help="messages queued for a handler before its socket stops being read"
        " (default: %(default)s)",
    )
    add(
        "--inbox-low-water",
        type=int,
        default=_DEFAULTS.inbox_low_water,
        metavar="N",
        help="reading resumes once the handler is down to this many (default: %(default)s)",
    )
    add(
        "--max-connections",
        type=int,
        default=_DEFAULTS.max_connections,
        metavar="N",
        help="more get HTTP 503 (default: no limit)",
    )
    add(
        "--handshake-timeout",
        type=float,
        default=_DEFAULTS.handshake_timeout,
        metavar="SECONDS",
        help="from accept to a completed upgrade (default: %(default)s)",
    )
    add(
        "--close-timeout",
        type=float,
        default=_DEFAULTS.close_timeout,
        metavar="SECONDS",
        help="from the start of a close to CLOSED (default: %(default)s)",
    )
    add(
        "--drain-timeout",
        type=float,
        default=_DEFAULTS.drain_timeout,
        metavar="SECONDS",
        help="a SIGTERM drain waits this long, then terminates (default: %(default)s)",
    )
    add("--compression", action="store_true", help="negotiate permessage-deflate")
    add(
        "--redis",
        dest="redis_url",
        metavar="URL",
        help="join a fleet of nodes on this Redis (redis://HOST:PORT/DB, rediss://, unix://);"
        " default: one node, channels in memory",
    )
    add(
        "--history-size",
        type=int,
        default=_DEFAULTS.history_size,
        metavar="N",
        help="messages per channel kept for resume with since (default: %(default)s)",
    )
    add(
        "--history-ttl",
        type=float,
        default=_DEFAULTS.history_ttl,
        metavar="SECONDS",
        help="how long a message stays in history (default: %(default)s)",
    )
    add(
        "--presence-ttl",
        type=float,
        default=_DEFAULTS.presence_ttl,
        metavar="SECONDS",
        help="a node's presence lease in Redis, renewed every third of it: a dead node's"
        " members are gone within this (default: %(default)s)",
    )
    add(
        "--dashboard",
        action="store_true",
        help="serve the operator's page at /dashboard (its live feed is a WebSocket there)",
    )
    add(
        "--serve-client",
        action="store_true",
        help="serve the browser client module (one ES module, no dependencies) at /client.js",
    )
    add(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="stdlib logging level (default: %(default)s)",
    )
    probe = commands.add_parser(
        "probe",
        help="check a WebSocket server's liveness detection from outside",
        description=(_probe.__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _probe.add_arguments(probe)
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
        allowed_origins=frozenset(args.allowed_origins),
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
        history_size=args.history_size,
        history_ttl=args.history_ttl,
        presence_ttl=args.presence_ttl,
        redis_url=args.redis_url,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "probe":
        return _probe.main(args)
    try:
        config = build_config(args)
    except ConfigError as error:
        print(f"wslifecycle: configuration error: {_in_flags(error, args)}", file=sys.stderr)
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
    if config.redis_url is not None and importlib.util.find_spec("redis") is None:
        print(
            "wslifecycle: --redis needs redis-py: pip install 'wslifecycle[redis]'", file=sys.stderr
        )
        return 2
    try:
        runner = _runner(args.driver)
    except ImportError as error:
        print(f"wslifecycle: {_unavailable(args.driver, error)}", file=sys.stderr)
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


def start_failed(args: argparse.Namespace, error: BaseException) -> int:
    """A driver's runner could not start its server: one line on stderr
    and the exit status (1: cannot listen; 2: a value serve() refused).
    ``error`` may be an exception group (Trio's nurseries make them) of such
    errors; anything else is no start failure and is raised again."""
    leaves = _leaves(error)
    if not all(isinstance(leaf, OSError | ValueError) for leaf in leaves):
        raise error
    error = leaves[0]  # e.g. of a host that resolves to several addresses
    if isinstance(error, OSError):
        named = str(error)
        if named.startswith(_SERVE_SAYS):  # serve() named the address (unix, metrics port)
            print(f"wslifecycle: {named.removeprefix('serve(): ')}", file=sys.stderr)
            return 1
        address = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"wslifecycle: cannot listen on {address}:{args.port}: {_os_reason(error)}",
            file=sys.stderr,
        )
        return 1
    print(f"wslifecycle: configuration error: {error}", file=sys.stderr)
    return 2


#: How serve() words a listener it could not open (drivers/_listen.py).
_SERVE_SAYS = "serve(): cannot listen on "


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _os_reason(error: OSError) -> str:
    """``[Errno 98] Address already in use``, however the driver worded it
    (asyncio and the selector driver add the address; it is said once)."""
    cause = error
    while cause.errno is None and isinstance(cause.__cause__, OSError):
        cause = cause.__cause__  # a wrapper that names the address: its cause has the errno
    errno = cause.errno
    if errno is not None and errno > 0:
        return f"[Errno {errno}] {os.strerror(errno)}"
    # A resolver error (errno < 0, no strerror() for it); socket.create_server
    # appends "(while attempting to bind on address ...)".
    return str(cause).partition(" (while attempting")[0]


def _in_flags(error: ConfigError, args: argparse.Namespace) -> str:
    """A ConfigError as the command line spells it: each Config field it
    names that has a flag (the field itself, one in the reason) becomes the flag."""
    given = vars(args)

    def flag(field: str) -> str:
        if field in _FLAG_OF_FIELD:
            return _FLAG_OF_FIELD[field]
        return "--" + field.replace("_", "-") if field in given else field

    reason = re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda name: flag(name[0]), error.reason)
    return f"{flag(error.field)}: {reason}"


def _unavailable(driver: str, error: ImportError) -> str:
    module, extra = _OPTIONAL.get(driver, (None, None))
    if module is not None and error.name == module:
        return f"--driver {driver} needs {module}: pip install 'wslifecycle[{extra}]'"
    return f"--driver {driver} is not available: {error}"


def _runner(driver: str) -> Callable[[argparse.Namespace, Config], int]:
    """``drivers/_run_<driver>.py``'s ``run``, imported on demand (the trio
    driver needs the optional trio package)."""
    module = importlib.import_module(f"wslifecycle.drivers._run_{driver}")
    run: Callable[[argparse.Namespace, Config], int] = module.run
    return run


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
