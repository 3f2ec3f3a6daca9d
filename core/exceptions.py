"""Exceptions raised by wslifecycle.

Peer misbehaviour never raises: it fails the connection with the right close
code and records a :class:`~wslifecycle.TerminationCause`. Exceptions are for
*caller* mistakes, raised at once, before any output is queued::

    WSLifecycleError
    ├── ConfigError            a Config field has a bad value (also a ValueError)
    └── LifecycleError         the caller used a connection wrongly
        ├── InvalidTransition  an input that the current state does not accept
        ├── ConnectionClosed   send / subscribe on a connection that is closing
        └── InvalidCloseCode   a close code or reason that may not be sent
                               (also a ValueError)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionClosed",
    "InvalidCloseCode",
    "InvalidTransition",
    "LifecycleError",
    "WSLifecycleError",
]


class WSLifecycleError(Exception):
    """Base class of every exception wslifecycle raises on purpose."""


class ConfigError(WSLifecycleError, ValueError):
    """A configuration value is invalid.

    ``field`` names the setting and ``reason`` says what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class LifecycleError(WSLifecycleError):
    """The caller used a :class:`~wslifecycle.ConnectionLifecycle` wrongly."""


class InvalidTransition(LifecycleError):
    """The current state has no transition for this input (see ``transitions``)."""

    def __init__(self, state: object, input_: object) -> None:
        super().__init__(f"no transition from {state} on {input_}")
        self.state = state
        self.input = input_


class ConnectionClosed(LifecycleError):
    """The connection is draining or closed; it accepts no new sends or channels."""


class InvalidCloseCode(LifecycleError, ValueError):
    """A close code outside RFC 6455 §7.4, one that must never be sent, or a
    reason longer than a control frame allows (§5.5)."""
