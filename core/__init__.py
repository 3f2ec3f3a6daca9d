"""wslifecycle: server-side WebSocket connections that never leak, lie or die silently.

The package is the sans-IO core: :class:`Scheduler` (one timer for many
connections) makes :class:`ConnectionLifecycle` objects that consume inputs
and queue :mod:`~wslifecycle.actions`. Drivers that bind it to real sockets
live in :mod:`wslifecycle.drivers`; nothing here does I/O, reads a clock or
draws randomness.
"""

from __future__ import annotations

from . import actions, events
from .causes import AlertKind, TerminationCause
from .close_codes import CloseCode, is_sendable, validate_close
from .config import Config, HeartbeatMode, OriginValidator
from .entropy import Entropy
from .exceptions import (
    ConfigError,
    ConnectionClosed,
    InvalidCloseCode,
    InvalidTransition,
    LifecycleError,
    WSLifecycleError,
)
from .lifecycle import ConnectionLifecycle
from .metrics import Histogram, Metrics, MetricsSnapshot
from .origin import origin_allowed
from .scheduler import Scheduler
from .transitions import ClosingStep, Input, State

__all__ = [
    "AlertKind",
    "CloseCode",
    "ClosingStep",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionLifecycle",
    "Entropy",
    "HeartbeatMode",
    "Histogram",
    "Input",
    "InvalidCloseCode",
    "InvalidTransition",
    "LifecycleError",
    "Metrics",
    "MetricsSnapshot",
    "OriginValidator",
    "Scheduler",
    "State",
    "TerminationCause",
    "WSLifecycleError",
    "actions",
    "events",
    "is_sendable",
    "origin_allowed",
    "validate_close",
]

__version__ = "0.1.0"
