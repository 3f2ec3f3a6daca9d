"""The client role, sans-IO: the other half of the lifecycle.

* :class:`ClientConnection`: one connection's bytes (the handshake, masked
  frames, the server's liveness judged by the same rule as the server's);
* :class:`ReconnectPolicy` and :class:`Reconnector`: which endings reconnect
  and after how long (exponential backoff, full jitter);
* :class:`Subscriptions`: the channels to resume, with ``since``;
* :class:`ClientSession`: all of it across connections, for a driver.

The drivers (``wslifecycle.drivers.asyncio.connect`` and friends) bind it to
sockets; docs/client.md explains the policy and the resume protocol.
"""

from __future__ import annotations

from .connection import ClientConnection
from .handshake import Refused, ResponseReader, Upgraded, render_request
from .outcome import Outcome
from .policy import RECONNECT_CODES, RECONNECT_STATUSES, ReconnectPolicy
from .reconnect import Reconnector, Retry, Stop
from .resume import ChannelCursor, RelayFrame, Subscriptions
from .session import ClientSession, Received, client_config
from .url import Target, parse_url

__all__ = [
    "RECONNECT_CODES",
    "RECONNECT_STATUSES",
    "ChannelCursor",
    "ClientConnection",
    "ClientSession",
    "Outcome",
    "Received",
    "ReconnectPolicy",
    "Reconnector",
    "Refused",
    "RelayFrame",
    "ResponseReader",
    "Retry",
    "Stop",
    "Subscriptions",
    "Target",
    "Upgraded",
    "client_config",
    "parse_url",
    "render_request",
]
