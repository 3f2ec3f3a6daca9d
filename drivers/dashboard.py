"""The operator's page: ``/dashboard``, one self-contained HTML page and its
live feed, a WebSocket at the same address.

* :func:`add_page` makes a hub answer a plain ``GET /dashboard`` with the
  page (``dashboard.html`` beside this module: no framework, nothing fetched
  from elsewhere). Its Content-Security-Policy allows only its own inline
  script and style (by hash) and connections to the same host; it is never
  cached.
* The page opens a WebSocket to ``/dashboard`` (refused with 403, like any
  upgrade, to an Origin the policy does not allow) and asks for a snapshot
  about once a second. :class:`Dashboard` answers with JSON built from the
  hub. Pull, not push: no driver needs a periodic task for it, and nothing
  is computed while nobody looks.
* :func:`route_async` (asyncio, Trio) and :func:`route_threaded` (selector)
  send ``/dashboard`` upgrades to the feed and every other connection to the
  server's own handler.

A snapshot has the connections by state, an RTT histogram of the last pong
of each active connection, closes by cause (totals, and a series of fixed
intervals counted from one snapshot to the next), the recent alerts and the
channels with their sizes. :meth:`Dashboard.snapshot` reads the hub and
nothing else: on the selector driver it runs with the server's lock held.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import importlib.resources
import json
import math
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from wslifecycle import State, TerminationCause
from wslifecycle.hub import Hub
from wslifecycle.metrics import LATENCY_BUCKETS
from wslifecycle.wire import HttpRequest, PageReply

from ._coroutine import AsyncConnection

if TYPE_CHECKING:
    from .selector import Connection as ThreadedConnection

__all__ = [
    "PATH",
    "Dashboard",
    "add_page",
    "announce",
    "content_security_policy",
    "page",
    "route_async",
    "route_threaded",
]

#: Where the page and its feed are served.
PATH = "/dashboard"

C = TypeVar("C", bound=AsyncConnection)

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Dashboard:
    """What the page shows, built from a hub at the time the page asks.

    ``interval`` and ``slots``: the closes-by-cause series has ``slots``
    intervals of ``interval`` seconds (5 minutes by default). Closes are
    counted between two snapshots and filed under the interval of the
    later one; those before the first snapshot are in the totals only.
    ``min_refresh``: snapshots closer together than this are served from
    the last one, so neither many open pages nor one that asks too often
    can cost the server more than two snapshots a second (a snapshot walks
    every active connection for its RTT: about 0.3 µs each, 3 ms for
    10,000). ``channels``
    and ``alerts``: how many of each a snapshot lists at most.
    """

    __slots__ = (
        "_alerts",
        "_cached",
        "_channels",
        "_interval",
        "_last_totals",
        "_min_refresh",
        "_series",
        "_slots",
    )

    def __init__(
        self,
        *,
        interval: float = 5.0,
        slots: int = 60,
        min_refresh: float = 0.5,
        channels: int = 20,
        alerts: int = 20,
    ) -> None:
        if isinstance(interval, bool) or not (
            isinstance(interval, int | float) and math.isfinite(interval) and interval > 0
        ):
            raise ValueError(f"interval: must be a positive number of seconds, got {interval!r}")
        if isinstance(min_refresh, bool) or not (
            isinstance(min_refresh, int | float) and 0 <= min_refresh < math.inf
        ):
            raise ValueError(f"min_refresh: must be seconds ≥ 0, got {min_refresh!r}")
        for name, value in (("slots", slots), ("channels", channels), ("alerts", alerts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be an integer ≥ 1, got {value!r}")
        self._interval = float(interval)
        self._slots = slots
        self._min_refresh = float(min_refresh)
        self._channels = channels
        self._alerts = alerts
        # (interval index, closes by cause in it), oldest first.
        self._series: deque[tuple[int, Counter[str]]] = deque(maxlen=slots)
        self._last_totals: dict[TerminationCause, int] | None = None
        self._cached: tuple[float, str] | None = None

    # ------------------------------------------------------------- the feed

    def answer(self, hub: Hub, message: str | bytes, now: float) -> str:
        """The feed's reply to one message from the page: a snapshot for
        ``{"type": "snapshot"}`` (at most one new one per ``min_refresh``),
        an error for anything else."""
        if not _asks_for_snapshot(message):
            return _encode({"type": "error", "reason": 'send {"type": "snapshot"}'})
        cached = self._cached
        if cached is not None and 0 <= now - cached[0] < self._min_refresh:
            return cached[1]
        text = _encode(self.snapshot(hub, now))
        self._cached = (now, text)
        return text

    # ------------------------------------------------------------ snapshots

    def snapshot(self, hub: Hub, now: float) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values. ``now`` is the
        driver's clock, the one the hub's alerts were recorded on."""
        metrics = hub.scheduler.metrics.snapshot()
        self._sample(metrics.closed_by_cause, now)
        states = metrics.connections  # kept by every transition: no count here
        latencies: list[float] = []
        waiting = 0
        active = State.ACTIVE
        for lifecycle in hub.scheduler.connections:  # the lifecycles: no wire lookup
            if lifecycle.state is active:
                latency = lifecycle.latency
                if latency is None:
                    waiting += 1
                else:
                    latencies.append(latency)
        return {
            "type": "snapshot",
            "now": now,
            "draining": hub.draining,
            "connections": {
                "open": states[State.OPEN],
                "active": states[State.ACTIVE],
                "draining": states[State.DRAINING],
            },
            "rtt": _histogram(latencies, waiting),
            "closes": self._closes(
                metrics.closed_by_cause, sum(metrics.http_requests.values()), now
            ),
            "alerts": self._recent_alerts(hub, now),
            "alerts_kept": len(hub.recent_alerts),
            "channels": self._channel_list(hub),
            "totals": {
                "handshakes_accepted": metrics.handshakes_accepted,
                "handshakes_refused": sum(metrics.handshakes_rejected.values()),
                "messages_received": metrics.messages_received,
                "messages_sent": metrics.messages_sent,
                "pings_sent": metrics.pings_sent,
                "pongs_received": metrics.pongs_received,
                "missed_pongs": metrics.missed_pongs,
                "sends_skipped": metrics.sends_skipped,
                "loop_stalls": metrics.loop_stalls,
                "loop_lag_max": metrics.loop_lag.maximum,
            },
        }

    def _sample(self, totals: Mapping[TerminationCause, int], now: float) -> None:
        """File the closes since the last snapshot under ``now``'s interval."""
        last = self._last_totals
        self._last_totals = dict(totals)
        if last is None:
            return  # the first snapshot: when earlier closes happened is unknown
        added = Counter(
            {
                cause.value: count - last.get(cause, 0)
                for cause, count in totals.items()
                if count > last.get(cause, 0)
            }
        )
        index = self._index(now)
        series = self._series
        if series and series[-1][0] >= index:  # the same interval (or the clock went back)
            series[-1][1].update(added)
        elif added:
            series.append((index, added))

    def _index(self, now: float) -> int:
        return math.floor(now / self._interval)

    def _closes(
        self, totals: Mapping[TerminationCause, int], http_requests: int, now: float
    ) -> dict[str, Any]:
        current = self._index(now)
        first = current - self._slots + 1
        by_index = {index: counts for index, counts in self._series if index >= first}
        return {
            "interval": self._interval,
            "series": [dict(by_index.get(index, {})) for index in range(first, current + 1)],
            "totals": {cause.value: count for cause, count in totals.items() if count},
            "http_requests": http_requests,  # /healthz, /metrics, this page: no connections
        }

    def _recent_alerts(self, hub: Hub, now: float) -> list[dict[str, Any]]:
        recent = list(hub.recent_alerts)[-self._alerts :]
        return [
            {
                "ago": max(0.0, now - record.at),
                "kind": record.alert.kind.value,
                "connection": record.alert.connection_id,
                "value": record.alert.value,
                "detail": record.alert.detail,
            }
            for record in reversed(recent)
        ]

    def _channel_list(self, hub: Hub) -> dict[str, Any]:
        sizes = hub.channel_sizes()
        largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
        return {
            "listed": True,
            "count": len(sizes),
            "members": sum(sizes.values()),
            "top": [[name, size] for name, size in largest[: self._channels]],
        }


def _histogram(latencies: list[float], waiting: int) -> dict[str, Any]:
    """The last-pong RTTs in the buckets of ``/metrics``, and a few ranks."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for latency in latencies:
        counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
    latencies.sort()

    def rank(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)]

    return {
        "bounds": list(LATENCY_BUCKETS),
        "counts": counts,
        "waiting": waiting,
        "median": rank(0.5),
        "p90": rank(0.9),
        "max": latencies[-1] if latencies else None,
    }


def _asks_for_snapshot(message: str | bytes) -> bool:
    if not isinstance(message, str) or not message.startswith("{"):
        return False
    try:
        request = json.loads(message)
    except (ValueError, RecursionError):
        return False
    return isinstance(request, dict) and request.get("type") == "snapshot"


# ---------------------------------------------------------------- the page


@functools.cache
def _html() -> bytes:
    return importlib.resources.files("wslifecycle.drivers").joinpath("dashboard.html").read_bytes()


def content_security_policy(html: bytes) -> str:
    """Only this page's own inline script and style (by their SHA-256), and
    connections back to where it came from (``'self'`` covers ws: and wss:)."""

    def hashes(tag: bytes) -> str:
        blocks = re.findall(rb"<" + tag + rb">(.*?)</" + tag + rb">", html, re.DOTALL)
        if not blocks:
            raise ValueError(f"html: the page has no <{tag.decode()}> block to allow")
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'"
            for block in blocks
        )

    return (
        f"default-src 'none'; script-src {hashes(b'script')}; style-src {hashes(b'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@functools.cache
def _reply() -> PageReply:
    html = _html()
    headers = (
        ("content-security-policy", content_security_policy(html)),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    )
    return 200, "text/html; charset=utf-8", html, headers


def page(request: HttpRequest) -> PageReply:
    """The answer to ``GET /dashboard``: the page, with its headers."""
    return _reply()


def add_page(hub: Hub) -> None:
    """Serve the page at :data:`PATH` (on the selector driver, with the
    server's lock held: ``server.call(lambda: add_page(server.hub))``)."""
    hub.add_page(PATH, page)


def announce(host: str, port: int) -> None:
    """The page's address on stdout, after the serving line (``wslifecycle serve``)."""
    where = f"[{host}]" if ":" in host else host
    print(f"wslifecycle: operator's page on http://{where}:{port}{PATH}", flush=True)


# ---------------------------------------------------------------- routing


def route_async(
    dashboard: Dashboard, handler: Callable[[C], Awaitable[None]]
) -> Callable[[C], Awaitable[None]]:
    """An asyncio or Trio handler: ``/dashboard`` upgrades get the feed,
    every other connection ``handler``."""

    async def route(conn: C) -> None:
        request = conn.request
        if request is not None and request.path == PATH:
            await _feed_async(dashboard, conn)
        else:
            await handler(conn)

    return route


async def _feed_async(dashboard: Dashboard, conn: AsyncConnection) -> None:
    server = conn._server  # the connection's own server: its hub and its clock
    async for message in conn:
        conn.send(dashboard.answer(server.hub, message, server.now()))


def route_threaded(
    dashboard: Dashboard, handler: Callable[[ThreadedConnection], None]
) -> Callable[[ThreadedConnection], None]:
    """A selector handler: ``/dashboard`` upgrades get the feed, every other
    connection ``handler``."""

    def route(conn: ThreadedConnection) -> None:
        request = conn.request
        if request is not None and request.path == PATH:
            _feed_threaded(dashboard, conn)
        else:
            handler(conn)

    return route


def _feed_threaded(dashboard: Dashboard, conn: ThreadedConnection) -> None:
    server = conn._server
    for message in conn:
        # The hub is read with the server's lock held; send takes it itself.
        answer = functools.partial(dashboard.answer, server.hub, message, server.now())
        conn.send(server.call(answer))
