"""The liveness rule (docs/theory.md), in one place.

Each connection is due once per ``heartbeat_interval``, at its own phase.
When it is due, :func:`decide` says what happens:

* **STALL**: the tick came later than ``stall_threshold``, or the driver has
  paused reading this socket because the application is behind; either way
  the server, not the peer, is late, and pongs may sit unread. Nobody is
  charged a miss or terminated; the connection waits for its next slot.
* **TIMEOUT**: ``max_missed_pongs`` probes are unanswered *and* the latest
  one has been out for a full interval: terminate.
* **DEFER**: the threshold is reached but the latest probe went out late (the
  previous tick was late), so the peer has not yet had one full interval to
  answer. Look again when it has. This is what keeps a peer that answers
  within one interval safe even when ticks jitter; it delays a timeout by at
  most the jitter.
* **QUIET**: with ``activity_is_liveness``, the peer sent something since its
  last slot. No probe is sent, but a miss is still counted, so the detection
  bound is unchanged. Only allowed while the count stays below the
  threshold, so nobody is ever terminated without a real probe.
* **PROBE**: count a miss first (the pong, if it comes, resets it), then
  send the probe.

Bound: let L be the most the driver's timer fires after a deadline: up to
``timer_slack`` by design (deadlines are rounded up to the slack grid so that
connections share wake-ups) plus the event loop's own lateness. A peer silent from
t0 is probed at its slots p1 ≤ t0 + I, p2, ...; the count reaches ``max_missed`` at p_max, and the
timeout check is due at p_(max+1), or, if the last probe went out late, at
most L after it (DEFER); that check fires at most L late. So the peer is
terminated by t0 + (max_missed + 1) × I + 2L. A peer whose answers come back
within one interval of each probe is reset before any tick can find the
count at the threshold with a probe a full interval old, so it is never
terminated.
"""

from __future__ import annotations

import enum
import json

__all__ = ["Decision", "decide", "heartbeat_echo_id", "heartbeat_text"]


class Decision(enum.Enum):
    """What a due connection's heartbeat does now."""

    PROBE = "probe"
    QUIET = "quiet"
    DEFER = "defer"
    TIMEOUT = "timeout"
    STALL = "stall"


# Module constants: an Enum member looked up on its class costs a call.
_PROBE, _QUIET, _DEFER = Decision.PROBE, Decision.QUIET, Decision.DEFER
_TIMEOUT, _STALL = Decision.TIMEOUT, Decision.STALL


def decide(
    now: float,
    missed: int,
    last_probe_at: float,
    interval: float,
    max_missed: int,
    stalled: bool,
    active_since_due: bool,
) -> Decision:
    """The heartbeat decision for one due connection (see the module docstring).

    ``missed`` is the larger of the pong and echo counters; ``last_probe_at``
    is when the latest real probe went out (``-inf`` if none has).
    """
    if stalled:
        return _STALL
    if missed >= max_missed:
        # Compared as a sum, not a difference, so that DEFER's new deadline
        # (last_probe_at + interval) is always strictly later than now.
        if now < last_probe_at + interval:
            return _DEFER
        return _TIMEOUT
    if active_since_due and missed + 1 < max_missed:
        return _QUIET
    return _PROBE


# The JSON application heartbeat: the server sends it, the peer echoes it as is.
_HEARTBEAT_PREFIX = '{"type":"heartbeat","id":"'


def heartbeat_text(probe_id: str) -> str:
    """The application heartbeat message for one probe."""
    return f'{_HEARTBEAT_PREFIX}{probe_id}"}}'


def heartbeat_echo_id(data: str | bytes) -> str | None:
    """The probe id if ``data`` is an echo of an application heartbeat, else None.

    Cheap for ordinary traffic: only a text JSON object that mentions
    "heartbeat" is parsed. Any object with ``"type": "heartbeat"`` counts,
    whatever its spacing. Never raises: this runs on peer input.
    """
    if not isinstance(data, str) or '"heartbeat"' not in data or not data.lstrip().startswith("{"):
        return None
    try:
        decoded = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: deeply nested peer input
        return None
    if not isinstance(decoded, dict) or decoded.get("type") != "heartbeat":
        return None
    probe_id = decoded.get("id")
    return probe_id if isinstance(probe_id, str) else ""
