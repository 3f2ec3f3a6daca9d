"""Inputs to a connection, as data: small, frozen, slotted dataclasses.

Each event names one method of :class:`~wslifecycle.ConnectionLifecycle`;
``lifecycle.handle(event)`` calls it. Drivers on a hot path may call the
method directly; tests, fuzzers and the scripted peer use events, so a run can
be generated, stored and replayed. Every event carries ``now`` (monotonic
seconds).
"""

from __future__ import annotations

import dataclasses

from .causes import TerminationCause

__all__ = [
    "ActivitySeen",
    "ChannelReleaseFailed",
    "ChannelsReleased",
    "ClientSeqReported",
    "CloseRequested",
    "DrainRequested",
    "Event",
    "HandlerFailed",
    "HandlerReturned",
    "MessageReceived",
    "PeerClosed",
    "PeerMisbehaved",
    "PongReceived",
    "ReadingPaused",
    "ReadingResumed",
    "SendRequested",
    "Subscribe",
    "TerminateRequested",
    "TimerFired",
    "TransportLost",
    "Unsubscribe",
    "UpgradeInvalid",
    "UpgradeRequested",
]


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeRequested:
    """A well-formed upgrade request; its Origin and Host decide acceptance."""

    now: float
    origin: str | None
    host: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeInvalid:
    """The wire refused the request itself (malformed, wrong method or version)."""

    now: float
    status: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class PongReceived:
    """A pong frame arrived (RFC 6455 §5.5.3)."""

    now: float
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete text (``str``) or binary (``bytes``) message arrived."""

    now: float
    data: str | bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ActivitySeen:
    """Some other frame arrived (a ping from the peer, a fragment)."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class ClientSeqReported:
    """The client says the last server sequence number it processed."""

    now: float
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class SendRequested:
    """The application sends a message; ``buffered`` is the transport's
    outbound buffer in bytes, for the write-buffer guard."""

    now: float
    data: str | bytes
    critical: bool
    buffered: int


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribe:
    """The connection joins a pub/sub channel."""

    now: float
    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The connection leaves a pub/sub channel."""

    now: float
    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class CloseRequested:
    """The application closes the connection with this code and reason."""

    now: float
    code: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's close frame arrived; ``code`` is None if it carried none."""

    now: float
    code: int | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class PeerMisbehaved:
    """The wire found the peer breaking the protocol or a limit."""

    now: float
    cause: TerminationCause
    code: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerFailed:
    """The application handler raised."""

    now: float
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerReturned:
    """The application handler returned while the connection was open."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class ReadingPaused:
    """The handler is behind: the driver stopped reading the socket."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class ReadingResumed:
    """The handler caught up: the driver reads the socket again."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelsReleased:
    """The driver released the channels of a ``ReleaseChannels`` action."""

    now: float
    buffered: int


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelReleaseFailed:
    """Releasing the channels raised; teardown continues with 1011."""

    now: float
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class DrainRequested:
    """The server is shutting down."""

    now: float


@dataclasses.dataclass(frozen=True, slots=True)
class TerminateRequested:
    """The server drops the connection at once (slow consumer, limits)."""

    now: float
    cause: TerminationCause


@dataclasses.dataclass(frozen=True, slots=True)
class TransportLost:
    """The TCP connection ended under us: EOF, reset or a socket error."""

    now: float
    error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class TimerFired:
    """The connection's deadline passed; ``stalled`` marks a late tick."""

    now: float
    stalled: bool


Event = (
    UpgradeRequested
    | UpgradeInvalid
    | PongReceived
    | MessageReceived
    | ActivitySeen
    | ClientSeqReported
    | SendRequested
    | Subscribe
    | Unsubscribe
    | CloseRequested
    | PeerClosed
    | PeerMisbehaved
    | HandlerFailed
    | HandlerReturned
    | ReadingPaused
    | ReadingResumed
    | ChannelsReleased
    | ChannelReleaseFailed
    | DrainRequested
    | TerminateRequested
    | TransportLost
    | TimerFired
)
