"""Every state transition of a connection, as data.

Theory of operation
===================

A server-side connection lives through four states, only ever forwards::

    OPEN ──upgrade accepted──▶ ACTIVE ──close / drain / failure──▶ DRAINING ──▶ CLOSED
      │                          │                                               ▲
      └── refused, timed out ────┴──── heartbeat timeout, transport lost ────────┘

* **OPEN**: TCP is accepted, the HTTP upgrade is not complete. The only timer
  is the handshake deadline (slowloris guard). The request is either accepted
  (→ ACTIVE), refused with an HTTP status, or was a plain HTTP request that
  is answered (→ CLOSED).
* **ACTIVE**: messages flow. The only timer is the next heartbeat. Each
  heartbeat either probes (ping, JSON heartbeat) or, after ``max_missed_pongs``
  unanswered probes, terminates (→ CLOSED). The rule is in ``heartbeat.py``.
* **DRAINING**: teardown has begun and runs in one order: channels are
  released (the driver acknowledges), a STATE_DRIFT notice may go out, then
  the close frame. It ends when both close frames have crossed (→ CLOSED) or
  at the close deadline (terminate, → CLOSED). Sends and new channels are
  refused here, so nothing is fanned out to a closing socket. Its own steps
  are a small machine of their own, :data:`CLOSING_STEPS` below.
* **CLOSED**: terminal. Every later input is ignored (a late pong, bytes that
  were already in flight) and nothing is emitted; sends raise.

Reading from the socket may pause only while ACTIVE (the handler is behind:
READING_PAUSED / READING_RESUMED); leaving ACTIVE resumes it, so a closing
connection always reads the peer's close frame.

Each state has exactly one deadline, so a connection is one entry in the
scheduler's heap. The table below is the whole truth about which input is
legal where; a pair missing from it is caller misuse and raises
:class:`~wslifecycle.InvalidTransition`, never a silent no-op. What an input
*does* (the actions it emits) is in ``lifecycle.py``; the table only says
where it may lead.
"""

from __future__ import annotations

import enum

from .exceptions import InvalidTransition

__all__ = [
    "CLOSING_STEPS",
    "TRANSITIONS",
    "ClosingStep",
    "Input",
    "State",
    "next_closing_step",
    "next_state",
]


class State(enum.Enum):
    """Where a connection is in its life. Values are ordered: ``rank``."""

    OPEN = "open"
    ACTIVE = "active"
    DRAINING = "draining"
    CLOSED = "closed"

    # Identity, not Enum's hash of the name (a Python-level call): the
    # transition table is looked up on every ping, pong and message.
    __hash__ = object.__hash__

    @property
    def rank(self) -> int:
        """Position in OPEN < ACTIVE < DRAINING < CLOSED; never decreases."""
        return _RANK[self]


_RANK = {State.OPEN: 0, State.ACTIVE: 1, State.DRAINING: 2, State.CLOSED: 3}


class Input(enum.Enum):
    """Everything that can happen to a connection, decided (accepted or
    refused, probe or timeout) before it is looked up in the table."""

    UPGRADE_ACCEPTED = "upgrade_accepted"
    UPGRADE_REJECTED = "upgrade_rejected"
    PLAIN_HTTP = "plain_http"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PONG = "pong"
    MESSAGE = "message"
    ACTIVITY = "activity"
    CLIENT_SEQ = "client_seq"
    SEND = "send"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    CLOSE = "close"
    PEER_CLOSE = "peer_close"
    CHANNELS_RELEASED = "channels_released"
    RELEASE_FAILED = "release_failed"
    CLOSE_COMPLETE = "close_complete"
    CLOSE_TIMEOUT = "close_timeout"
    HANDLER_ERROR = "handler_error"
    HANDLER_RETURNED = "handler_returned"
    READING_PAUSED = "reading_paused"
    READING_RESUMED = "reading_resumed"
    PROTOCOL_ERROR = "protocol_error"
    DRAIN = "drain"
    TERMINATE = "terminate"
    TRANSPORT_LOST = "transport_lost"

    # Identity, not Enum's hash of the name (a Python-level call): the
    # transition table is looked up on every ping, pong and message.
    __hash__ = object.__hash__


OPEN, ACTIVE, DRAINING, CLOSED = State.OPEN, State.ACTIVE, State.DRAINING, State.CLOSED

#: (state, input) → next state. Read a row as "in <state>, <input> leads to <next>".
TRANSITIONS: dict[tuple[State, Input], State] = {
    # OPEN: the upgrade is pending.
    (OPEN, Input.UPGRADE_ACCEPTED): ACTIVE,
    (OPEN, Input.UPGRADE_REJECTED): CLOSED,
    (OPEN, Input.PLAIN_HTTP): CLOSED,  # /healthz, /metrics: answered, then closed
    (OPEN, Input.HANDSHAKE_TIMEOUT): CLOSED,
    (OPEN, Input.DRAIN): CLOSED,  # refused with 503
    (OPEN, Input.TERMINATE): CLOSED,
    (OPEN, Input.TRANSPORT_LOST): CLOSED,
    # ACTIVE: messages flow, the heartbeat runs.
    (ACTIVE, Input.PONG): ACTIVE,
    (ACTIVE, Input.MESSAGE): ACTIVE,
    (ACTIVE, Input.ACTIVITY): ACTIVE,
    (ACTIVE, Input.CLIENT_SEQ): ACTIVE,
    (ACTIVE, Input.SEND): ACTIVE,
    (ACTIVE, Input.SUBSCRIBE): ACTIVE,
    (ACTIVE, Input.UNSUBSCRIBE): ACTIVE,
    (ACTIVE, Input.HEARTBEAT): ACTIVE,
    (ACTIVE, Input.HEARTBEAT_TIMEOUT): CLOSED,  # terminate: a zombie gets no close frame
    (ACTIVE, Input.CLOSE): DRAINING,
    (ACTIVE, Input.PEER_CLOSE): DRAINING,
    (ACTIVE, Input.HANDLER_ERROR): DRAINING,  # close 1011
    (ACTIVE, Input.HANDLER_RETURNED): DRAINING,  # close 1000
    (ACTIVE, Input.READING_PAUSED): ACTIVE,  # the handler is behind: unread pongs blame nobody
    (ACTIVE, Input.READING_RESUMED): ACTIVE,
    (ACTIVE, Input.PROTOCOL_ERROR): DRAINING,  # close 1002 / 1007 / 1009
    (ACTIVE, Input.DRAIN): DRAINING,  # close 1001
    (ACTIVE, Input.TERMINATE): CLOSED,
    (ACTIVE, Input.TRANSPORT_LOST): CLOSED,
    # DRAINING: release channels, (notice), close frame, wait for the peer's.
    (DRAINING, Input.PONG): DRAINING,
    (DRAINING, Input.MESSAGE): DRAINING,  # not delivered: the handler is done
    (DRAINING, Input.ACTIVITY): DRAINING,
    (DRAINING, Input.CLIENT_SEQ): DRAINING,
    (DRAINING, Input.UNSUBSCRIBE): DRAINING,  # already released
    (DRAINING, Input.CLOSE): DRAINING,  # already closing
    (DRAINING, Input.PEER_CLOSE): DRAINING,
    (DRAINING, Input.CHANNELS_RELEASED): DRAINING,
    (DRAINING, Input.RELEASE_FAILED): DRAINING,  # close 1011 instead
    (DRAINING, Input.CLOSE_COMPLETE): CLOSED,
    (DRAINING, Input.CLOSE_TIMEOUT): CLOSED,  # terminate
    (DRAINING, Input.HANDLER_ERROR): DRAINING,  # already closing: nothing to add
    (DRAINING, Input.HANDLER_RETURNED): DRAINING,
    (DRAINING, Input.READING_PAUSED): DRAINING,  # no: the peer's close frame must be read
    (DRAINING, Input.READING_RESUMED): DRAINING,
    (DRAINING, Input.PROTOCOL_ERROR): CLOSED,  # misbehaving while closing: terminate
    (DRAINING, Input.DRAIN): DRAINING,
    (DRAINING, Input.TERMINATE): CLOSED,
    (DRAINING, Input.TRANSPORT_LOST): CLOSED,
    # CLOSED: late inputs are ignored; nothing is emitted.
    (CLOSED, Input.PONG): CLOSED,
    (CLOSED, Input.MESSAGE): CLOSED,
    (CLOSED, Input.ACTIVITY): CLOSED,
    (CLOSED, Input.CLIENT_SEQ): CLOSED,
    (CLOSED, Input.UNSUBSCRIBE): CLOSED,
    (CLOSED, Input.CLOSE): CLOSED,
    (CLOSED, Input.PEER_CLOSE): CLOSED,
    (CLOSED, Input.CHANNELS_RELEASED): CLOSED,
    (CLOSED, Input.RELEASE_FAILED): CLOSED,
    (CLOSED, Input.HANDLER_ERROR): CLOSED,
    (CLOSED, Input.HANDLER_RETURNED): CLOSED,
    (CLOSED, Input.READING_PAUSED): CLOSED,
    (CLOSED, Input.READING_RESUMED): CLOSED,
    (CLOSED, Input.PROTOCOL_ERROR): CLOSED,
    (CLOSED, Input.DRAIN): CLOSED,
    (CLOSED, Input.TERMINATE): CLOSED,
    (CLOSED, Input.TRANSPORT_LOST): CLOSED,
}


def next_state(state: State, input_: Input) -> State:
    """Where ``input_`` leads from ``state``; raises if the table has no entry."""
    try:
        return TRANSITIONS[state, input_]
    except KeyError:
        raise InvalidTransition(state, input_) from None


class ClosingStep(enum.Enum):
    """Where a DRAINING connection is in its teardown, in order:

    RELEASING (channels being released; nothing sent yet) → a STATE_DRIFT
    notice, if due → CLOSE_SENT (our close frame is out; the peer's is
    awaited) → COMPLETE (both close frames crossed: CLOSED, the server
    closing TCP first, RFC 6455 §7.1.1). A peer whose close frame arrives
    while we are still RELEASING is in RELEASING_PEER_CLOSED: once the
    channels are released, our close frame (the echo) completes it.
    """

    RELEASING = "releasing"
    RELEASING_PEER_CLOSED = "releasing_peer_closed"
    CLOSE_SENT = "close_sent"
    COMPLETE = "complete"


RELEASING, RELEASING_PEER_CLOSED = ClosingStep.RELEASING, ClosingStep.RELEASING_PEER_CLOSED
CLOSE_SENT, COMPLETE = ClosingStep.CLOSE_SENT, ClosingStep.COMPLETE

#: (closing step, input) → next step, for the inputs that move DRAINING
#: along. Releasing (acknowledged or failed) sends our close frame; a
#: release acknowledged twice, or a second close frame, changes nothing.
CLOSING_STEPS: dict[tuple[ClosingStep, Input], ClosingStep] = {
    (RELEASING, Input.CHANNELS_RELEASED): CLOSE_SENT,
    (RELEASING, Input.RELEASE_FAILED): CLOSE_SENT,  # the close carries 1011 instead
    (RELEASING, Input.PEER_CLOSE): RELEASING_PEER_CLOSED,
    (RELEASING_PEER_CLOSED, Input.CHANNELS_RELEASED): COMPLETE,
    (RELEASING_PEER_CLOSED, Input.RELEASE_FAILED): COMPLETE,
    (RELEASING_PEER_CLOSED, Input.PEER_CLOSE): RELEASING_PEER_CLOSED,
    (CLOSE_SENT, Input.PEER_CLOSE): COMPLETE,
    (CLOSE_SENT, Input.CHANNELS_RELEASED): CLOSE_SENT,
    (CLOSE_SENT, Input.RELEASE_FAILED): CLOSE_SENT,
}


def next_closing_step(step: ClosingStep, input_: Input) -> ClosingStep:
    """Where ``input_`` leads a DRAINING connection at ``step``; raises if
    the table has no entry (COMPLETE has none: the connection is CLOSED)."""
    try:
        return CLOSING_STEPS[step, input_]
    except KeyError:
        raise InvalidTransition(step, input_) from None
