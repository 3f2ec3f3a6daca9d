"""Why a connection ended, and what an alert is about.

Every connection that leaves ACTIVE (or never reaches it) records exactly one
:class:`TerminationCause`: the first reason it started to end. Metrics count
connections by it; every ``Terminate`` action carries one too.
"""

from __future__ import annotations

import enum

__all__ = ["AlertKind", "TerminationCause"]


class TerminationCause(enum.Enum):
    """The one reason a connection ended."""

    #: The application closed it (code 1000 or an application code).
    APPLICATION_CLOSE = "application_close"
    #: The peer sent a close frame first.
    PEER_CLOSE = "peer_close"
    #: No pong for ``max_missed_pongs`` intervals (docs/theory.md).
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    #: No echo of the JSON application heartbeat for ``max_missed_pongs`` intervals.
    APP_HEARTBEAT_TIMEOUT = "app_heartbeat_timeout"
    #: The HTTP upgrade did not complete within ``handshake_timeout``.
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    #: The closing handshake did not complete within ``close_timeout``.
    CLOSE_TIMEOUT = "close_timeout"
    #: The Origin did not pass the origin policy (HTTP 403).
    ORIGIN_REJECTED = "origin_rejected"
    #: The upgrade request was refused for another reason (HTTP 4xx).
    HANDSHAKE_REJECTED = "handshake_rejected"
    #: The server is shutting down (HTTP 503 before the upgrade, 1001 after).
    SERVER_DRAINING = "server_draining"
    #: The server drain deadline passed before the closing handshake finished.
    DRAIN_DEADLINE = "drain_deadline"
    #: The peer broke RFC 6455 (1002).
    PROTOCOL_ERROR = "protocol_error"
    #: Text that is not UTF-8, or a payload the application cannot accept (1007).
    INVALID_PAYLOAD = "invalid_payload"
    #: A message or frame over a configured cap (1009).
    MESSAGE_TOO_BIG = "message_too_big"
    #: A policy the server enforces (1008).
    POLICY_VIOLATION = "policy_violation"
    #: The application handler raised (1011).
    HANDLER_ERROR = "handler_error"
    #: Releasing pub/sub channels failed during teardown (1011).
    TEARDOWN_ERROR = "teardown_error"
    #: The peer stopped reading and the write buffer outgrew its limit.
    SLOW_CONSUMER = "slow_consumer"
    #: The server is at its connection limit (HTTP 503 before the upgrade).
    CONNECTION_LIMIT = "connection_limit"
    #: A plain HTTP request (``/healthz``, ``/metrics``) was answered, then
    #: closed. A request, not a connection: it is counted in
    #: ``http_requests``, never in ``closed_by_cause`` (``metrics.py``).
    PLAIN_HTTP = "plain_http"
    #: The handler stopped taking messages: reading stayed paused for
    #: max_missed_pongs + 1 heartbeat slots (close 1013, try again later).
    HANDLER_STALLED = "handler_stalled"
    #: The server was stopped without a drain (its driver was cancelled).
    SERVER_STOPPED = "server_stopped"
    #: The TCP connection ended under us (EOF, reset, or a socket error).
    TRANSPORT_LOST = "transport_lost"


class AlertKind(enum.Enum):
    """What an :class:`~wslifecycle.actions.Alert` reports."""

    #: The driver's timer fired later than ``stall_threshold``: the event loop
    #: (or I/O thread) was blocked. The late tick blamed no peer.
    LOOP_STALL = "loop_stall"
    #: Releasing channels failed; the connection is closed with 1011.
    TEARDOWN_FAILED = "teardown_failed"
    #: A peer stopped reading and was terminated (cause ``slow_consumer``).
    #: The core reports that as a ``Terminate``; drivers record this alert
    #: of it among the hub's recent alerts (``value``: bytes unsent).
    SLOW_CONSUMER = "slow_consumer"
