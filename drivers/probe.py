"""``wslifecycle probe URL``: check any WebSocket server's liveness detection
from outside, with no root and no firewall rule.

    wslifecycle probe ws://127.0.0.1:8765/ --healthy 20 --silent 10 --after 1 --expect-bound 2.5

Opens ``--healthy`` clients that behave (answer pings and application
heartbeats, read everything) and ``--silent`` clients that behave until
``--after`` seconds, then answer nothing and send nothing while they keep
their TCP connection open and keep READING: a dead peer, as the server
sees it, that still sees the moment the server closes it (a close frame, an
RST, or a FIN without a close frame). Runs until every silent client was
closed or ``--timeout`` seconds after they fell silent, closes what is left
with 1000, and reports the server's ping interval (as the healthy clients
saw it), the detection time of each silent client, measured from the last
pong or heartbeat echo it sent, the close codes, and any healthy client the
server closed. ``--json`` prints one JSON object instead of the table.

Exit status: 0 the run finished (and met ``--expect-bound``, if given);
1 ``--expect-bound`` was not met (a silent client outlived the bound, a
behaving client was closed); 2 a usage error, or the probe could not run
(the server cannot be reached, refused the upgrade, or TLS failed).
docs/probe.md says more.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import os
import ssl
import sys
from collections import Counter
from typing import Any, cast

from wslifecycle import ConnectionLifecycle, Scheduler, State
from wslifecycle.actions import AcceptUpgrade, CloseTransport, RejectUpgrade, Terminate
from wslifecycle.client import ClientConnection, Target, client_config, parse_url, render_request

from ._common import default_entropy, fast_unmask

__all__ = ["add_arguments", "main", "run"]

#: Seconds the closing handshake at the end may take before a socket is dropped.
CLOSE_TIMEOUT = 5.0
#: With --expect-bound and no --timeout: wait this long past the bound.
BOUND_MARGIN = 1.0
DEFAULT_TIMEOUT = 60.0


class ProbeError(Exception):
    """The probe could not run (exit 2): the message says why."""


# ------------------------------------------------------------ the command line


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _at_least_one(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "above 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {least}, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, zero=False)


def _any_seconds(text: str) -> float:
    return _seconds(text, zero=True)


def _url(text: str) -> Target:
    try:
        return parse_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def add_arguments(probe: argparse.ArgumentParser) -> None:
    """The ``probe`` subcommand's arguments (drivers/cli.py makes the parser)."""
    add = probe.add_argument
    add("url", type=_url, metavar="URL", help="the server: ws://HOST[:PORT]/PATH or wss://…")
    add(
        "--healthy",
        type=_count,
        default=10,
        metavar="N",
        help="clients that answer pings and heartbeats throughout (default: %(default)s)",
    )
    add(
        "--silent",
        type=_count,
        default=0,
        metavar="K",
        help="clients that fall silent after --after seconds, still reading (default: 0)",
    )
    add(
        "--after",
        type=_any_seconds,
        default=None,
        metavar="SECONDS",
        help="when the silent clients stop answering, counted from the last upgrade"
        " (required with --silent)",
    )
    add(
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help=f"stop this long after the silent clients fell silent (default: {DEFAULT_TIMEOUT:g};"
        f" with --expect-bound: the bound + {BOUND_MARGIN:g})",
    )
    add(
        "--expect-bound",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="exit 1 unless every silent client is closed within this long of its last pong"
        " and no behaving client is closed",
    )
    add("--json", action="store_true", help="print one JSON object instead of the table")
    add(
        "--concurrency",
        type=_at_least_one,
        default=50,
        metavar="N",
        help="connections being opened at once (default: %(default)s)",
    )
    add(
        "--connect-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="for TCP, TLS and the upgrade of each connection (default: %(default)s)",
    )
    add("--origin", default=None, help="the Origin header to send (default: none)")
    add(
        "--header",
        dest="headers",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra request header, e.g. 'Authorization: Bearer T' (repeatable)",
    )
    add(
        "--subprotocol",
        dest="subprotocols",
        action="append",
        default=[],
        metavar="NAME",
        help="offer this subprotocol (repeatable)",
    )
    trust = probe.add_mutually_exclusive_group()
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="wss://: do not verify the server's certificate (self-signed test servers)",
    )
    trust.add_argument(
        "--cafile", metavar="PATH", help="wss://: trust the CA certificates in this PEM file"
    )


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments together (argparse checks each alone)."""
    target: Target = args.url
    if args.healthy + args.silent == 0:
        return "nothing to probe: give --healthy N or --silent K above 0"
    if args.silent and args.after is None:
        return "--silent needs --after SECONDS (when the silent clients stop answering)"
    if args.after is not None and not args.silent:
        return "--after applies to silent clients: give --silent K too"
    bound = args.expect_bound
    if args.timeout is not None and bound is not None and args.timeout <= bound:
        return (
            f"--timeout ({args.timeout:g}) must exceed --expect-bound ({bound:g}),"
            " or a silent client still open at the end was never given the whole bound"
        )
    if (args.insecure or args.cafile) and not target.secure:
        return "--insecure and --cafile apply to wss:// URLs only"
    try:  # the request every client sends: a header h11 refuses, refused here
        render_request(
            target.host_header,
            target.resource,
            bytes(16),
            subprotocols=tuple(args.subprotocols),
            origin=args.origin,
            headers=tuple(args.headers),
        )
    except ValueError as error:
        return str(error)
    return None


def main(args: argparse.Namespace) -> int:
    """Run the probe the parsed arguments describe; print the report; the exit status."""
    prog = "wslifecycle probe"
    problem = usage_problem(args)
    if problem is not None:
        print(f"{prog}: error: {problem} (see {prog} --help)", file=sys.stderr)
        return 2
    try:
        context = _tls_context(args)
    except OSError as error:  # ssl.SSLError included
        print(f"{prog}: cannot use --cafile {args.cafile}: {_reason(error)}", file=sys.stderr)
        return 2
    timeout = args.timeout
    if timeout is None:
        bound = args.expect_bound
        timeout = DEFAULT_TIMEOUT if bound is None else bound + BOUND_MARGIN
    settings = Settings(
        target=args.url,
        healthy=args.healthy,
        silent=args.silent,
        after=args.after or 0.0,
        timeout=timeout,
        expect_bound=args.expect_bound,
        concurrency=args.concurrency,
        connect_timeout=args.connect_timeout,
        origin=args.origin,
        headers=tuple(args.headers),
        subprotocols=tuple(args.subprotocols),
        tls=context,
    )
    try:
        report = asyncio.run(run(settings))
    except ProbeError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        print(json.dumps(report, indent=2) if args.json else table(report), flush=True)
    except BrokenPipeError:
        # The reader left (``| head``): the report is not wanted, the exit
        # status still is; stdout goes nowhere so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if report["passed"] is False else 0


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    target: Target = args.url
    if not target.secure:
        return None
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reason(error: BaseException) -> str:
    """An OS error as one short phrase: ``[Errno 111] Connection refused``."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, OSError) and error.errno is not None and error.errno > 0:
        return f"[Errno {error.errno}] {os.strerror(error.errno)}"
    return str(error) or type(error).__name__


# ------------------------------------------------------------------ the run


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """One probe run: the server, the clients, the times (seconds)."""

    target: Target
    healthy: int
    silent: int
    after: float  # silent clients stop answering this long after the last upgrade
    timeout: float  # the run ends this long after they did, if not all were closed
    expect_bound: float | None = None
    concurrency: int = 50
    connect_timeout: float = 10.0
    origin: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    tls: ssl.SSLContext | None = None

    @property
    def longest_run(self) -> float:
        """An upper bound of the run's length, in seconds (a connection
        takes up to --connect-timeout for TCP and TLS, as long again for the upgrade)."""
        clients = self.healthy + self.silent
        opening = math.ceil(clients / self.concurrency) * 2 * self.connect_timeout
        return opening + self.after + self.timeout + CLOSE_TIMEOUT + 2.0


class _Client(asyncio.Protocol):
    """One probe connection: its wire, its transport, and what it saw."""

    def __init__(self, probe: _Probe, index: int, silent: bool) -> None:
        self.probe = probe
        self.index = index
        self.silent = silent
        self.wire: ClientConnection | None = None
        self.transport: asyncio.Transport | None = None
        #: Resolved once the upgrade is decided: None (upgraded) or why it failed.
        self.upgraded: asyncio.Future[str | None] = probe.loop.create_future()
        self.lost: asyncio.Future[None] = probe.loop.create_future()
        self.opened_at: float | None = None
        self.ping_times: list[float] = []
        self.heartbeat_times: list[float] = []
        self.silent_at: float | None = None  # when it stopped answering
        #: The server's ending: when, and how ("1011", "RST", "EOF").
        self.ended_at: float | None = None
        self.end: str | None = None
        self.finishing = False  # the probe closes it: what follows is no verdict
        #: At the end: True if our close got the server's close frame back.
        self.closed_cleanly: bool | None = None

    # asyncio's callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport
        probe = self.probe
        settings = probe.settings
        now = probe.now()
        self.wire = ClientConnection(
            probe.scheduler,
            now,
            settings.target,
            random_bytes=os.urandom,
            subprotocols=settings.subprotocols,
            origin=settings.origin,
            headers=settings.headers,
            mask=probe.mask,
        )
        probe.lifecycles[self.wire.lifecycle] = self
        probe.flush(self)

    def data_received(self, data: bytes) -> None:
        wire = self.wire
        assert wire is not None
        now = self.probe.now()
        pings, heartbeats = wire.pings_received, wire.heartbeats_received
        wire.receive_data(data, now)
        # Pings read together share a time; they count as one arrival.
        if wire.pings_received > pings:
            self.ping_times.append(now)
        if wire.heartbeats_received > heartbeats:
            self.heartbeat_times.append(now)
        peer_close = wire.peer_close
        if peer_close is not None:
            code = peer_close[0]
            self._ended(now, str(1005 if code is None else code))
        while wire.take_message(now) is not None:
            pass  # read everything, keep nothing
        self.probe.flush(self)

    def eof_received(self) -> bool:
        wire = self.wire
        assert wire is not None
        now = self.probe.now()
        self._ended(now, "EOF")
        wire.receive_eof(now)
        self.probe.flush(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        now = self.probe.now()
        if exc is not None:
            self._ended(now, "RST" if isinstance(exc, ConnectionResetError) else _reason(exc))
        wire = self.wire
        if wire is not None:
            wire.transport_lost(now, None if exc is None else repr(exc))
            self.probe.flush(self)
            self.probe.lifecycles.pop(wire.lifecycle, None)
            if self.finishing and self.end is None:
                self.closed_cleanly = wire.peer_close is not None
        self.transport = None
        if not self.upgraded.done():
            reason = _reason(exc) if exc is not None else "the connection closed"
            self.upgraded.set_result(f"the upgrade failed: {reason}")
        if not self.lost.done():
            self.lost.set_result(None)

    # the probe's
    def _ended(self, now: float, how: str) -> None:
        """The server ended the connection (first sign only)."""
        if self.end is None and not self.finishing and self.opened_at is not None:
            self.ended_at, self.end = now, how
            self.probe.client_ended(self)

    def go_silent(self, now: float) -> None:
        if self.wire is not None:
            self.wire.answer_pings = False
        self.silent_at = now

    @property
    def last_answer(self) -> float | None:
        """When it last proved itself alive to the server: its last pong or
        heartbeat echo, else the upgrade."""
        wire = self.wire
        answered = None if wire is None else wire.answered_at
        return answered if answered is not None else self.opened_at


class _Probe:
    """The clients of one run, their one scheduler and its one timer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        clients = settings.healthy + settings.silent
        # The probe's clients must never ping the server: a client's ping is
        # traffic a server may take as life, and would blur what is measured.
        # Connection k's first ping is due frac(k·φ)·interval after the first
        # upgrade (scheduler.py's golden phases), and frac(k·φ) > 0.44/k, so
        # this interval puts every first ping past the whole run.
        interval = 3.0 * clients * settings.longest_run
        config = client_config(
            heartbeat_interval=interval,
            handshake_timeout=settings.connect_timeout,
            close_timeout=CLOSE_TIMEOUT,
        )
        self.scheduler = Scheduler(config, default_entropy())
        self.mask = fast_unmask()
        self.lifecycles: dict[ConnectionLifecycle, _Client] = {}
        self.clients: list[_Client] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._silent_open = settings.silent
        self.all_silent_ended = asyncio.Event()

    def now(self) -> float:
        return self.loop.time()

    def flush(self, client: _Client) -> None:
        """Write what the client's wire has to send; carry out its actions."""
        wire, transport = client.wire, client.transport
        assert wire is not None
        data = wire.data_to_send()
        if data and transport is not None:
            transport.write(data)
        for action in wire.take_actions():
            if isinstance(action, AcceptUpgrade):
                client.opened_at = self.now()
                if not client.upgraded.done():
                    client.upgraded.set_result(None)
            elif isinstance(action, RejectUpgrade):
                if not client.upgraded.done():
                    client.upgraded.set_result(_refusal(wire))
            elif isinstance(action, CloseTransport):
                if transport is not None:
                    transport.close()
            elif isinstance(action, Terminate) and transport is not None:
                transport.abort()
        if wire.state is State.CLOSED and not client.upgraded.done():
            client.upgraded.set_result(_refusal(wire))
        self._arm()

    def _arm(self) -> None:
        """ONE timer, for the scheduler's next wake-up (handshake and close deadlines)."""
        wakeup = self.scheduler.next_wakeup()
        if wakeup is None or (self._timer_at is not None and self._timer_at <= wakeup):
            return  # nothing due, or an earlier timer re-arms when it fires
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wakeup
        self._timer = self.loop.call_at(wakeup, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = self.now()
        for lifecycle in self.scheduler.tick(now):
            client = self.lifecycles.get(lifecycle)
            if client is not None and client.wire is not None:
                client.wire.pump(now)
                self.flush(client)
        self._arm()

    def client_ended(self, client: _Client) -> None:
        if client.silent and client.silent_at is not None:
            self._silent_open -= 1
            if self._silent_open == 0:
                self.all_silent_ended.set()

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    # -------------------------------------------------------------- phases

    async def open_all(self) -> None:
        """Open every client, ``concurrency`` at a time; the first failure
        stops the rest and is raised."""
        settings = self.settings
        gate = asyncio.Semaphore(settings.concurrency)
        tasks = [
            asyncio.create_task(self._open(index, index >= settings.healthy, gate))
            for index in range(settings.healthy + settings.silent)
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                assert error is not None
                opened = sum(client.opened_at is not None for client in self.clients)
                total = len(tasks)
                raise ProbeError(f"{settings.target.url}: {error} ({opened} of {total} were open)")

    async def _open(self, index: int, silent: bool, gate: asyncio.Semaphore) -> None:
        settings = self.settings
        target = settings.target
        async with gate:
            client = _Client(self, index, silent)
            self.clients.append(client)
            try:
                async with asyncio.timeout(settings.connect_timeout):
                    await self.loop.create_connection(
                        lambda: client,
                        target.host,
                        target.port,
                        ssl=settings.tls,
                        server_hostname=target.host if settings.tls is not None else None,
                    )
            except TimeoutError:
                raise ProbeError(
                    f"cannot connect: no TCP/TLS connection within {settings.connect_timeout:g} s"
                ) from None
            except OSError as error:  # ssl.SSLError included
                raise ProbeError(f"cannot connect: {_reason(error)}") from None
            failure = await client.upgraded  # bounded by the core's handshake timeout
            if failure is not None:
                raise ProbeError(failure)

    async def silence(self) -> None:
        """Wait --after, silence the silent clients, wait until the server
        closed them all or --timeout passed."""
        settings = self.settings
        if settings.silent:
            await asyncio.sleep(settings.after)
            now = self.now()
            silenced = [c for c in self.clients if c.silent and c.end is None]
            for client in silenced:
                client.go_silent(now)
            self._silent_open = len(silenced)
            if self._silent_open == 0:
                return
        try:
            async with asyncio.timeout(settings.timeout):
                await self.all_silent_ended.wait()
        except TimeoutError:
            pass

    async def close_all(self) -> None:
        """Close every connection still open with 1000, wait for the closing
        handshakes (the core's close timeout bounds them), drop stragglers."""
        now = self.now()
        for client in self.clients:
            client.finishing = True
            wire = client.wire
            if wire is not None and client.transport is not None and not wire.ended:
                wire.close(now, 1000)
                self.flush(client)
        waiting = [client.lost for client in self.clients if client.wire is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=CLOSE_TIMEOUT + 1.0)
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()
        if waiting:  # an abort's connection_lost comes on the next loop turn
            await asyncio.wait(waiting, timeout=1.0)
        self.stop_timer()


def _refusal(wire: ClientConnection) -> str:
    refusal = wire.refusal
    if refusal is not None:
        if refusal.status == 0:
            return f"no WebSocket upgrade: {refusal.reason}"
        return f"the server refused the upgrade: HTTP {refusal.status} {refusal.reason}"
    outcome = wire.outcome
    return f"the upgrade failed: {outcome}" if outcome is not None else "the upgrade failed"


async def run(settings: Settings) -> dict[str, Any]:
    """One probe run against ``settings.target``: the report (see :func:`report`).
    Raises :class:`ProbeError` when the clients cannot all be opened."""
    probe = _Probe(settings)
    started = probe.now()
    try:
        await probe.open_all()
        await probe.silence()
        finished = probe.now()
    finally:
        await probe.close_all()
    return report(settings, probe.clients, started, finished)


# ------------------------------------------------------------------ the report


def _round(value: float) -> float:
    return round(value, 4)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": _round(percentile(values, 0.5)),
        "min": _round(min(values)),
        "max": _round(max(values)),
    }


def _intervals(series: list[list[float]]) -> list[float]:
    return [later - earlier for times in series for earlier, later in itertools.pairwise(times)]


def report(
    settings: Settings, clients: list[_Client], started: float, finished: float
) -> dict[str, Any]:
    """What the run saw, as a JSON-ready dict (docs/probe.md names each field)."""
    healthy = [client for client in clients if not client.silent]
    silent = [client for client in clients if client.silent]
    bound = settings.expect_bound
    failures: list[str] = []

    healthy_closed = [client for client in healthy if client.end is not None]
    early = [client for client in silent if client.end is not None and client.silent_at is None]
    # A silent client closed before it fell silent was behaving: a false termination too.
    for client in healthy_closed + early:
        role = "healthy" if not client.silent else "silent (still answering)"
        failures.append(f"{role} client #{client.index} was closed by the server: {client.end}")

    terminated = [c for c in silent if c.end is not None and c.silent_at is not None]
    detections: list[float] = []
    for client in terminated:
        assert client.ended_at is not None
        since = client.last_answer
        assert since is not None
        detection = client.ended_at - since
        detections.append(detection)
        if bound is not None and detection > bound:
            failures.append(
                f"silent client #{client.index} was closed {detection:.3f} s after its last"
                f" answer (bound {bound:g} s)"
            )
    survivors = [client for client in silent if client.end is None]
    if survivors:
        oldest = max(finished - (client.last_answer or finished) for client in survivors)
        if bound is not None:
            failures.append(
                # The report's own figure, so that the two never differ in rounding.
                f"{len(survivors)} silent client(s) still open {_round(oldest):.3f} s after their"
                f" last answer (bound {bound:g} s)"
            )
    else:
        oldest = None

    return {
        "url": settings.target.url,
        "duration": _round(finished - started),
        "pings": {
            "seen": sum(client.wire.pings_received for client in healthy if client.wire),
            "interval": _spread(_intervals([client.ping_times for client in healthy])),
        },
        "heartbeats": {
            "seen": sum(client.wire.heartbeats_received for client in healthy if client.wire),
            "interval": _spread(_intervals([client.heartbeat_times for client in healthy])),
        },
        "healthy": {
            "clients": len(healthy),
            "closed": len(healthy_closed),
            "close_codes": _codes(healthy_closed),
        },
        "silent": {
            "clients": len(silent),
            "after": settings.after if silent else None,
            "terminated": len(terminated),
            "closed_before_silence": len(early),
            "still_open": len(survivors),
            "still_open_since_last_answer": None if oldest is None else _round(oldest),
            "detection": None
            if not detections
            else {
                "p50": _round(percentile(detections, 0.5)),
                "p99": _round(percentile(detections, 0.99)),
                "max": _round(max(detections)),
            },
            "close_codes": _codes(terminated + early),
        },
        "closed_by_probe": {
            "clean": sum(client.closed_cleanly is True for client in clients),
            "dropped": sum(client.closed_cleanly is False for client in clients),
        },
        "expect_bound": bound,
        "passed": None if bound is None else not failures,
        "failures": failures,
    }


def _codes(clients: list[_Client]) -> dict[str, int]:
    return dict(sorted(Counter(client.end or "" for client in clients).items()))


def _seconds_text(value: float) -> str:
    return f"{value:.3f} s"


def table(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    rows: list[tuple[str, str]] = []
    pings = report["pings"]
    interval = pings["interval"]
    rows.append(
        (
            "server ping interval (healthy clients)",
            "never pinged"
            if interval is None
            else f"median {_seconds_text(interval['median'])}, min {_seconds_text(interval['min'])}"
            f", max {_seconds_text(interval['max'])}",
        )
    )
    rows.append(("pings seen", str(pings["seen"])))
    heartbeats = report["heartbeats"]
    beats = heartbeats["interval"]
    rows.append(
        (
            "application heartbeats seen",
            str(heartbeats["seen"])
            + ("" if beats is None else f" (median interval {_seconds_text(beats['median'])})"),
        )
    )
    silent = report["silent"]
    if silent["clients"]:
        rows.append(
            (
                f"silent clients terminated (silent after {silent['after']:g} s)",
                f"{silent['terminated']} of {silent['clients']}"
                + (f", {silent['still_open']} still open" if silent["still_open"] else ""),
            )
        )
        detection = silent["detection"]
        rows.append(
            (
                "detection, from the last pong or echo",
                "none"
                if detection is None
                else f"p50 {_seconds_text(detection['p50'])}, p99 {_seconds_text(detection['p99'])}"
                f", max {_seconds_text(detection['max'])}",
            )
        )
        rows.append(("silent clients' close codes", _codes_text(silent["close_codes"])))
    healthy = report["healthy"]
    rows.append(
        (
            "healthy clients closed by the server",
            f"{healthy['closed']} of {healthy['clients']}"
            + (f" ({_codes_text(healthy['close_codes'])})" if healthy["closed"] else ""),
        )
    )
    bound = report["expect_bound"]
    if bound is not None:
        verdict = "PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"])
        rows.append((f"expect bound {bound:g} s", verdict))
    elif report["failures"]:
        rows.append(("false terminations", "; ".join(report["failures"])))
    lines = [f"wslifecycle probe {report['url']} ({report['duration']:.1f} s)", ""]
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _codes_text(codes: dict[str, int]) -> str:
    return ", ".join(f"{code} ×{count}" for code, count in codes.items()) or "none"
