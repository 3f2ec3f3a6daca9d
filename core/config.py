"""The one configuration object, validated when it is made.

Every knob of a server lives here with its default. A bad value raises
:class:`~wslifecycle.ConfigError` naming the field and the reason, at
construction: nothing runs with a config that could not work.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable

from .exceptions import ConfigError
from .forwarded import parse_trusted

__all__ = ["Config", "HeartbeatMode", "OriginValidator"]

KiB = 1024
MiB = 1024 * 1024

# The defaults that depend on the interval, named once so that help texts
# (the command line's) can quote the formula the code applies.
#: ``stall_threshold=None`` means ``min(heartbeat_interval / STALL_DIVISOR, STALL_CAP)``.
STALL_DIVISOR = 4
STALL_CAP = 5.0
#: ``timer_slack=None`` means ``min(heartbeat_interval / SLACK_DIVISOR, SLACK_CAP)``.
SLACK_DIVISOR = 20
SLACK_CAP = 0.05

#: ``validator(origin, host) -> allowed``. ``origin`` is None when the request
#: had no Origin header; ``host`` is the Host header (None if absent).
OriginValidator = Callable[[str | None, str | None], bool]


class HeartbeatMode(enum.Enum):
    """How liveness is probed (docs/theory.md)."""

    #: RFC 6455 ping frames; proves the peer's TCP stack and WebSocket layer.
    PROTOCOL = "protocol"
    #: A JSON message the peer's application must echo; proves its event loop.
    APPLICATION = "application"
    #: Both probes, each with its own missed counter and the same bound.
    BOTH = "both"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every setting of a server, with its default.

    Times are seconds (monotonic clock), sizes are bytes.
    """

    #: Seconds between two heartbeat probes of one connection.
    heartbeat_interval: float = 30.0
    #: Unanswered probes tolerated; one more interval without an answer terminates.
    max_missed_pongs: int = 2
    #: Protocol pings, JSON application heartbeats, or both.
    heartbeat_mode: HeartbeatMode = HeartbeatMode.PROTOCOL
    #: Count any inbound frame as proof of life (saves pings on busy connections).
    activity_is_liveness: bool = False
    #: A timer tick later than this (seconds) is a local stall: it blames no
    #: peer and raises a ``loop_stall`` alert. ``None`` means
    #: ``min(heartbeat_interval / 4, 5.0)``.
    stall_threshold: float | None = None
    #: If set, the proxy in front of the server reaps idle flows after this many
    #: seconds; ``heartbeat_interval`` must then be below it.
    proxy_idle_timeout: float | None = None
    #: Deadlines are rounded up to a grid of this many seconds, so the one
    #: timer wakes once for every deadline in a grid cell (timer coalescing).
    #: ``None`` means ``min(heartbeat_interval / 20, 0.05)``; 0 turns it off.
    timer_slack: float | None = None

    #: Largest message accepted, in bytes, counted across fragments (else 1009).
    max_message_size: int = 1 * MiB
    #: Most frames one message may span, empty ones included (else 1009).
    max_fragments: int = 1024
    #: Above this many buffered outbound bytes, non-critical sends are skipped.
    write_buffer_guard: int = 1 * MiB
    #: Slow-consumer policy: a send that finds this many bytes still unwritten
    #: terminates the connection (SLOW_CONSUMER), so memory stays bounded.
    max_write_buffer: int = 4 * MiB
    #: Messages queued for the handler before the connection stops reading
    #: its socket (the handler is behind; unread pongs then blame nobody).
    inbox_high_water: int = 64
    #: Reading resumes once the handler has taken the queue down to this many.
    inbox_low_water: int = 16
    #: Most ACTIVE or DRAINING connections; upgrades beyond it get 503.
    #: None: bounded only by the process's descriptors.
    max_connections: int | None = None

    #: Seconds from accepting the TCP connection to a completed upgrade.
    handshake_timeout: float = 10.0
    #: Seconds from starting to close to CLOSED; then the socket is terminated.
    close_timeout: float = 10.0
    #: Seconds a server drain waits before terminating what is still open.
    drain_timeout: float = 10.0

    #: Origins allowed in addition to the request's own Host ("scheme://host[:port]").
    allowed_origins: frozenset[str] = frozenset()
    #: Accept requests with no Origin header (non-browser clients). Off by default.
    allow_no_origin: bool = False
    #: Replaces the allowlist check when given (see :data:`OriginValidator`).
    origin_validator: OriginValidator | None = None
    #: Peers whose ``Forwarded`` / ``X-Forwarded-For`` name the client: IP
    #: addresses, networks ("10.0.0.0/8"), "unix" (Unix-socket peers) or
    #: "loopback" (127.0.0.0/8, ::1 and unix). Empty: trust no header.
    trusted_proxies: frozenset[str] = frozenset()

    #: Negotiate permessage-deflate (inflation stays bounded by max_message_size).
    compression: bool = False
    #: Subprotocols the server speaks, best first; the first one the client
    #: also offers is selected (Sec-WebSocket-Protocol).
    subprotocols: tuple[str, ...] = ()

    #: Messages of each channel kept for resume (``since``); 0 keeps none.
    history_size: int = 100
    #: Seconds a message stays in history (and a channel's history outlives
    #: its last publish).
    history_ttl: float = 300.0
    #: Seconds a node's presence lease lasts in Redis (renewed every third of
    #: it): a node that dies leaves every channel's members within this.
    presence_ttl: float = 30.0
    #: The fleet's Redis (``redis://HOST:PORT/DB``, ``rediss://``,
    #: ``unix:///path.sock``); None: one node, channels in this process.
    redis_url: str | None = None

    #: Longest HTTP request line, in bytes (else 414).
    max_request_line: int = 8 * KiB
    #: Largest HTTP request head (request line and headers), in bytes (else 431).
    max_header_bytes: int = 16 * KiB
    #: Most header fields in an HTTP request (else 431).
    max_headers: int = 64

    def __post_init__(self) -> None:
        _positive_number("heartbeat_interval", self.heartbeat_interval)
        _int_at_least("max_missed_pongs", self.max_missed_pongs, 1)
        if not isinstance(self.heartbeat_mode, HeartbeatMode):
            raise ConfigError(
                "heartbeat_mode",
                f"must be a HeartbeatMode ({', '.join(m.value for m in HeartbeatMode)}),"
                f" got {self.heartbeat_mode!r}",
            )
        _bool("activity_is_liveness", self.activity_is_liveness)
        if self.stall_threshold is not None:
            _positive_number("stall_threshold", self.stall_threshold)
            if self.stall_threshold >= self.heartbeat_interval:
                raise ConfigError(
                    "stall_threshold",
                    f"must be below heartbeat_interval ({self.heartbeat_interval} s),"
                    f" got {self.stall_threshold}",
                )
        if self.timer_slack is not None:
            if isinstance(self.timer_slack, bool) or not isinstance(self.timer_slack, int | float):
                raise ConfigError(
                    "timer_slack", f"must be a number of seconds, got {self.timer_slack!r}"
                )
            if not math.isfinite(self.timer_slack) or self.timer_slack < 0:
                raise ConfigError("timer_slack", f"must be 0 or more, got {self.timer_slack!r}")
            if self.timer_slack >= self.effective_stall_threshold:
                raise ConfigError(
                    "timer_slack",
                    f"must be below the stall threshold ({self.effective_stall_threshold} s),"
                    f" got {self.timer_slack}",
                )
        if self.proxy_idle_timeout is not None:
            _positive_number("proxy_idle_timeout", self.proxy_idle_timeout)
            if self.heartbeat_interval >= self.proxy_idle_timeout:
                raise ConfigError(
                    "heartbeat_interval",
                    f"must stay below proxy_idle_timeout ({self.proxy_idle_timeout} s)"
                    f" or the proxy reaps idle connections first, got"
                    f" {self.heartbeat_interval}",
                )
        _int_at_least("history_size", self.history_size, 0)
        _positive_number("history_ttl", self.history_ttl)
        _positive_number("presence_ttl", self.presence_ttl)
        if self.redis_url is not None and (
            not isinstance(self.redis_url, str)
            or not self.redis_url.startswith(("redis://", "rediss://", "unix://"))
        ):
            raise ConfigError(
                "redis_url",
                "must be redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH,"
                f" got {self.redis_url!r}",
            )
        _int_at_least("max_message_size", self.max_message_size, 1)
        _int_at_least("max_fragments", self.max_fragments, 1)
        _int_at_least("write_buffer_guard", self.write_buffer_guard, 0)
        _int_at_least("max_write_buffer", self.max_write_buffer, 1)
        if self.max_write_buffer < self.write_buffer_guard:
            raise ConfigError(
                "max_write_buffer",
                f"must be at least write_buffer_guard ({self.write_buffer_guard}),"
                f" got {self.max_write_buffer}",
            )
        _int_at_least("inbox_high_water", self.inbox_high_water, 1)
        _int_at_least("inbox_low_water", self.inbox_low_water, 0)
        if self.inbox_low_water >= self.inbox_high_water:
            raise ConfigError(
                "inbox_low_water",
                f"must be below inbox_high_water ({self.inbox_high_water}),"
                f" got {self.inbox_low_water}",
            )
        if self.max_connections is not None:
            _int_at_least("max_connections", self.max_connections, 1)
        _positive_number("handshake_timeout", self.handshake_timeout)
        _positive_number("close_timeout", self.close_timeout)
        _positive_number("drain_timeout", self.drain_timeout)
        origins: object = self.allowed_origins  # checked as given, whatever its type
        if isinstance(origins, str) or not isinstance(origins, Iterable):
            raise ConfigError(
                "allowed_origins", f"must be a set of origin strings, got {origins!r}"
            )
        normalised = frozenset(_origin("allowed_origins", o) for o in origins)
        object.__setattr__(self, "allowed_origins", normalised)
        _bool("allow_no_origin", self.allow_no_origin)
        if self.origin_validator is not None and not callable(self.origin_validator):
            raise ConfigError("origin_validator", "must be callable(origin, host) -> bool")
        proxies: object = self.trusted_proxies
        if isinstance(proxies, str) or not isinstance(proxies, Iterable):
            raise ConfigError(
                "trusted_proxies", f"must be a set of addresses or networks, got {proxies!r}"
            )
        entries = frozenset(str(entry).strip() for entry in proxies)
        try:
            parse_trusted(entries)
        except ValueError as error:
            raise ConfigError("trusted_proxies", str(error)) from None
        object.__setattr__(self, "trusted_proxies", entries)
        _bool("compression", self.compression)
        protocols: object = self.subprotocols
        if not isinstance(protocols, tuple) or not all(
            isinstance(p, str) and p and p.isascii() and " " not in p and "," not in p
            for p in protocols
        ):
            raise ConfigError(
                "subprotocols", f"must be a tuple of non-empty tokens, got {protocols!r}"
            )
        _int_at_least("max_request_line", self.max_request_line, 16)
        _int_at_least("max_header_bytes", self.max_header_bytes, 64)
        _int_at_least("max_headers", self.max_headers, 4)
        if self.max_request_line > self.max_header_bytes:
            raise ConfigError(
                "max_request_line",
                f"must not exceed max_header_bytes ({self.max_header_bytes}),"
                f" got {self.max_request_line}",
            )

    @property
    def effective_stall_threshold(self) -> float:
        """The stall threshold in force: the configured one or the default."""
        if self.stall_threshold is not None:
            return self.stall_threshold
        return min(self.heartbeat_interval / STALL_DIVISOR, STALL_CAP)

    @property
    def effective_timer_slack(self) -> float:
        """The timer slack in force: the configured one or the default."""
        if self.timer_slack is not None:
            return self.timer_slack
        return min(self.heartbeat_interval / SLACK_DIVISOR, SLACK_CAP)

    @property
    def detection_bound(self) -> float:
        """Seconds from a peer's last sign of life to its termination, at most,
        before the timer's lateness: ``(max_missed_pongs + 1) ×
        heartbeat_interval``. Add twice the lateness, that is
        ``2 × (effective_timer_slack + the loop's lag)`` (see ``heartbeat.py``)."""
        return (self.max_missed_pongs + 1) * self.heartbeat_interval

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed, validated like a new one."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _positive_number(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(field, f"must be a finite number above 0, got {value!r}")


def _int_at_least(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(field, f"must be at least {minimum}, got {value}")


def _bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be True or False, got {value!r}")


def _origin(field: str, value: object) -> str:
    if isinstance(value, str):
        normalised = value.strip().rstrip("/").lower()
        scheme, sep, host = normalised.partition("://")
        if sep and scheme and host and "/" not in host:
            return normalised
    raise ConfigError(field, f"each origin must look like 'https://host[:port]', got {value!r}")
