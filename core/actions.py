"""What the core asks its driver to do: small, frozen, slotted dataclasses.

A driver takes them with :meth:`ConnectionLifecycle.take_actions` and carries
them out in order. The order is part of the contract: ``ReleaseChannels``
always comes before the ``SendClose`` or ``Terminate`` of the same connection.
"""

from __future__ import annotations

import dataclasses
import json

from .causes import AlertKind, TerminationCause
from .handshake import HandshakeRequest
from .transitions import State

__all__ = [
    "AcceptUpgrade",
    "Action",
    "Alert",
    "CloseTransport",
    "DeliverMessage",
    "HandshakeRequested",
    "RejectUpgrade",
    "ReleaseChannels",
    "SendClose",
    "SendHeartbeat",
    "SendMessage",
    "SendPing",
    "SendStateDrift",
    "StateChanged",
    "Terminate",
]


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptUpgrade:
    """Complete the HTTP upgrade (101 Switching Protocols)."""

    connection_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeRequested:
    """The upgrade request passed the origin policy and waits for the
    handshake hook: answer with ``ServerConnection.answer_upgrade`` (at once
    or later; the handshake timeout runs meanwhile)."""

    request: HandshakeRequest


@dataclasses.dataclass(frozen=True, slots=True)
class RejectUpgrade:
    """Refuse the upgrade with an HTTP status, then close the TCP connection."""

    status: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class SendPing:
    """Send an RFC 6455 ping frame with this payload (≤ 125 bytes, §5.5)."""

    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send the JSON application heartbeat as a text message; the peer echoes it."""

    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class SendMessage:
    """Send an application message; ``seq`` is the server sequence number it took."""

    data: str | bytes
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class DeliverMessage:
    """Hand a message from the peer to the application."""

    data: str | bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseChannels:
    """Remove the connection from these pub/sub channels, now.

    During a graceful close the driver then calls ``channels_released`` (or
    ``channel_release_failed``) so the close frame can follow. Before a
    ``Terminate`` no acknowledgement is needed.
    """

    channels: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class SendStateDrift:
    """Tell the client its last sequence number differs from the server's."""

    server_seq: int
    client_seq: int

    @property
    def text(self) -> str:
        """The notice as sent: a JSON text message."""
        return json.dumps(
            {"type": "STATE_DRIFT", "serverSeq": self.server_seq, "clientSeq": self.client_seq},
            separators=(",", ":"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SendClose:
    """Send a close frame (RFC 6455 §5.5.1). ``code`` is always sendable."""

    code: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class CloseTransport:
    """The closing handshake (or HTTP refusal) is done: close TCP (FIN).

    The server closes TCP first (RFC 6455 §7.1.1)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Terminate:
    """Drop the TCP connection now (RST, no close frame): zombies, timeouts."""

    cause: TerminationCause


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator should see; ``value`` is in seconds for stalls."""

    kind: AlertKind
    connection_id: str | None
    value: float
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class StateChanged:
    """The connection moved to ``current`` (one structured log line each)."""

    connection_id: str
    previous: State
    current: State
    cause: TerminationCause | None


Action = (
    AcceptUpgrade
    | HandshakeRequested
    | RejectUpgrade
    | SendPing
    | SendHeartbeat
    | SendMessage
    | DeliverMessage
    | ReleaseChannels
    | SendStateDrift
    | SendClose
    | CloseTransport
    | Terminate
    | Alert
    | StateChanged
)
