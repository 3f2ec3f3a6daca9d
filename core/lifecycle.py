"""One server-side connection's life: ``ConnectionLifecycle``.

It consumes inputs (methods, or :mod:`~wslifecycle.events` through
:meth:`~ConnectionLifecycle.handle`) and queues :mod:`~wslifecycle.actions`
that the driver takes with :meth:`~ConnectionLifecycle.take_actions`. It knows
nothing of bytes or sockets. Where an input may lead is decided by the table
in ``transitions.py``; the heartbeat rule is ``heartbeat.py``; this module
applies them and keeps the session state.

Lifecycles are made by :meth:`Scheduler.open <wslifecycle.Scheduler.open>`,
which owns the one timer they share.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, assert_never

from . import events as ev
from .actions import (
    AcceptUpgrade,
    Action,
    Alert,
    CloseTransport,
    DeliverMessage,
    RejectUpgrade,
    ReleaseChannels,
    SendClose,
    SendHeartbeat,
    SendMessage,
    SendPing,
    SendStateDrift,
    StateChanged,
    Terminate,
)
from .causes import AlertKind, TerminationCause
from .close_codes import CloseCode, is_sendable, validate_close
from .exceptions import ConnectionClosed, InvalidCloseCode
from .heartbeat import Decision, decide, heartbeat_echo_id, heartbeat_text
from .origin import origin_refusal
from .transitions import ClosingStep, Input, State, next_closing_step, next_state

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["ConnectionLifecycle"]

OPEN, ACTIVE, DRAINING, CLOSED = State.OPEN, State.ACTIVE, State.DRAINING, State.CLOSED
HEARTBEAT = Input.HEARTBEAT  # on every ping's path

# Closes that fail the connection for the peer's misbehaviour get no
# STATE_DRIFT notice: a data frame to a broken peer helps nobody.
_NO_DRIFT_NOTICE = frozenset({1002, 1003, 1007, 1008, 1009, 1010})


@dataclasses.dataclass(frozen=True, slots=True)
class _ClosePlan:
    """What a teardown will send once the channels are released."""

    code: int
    reason: str
    drift_notice: bool  # a STATE_DRIFT notice first, if the client is behind


class ConnectionLifecycle:
    """The state machine of one connection: OPEN → ACTIVE → DRAINING → CLOSED.

    Public attributes are read-only for callers: ``id``, ``state``, ``cause``
    (why it ended, once it has begun to), ``opened_at``, ``seq`` (messages
    sent), ``client_seq`` (last one the client reported), ``missed_pongs``,
    ``missed_echoes``, ``latency`` (last pong round trip, seconds),
    ``deadline`` (when the scheduler must call next), ``reading_paused``,
    ``closing_step`` (where a DRAINING connection is in its teardown).
    """

    __slots__ = (
        "_actions",
        "_active_since_due",
        "_channels",
        "_close_plan",
        "_last_probe_at",
        "_paused_slots",
        "_ping_payload",
        "_probe_id",
        "_scheduler",
        "cause",
        "client_seq",
        "closing_step",
        "deadline",
        "id",
        "latency",
        "missed_echoes",
        "missed_pongs",
        "opened_at",
        "reading_paused",
        "seq",
        "state",
    )

    def __init__(self, scheduler: Scheduler, connection_id: str, now: float) -> None:
        """Use :meth:`Scheduler.open`; it registers the lifecycle's timer."""
        self._scheduler = scheduler
        self.id = connection_id
        self.state = OPEN
        self.cause: TerminationCause | None = None
        self.opened_at = now
        self.seq = 0
        self.client_seq: int | None = None
        self.missed_pongs = 0
        self.missed_echoes = 0
        self.latency: float | None = None
        self.deadline: float | None = None
        #: DRAINING's own step (None in every other state).
        self.closing_step: ClosingStep | None = None
        self._close_plan: _ClosePlan | None = None
        #: True while the driver must not read this socket: the handler is
        #: behind (:meth:`pause_reading`). Unread pongs then blame nobody.
        self.reading_paused = False
        self._actions: list[Action] = []
        self._channels: set[str] | None = None
        self._last_probe_at = -math.inf
        self._ping_payload: bytes | None = None
        self._probe_id: str | None = None
        self._active_since_due = False
        self._paused_slots = 0
        self._set_deadline(scheduler.handshake_deadline(now))

    def __repr__(self) -> str:
        return f"<ConnectionLifecycle {self.id} {self.state.value}>"

    # ------------------------------------------------------------------ output

    def take_actions(self) -> list[Action]:
        """Every action queued since the last call, in order; the queue empties."""
        actions = self._actions
        if not actions:
            return []
        self._actions = []
        return actions

    @property
    def has_actions(self) -> bool:
        """True while actions are queued (:meth:`take_actions` would return some)."""
        return bool(self._actions)

    def take_lone_ping(self) -> bytes | None:
        """The payload of the ping to send, when a ping is the only action
        queued (the commonest outcome of a timer); it is taken. None: take
        the actions as usual. The hub's fast lane for heartbeats."""
        actions = self._actions
        if len(actions) == 1:
            action = actions[0]
            if type(action) is SendPing:
                self._actions = []
                return action.payload
        return None

    @property
    def channels(self) -> frozenset[str]:
        """The pub/sub channels the connection is subscribed to."""
        return frozenset(self._channels) if self._channels else frozenset()

    @property
    def accepts_sends(self) -> bool:
        """True while messages may be sent (ACTIVE). A broker checks this
        before fan-out so nothing reaches a connection on its way down."""
        return self.state is ACTIVE

    # ---------------------------------------------------------------- handshake

    def request_upgrade(self, now: float, *, origin: str | None, host: str | None) -> bool:
        """A well-formed upgrade request arrived and nobody else judges it:
        :meth:`screen_upgrade`, then :meth:`accept_upgrade`. Returns whether
        it is accepted."""
        return self.screen_upgrade(now, origin=origin, host=host) and self.accept_upgrade(now)

    def screen_upgrade(self, now: float, *, origin: str | None, host: str | None) -> bool:
        """The first step of every handshake. Refused with HTTP 503 while the
        server drains and 403 when the origin policy says no (its body says
        why); otherwise the request may go to the handshake hook and the
        connection stays OPEN, its handshake deadline running. Returns
        whether it passed."""
        next_state(self.state, Input.UPGRADE_ACCEPTED)  # raises once past OPEN
        scheduler = self._scheduler
        if scheduler.draining:
            self._reject(
                Input.UPGRADE_REJECTED,
                503,
                "server is shutting down",
                TerminationCause.SERVER_DRAINING,
            )
            return False
        refusal = origin_refusal(scheduler.config, origin, host)
        if refusal is not None:
            self._reject(Input.UPGRADE_REJECTED, 403, refusal, TerminationCause.ORIGIN_REJECTED)
            return False
        return True

    def accept_upgrade(self, now: float) -> bool:
        """The handshake hook accepted (or there is none): ACTIVE, unless
        ``max_connections`` are ACTIVE or DRAINING (HTTP 503). Returns
        whether it is accepted."""
        scheduler = self._scheduler
        limit = scheduler.config.max_connections
        if limit is not None:
            counts = scheduler.metrics.connections
            if counts[ACTIVE] + counts[DRAINING] >= limit:
                self._reject(
                    Input.UPGRADE_REJECTED, 503, "server is full", TerminationCause.CONNECTION_LIMIT
                )
                return False
        self._move(Input.UPGRADE_ACCEPTED, None)
        scheduler.metrics.handshakes_accepted += 1
        self._actions.append(AcceptUpgrade(self.id))
        self._set_deadline(scheduler.first_heartbeat_slot(now))
        return True

    def reject_upgrade(self, now: float, status: int, reason: str) -> None:
        """The wire, or the handshake hook, refused the request (400, 401,
        405, 426, 431, a redirect, ...)."""
        if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 599:
            raise ValueError(f"an upgrade refusal needs an HTTP status 300-599, got {status!r}")
        self._reject(Input.UPGRADE_REJECTED, status, reason, TerminationCause.HANDSHAKE_REJECTED)

    def serve_plain_http(self, now: float, path: str) -> None:
        """The head is a plain HTTP request for ``path`` (``/healthz``,
        ``/metrics``); the wire answers it, then the transport is closed.

        A request, not a connection: it leaves the connection gauge now,
        before its answer is made (a scrape must not count itself), and is
        counted in ``http_requests`` alone: no closed total, no handshake
        counter. ``StateChanged`` still tells the driver (cause PLAIN_HTTP).
        """
        state = next_state(self.state, Input.PLAIN_HTTP)  # raises unless OPEN
        self.state = state
        self.cause = TerminationCause.PLAIN_HTTP
        metrics = self._scheduler.metrics
        metrics.connections[OPEN] -= 1  # counted by Scheduler.open
        metrics.http_requests[path] += 1
        self._actions.append(StateChanged(self.id, OPEN, state, self.cause))
        self._actions.append(CloseTransport())
        self.deadline = None
        self._scheduler.retire(self)

    def _reject(self, input_: Input, status: int, reason: str, cause: TerminationCause) -> None:
        # The table's (OPEN, input_): a drain is its own row, every other
        # refusal is UPGRADE_REJECTED. Nothing here is time-stamped.
        self._move(input_, cause)
        self._scheduler.metrics.handshakes_rejected[status] += 1
        self._actions.append(RejectUpgrade(status, reason))
        self._actions.append(CloseTransport())
        self._closed()

    # ------------------------------------------------------------------ inbound

    def receive_pong(self, now: float, payload: bytes = b"") -> None:
        """A pong frame arrived. Any pong resets the missed count (RFC 6455
        §5.5.3 lets a pong answer only the latest ping); one that carries the
        latest ping's payload also yields a round-trip time."""
        state = self.state
        if state is not ACTIVE and state is not DRAINING:
            next_state(state, Input.PONG)  # raises in OPEN
            return
        metrics = self._scheduler.metrics
        metrics.pongs_received += 1
        self.missed_pongs = 0
        if payload == self._ping_payload:
            self._ping_payload = None
            rtt = now - self._last_probe_at
            self.latency = rtt
            metrics.observe_rtt(rtt)

    def receive_message(self, now: float, data: str | bytes) -> None:
        """A complete message arrived. It is delivered to the application
        (``DeliverMessage``) unless it is the echo of an application heartbeat."""
        state = self.state
        if state is not ACTIVE:
            next_state(state, Input.MESSAGE)  # raises in OPEN; dropped while closing
            return
        scheduler = self._scheduler
        scheduler.metrics.messages_received += 1
        if scheduler.app_heartbeat:
            probe_id = heartbeat_echo_id(data)
            if probe_id is not None:
                self._receive_echo(now, probe_id)
                return
        if scheduler.config.activity_is_liveness:
            self._prove_alive()
        self._actions.append(DeliverMessage(data))

    def _receive_echo(self, now: float, probe_id: str) -> None:
        metrics = self._scheduler.metrics
        metrics.app_heartbeat_echoes += 1
        self.missed_echoes = 0
        if probe_id == self._probe_id:
            self._probe_id = None
            metrics.observe_app_rtt(now - self._last_probe_at)

    def note_activity(self, now: float) -> None:
        """Some other frame arrived (a ping from the peer, a fragment). With
        ``activity_is_liveness`` it proves the peer alive."""
        state = self.state
        next_state(state, Input.ACTIVITY)  # raises in OPEN
        if state is ACTIVE and self._scheduler.config.activity_is_liveness:
            self._prove_alive()

    def _prove_alive(self) -> None:
        self.missed_pongs = 0
        self.missed_echoes = 0
        self._active_since_due = True

    def report_client_seq(self, now: float, seq: int) -> None:
        """The client reports the last server sequence number it processed;
        a mismatch at teardown sends a STATE_DRIFT notice."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"a client sequence number is an int ≥ 0, got {seq!r}")
        next_state(self.state, Input.CLIENT_SEQ)
        if self.state is not CLOSED:
            self.client_seq = seq

    # ------------------------------------------------------------------ outbound

    def send(
        self,
        data: str | bytes,
        *,
        buffered: int,
        critical: bool = False,
        sequenced: bool = True,
    ) -> int | None:
        """Queue a message; returns the server sequence number after it, or
        None if it was skipped.

        ``buffered`` is the transport's outbound buffer in bytes. A
        non-critical send is skipped (and counted) while it is at or above the
        write-buffer guard; a critical one goes out until ``max_write_buffer``,
        where the connection is terminated as a slow consumer (and None is
        returned: the message was not sent). A ``sequenced``
        send advances ``seq``, the number the client reports back for drift
        detection; replies that carry no state (echoes, acknowledgements) pass
        ``sequenced=False``. Raises :class:`ConnectionClosed` once the
        connection is draining or closed.
        """
        state = self.state
        if state is not ACTIVE:
            if state is OPEN:
                next_state(state, Input.SEND)  # raises InvalidTransition
            raise ConnectionClosed(f"connection {self.id} is {state.value}; cannot send")
        scheduler = self._scheduler
        config = scheduler.config
        if buffered >= config.max_write_buffer:
            # The peer stopped reading: cut it before its backlog grows further.
            self._terminate(Input.TERMINATE, TerminationCause.SLOW_CONSUMER)
            return None
        if not critical and buffered >= config.write_buffer_guard:
            scheduler.metrics.sends_skipped += 1
            return None
        if sequenced:
            self.seq += 1
        scheduler.metrics.messages_sent += 1
        self._actions.append(SendMessage(data, self.seq))
        return self.seq

    def subscribe(self, channel: str) -> None:
        """Record a channel subscription; released before any close or terminate."""
        state = self.state
        if state is not ACTIVE:
            if state is OPEN:
                next_state(state, Input.SUBSCRIBE)
            raise ConnectionClosed(f"connection {self.id} is {state.value}; cannot subscribe")
        if self._channels is None:
            self._channels = set()
        self._channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        """Forget a channel subscription (no effect if absent or already released)."""
        next_state(self.state, Input.UNSUBSCRIBE)
        if self._channels is not None:
            self._channels.discard(channel)

    # ------------------------------------------------------------------ closing

    def close(self, now: float, code: int = 1000, reason: str = "") -> None:
        """Begin the closing handshake with ``code`` (validated at once).

        Teardown runs in docs/theory.md's order: DRAINING, release channels
        (acknowledged by :meth:`channels_released`), a STATE_DRIFT notice if
        the client's sequence number differs, then the close frame. Closing a
        connection that is already closing or closed does nothing.
        """
        validate_close(code, reason)
        if self.state is OPEN:
            next_state(OPEN, Input.CLOSE)  # raises: refuse the upgrade instead
        if self.state is not ACTIVE:
            return
        self._begin_teardown(
            now, Input.CLOSE, TerminationCause.APPLICATION_CLOSE, code, reason, drift=True
        )

    def receive_close(self, now: float, code: int | None, reason: str = "") -> None:
        """The peer's close frame arrived (its code already checked by the wire).

        From ACTIVE the close is echoed after channels are released; if we
        had sent ours, the closing handshake is complete and the server closes
        TCP first (RFC 6455 §7.1.1).
        """
        state = self.state
        if state is ACTIVE:
            echo = code if code is not None and is_sendable(code) else 1000
            self._begin_teardown(
                now, Input.PEER_CLOSE, TerminationCause.PEER_CLOSE, echo, "", drift=False
            )
            self._closing(Input.PEER_CLOSE)
            return
        next_state(state, Input.PEER_CLOSE)  # raises in OPEN
        if state is DRAINING:
            self._closing(Input.PEER_CLOSE)

    def fail(self, now: float, cause: TerminationCause, code: int, reason: str = "") -> None:
        """The peer broke the protocol or a limit: close with ``code`` (RFC
        6455 §7.1.7). While already closing, the connection is terminated."""
        validate_close(code, reason)
        state = self.state
        if state is ACTIVE:
            self._begin_teardown(now, Input.PROTOCOL_ERROR, cause, code, reason, drift=False)
        elif state is DRAINING:
            self._terminate(Input.PROTOCOL_ERROR, cause)
        else:
            next_state(state, Input.PROTOCOL_ERROR)  # raises in OPEN

    def handler_failed(self, now: float, error: str) -> None:
        """The application handler raised: close with 1011 (internal error)."""
        if self.state is ACTIVE:
            self._begin_teardown(
                now,
                Input.HANDLER_ERROR,
                TerminationCause.HANDLER_ERROR,
                CloseCode.INTERNAL_ERROR,
                "internal error",
                drift=True,
            )
        else:
            next_state(self.state, Input.HANDLER_ERROR)  # raises in OPEN

    def handler_returned(self, now: float) -> None:
        """The application handler returned while the connection was still
        ACTIVE: it is done with it, so close normally (1000)."""
        if self.state is ACTIVE:
            self._begin_teardown(
                now,
                Input.HANDLER_RETURNED,
                TerminationCause.APPLICATION_CLOSE,
                CloseCode.NORMAL_CLOSURE,
                "",
                drift=True,
            )
        else:
            next_state(self.state, Input.HANDLER_RETURNED)  # raises in OPEN

    def pause_reading(self, now: float) -> None:
        """The handler is behind and the driver stops reading the socket.

        Only while ACTIVE (a closing connection must read the peer's close
        frame). Meanwhile pongs may sit unread, so no probe counts as missed;
        a pause that lasts ``max_missed_pongs`` + 1 heartbeat slots closes the
        connection with 1013 (``handler_stalled``)."""
        state = self.state
        next_state(state, Input.READING_PAUSED)  # raises in OPEN
        if state is ACTIVE:
            self.reading_paused = True

    def resume_reading(self, now: float) -> None:
        """The handler caught up: the driver reads the socket again."""
        next_state(self.state, Input.READING_RESUMED)  # raises in OPEN
        self.reading_paused = False

    def drain(self, now: float) -> None:
        """The server is shutting down: refuse a pending upgrade with 503, or
        close with 1001 (going away). Usually called by ``Scheduler.begin_drain``."""
        state = self.state
        if state is OPEN:
            self._reject(
                Input.DRAIN, 503, "server is shutting down", TerminationCause.SERVER_DRAINING
            )
        elif state is ACTIVE:
            self._begin_teardown(
                now,
                Input.DRAIN,
                TerminationCause.SERVER_DRAINING,
                CloseCode.GOING_AWAY,
                "server shutting down",
                drift=True,
            )
        else:
            next_state(state, Input.DRAIN)
            if state is DRAINING:
                # Already closing: the drain deadline caps its close deadline.
                cap = self._scheduler.drain_deadline
                if cap is not None and self.deadline is not None and cap < self.deadline:
                    self._set_deadline(cap)

    def channels_released(self, now: float, *, buffered: int) -> None:
        """The driver released the channels of the last ``ReleaseChannels``.

        The teardown continues: a STATE_DRIFT notice if the client's last
        sequence number differs from ours and ``buffered`` is below the
        write-buffer guard, then the close frame.
        """
        next_state(self.state, Input.CHANNELS_RELEASED)
        if self._releasing():
            plan = self._close_plan
            assert plan is not None  # made with the first closing step
            scheduler = self._scheduler
            client_seq = self.client_seq
            if (
                plan.drift_notice
                and client_seq is not None
                and client_seq != self.seq
                and buffered < scheduler.config.write_buffer_guard
            ):
                scheduler.metrics.state_drift_notices += 1
                self._actions.append(SendStateDrift(self.seq, client_seq))
            self._send_close(plan)
        if self.state is DRAINING:  # a late acknowledgement changes no step
            self._closing(Input.CHANNELS_RELEASED)

    def channel_release_failed(self, now: float, error: str) -> None:
        """Releasing channels raised: the close goes out with 1011 instead."""
        next_state(self.state, Input.RELEASE_FAILED)
        if self._releasing():
            self.cause = TerminationCause.TEARDOWN_ERROR
            self._actions.append(Alert(AlertKind.TEARDOWN_FAILED, self.id, 0.0, error))
            self._send_close(
                _ClosePlan(int(CloseCode.INTERNAL_ERROR), "server error during teardown", False)
            )
        if self.state is DRAINING:  # a late failure changes no step
            self._closing(Input.RELEASE_FAILED)

    def terminate(self, now: float, cause: TerminationCause) -> None:
        """Drop the connection at once (RST, no close frame), releasing channels first."""
        if self.state is CLOSED:
            return
        self._terminate(Input.TERMINATE, cause)

    def transport_lost(self, now: float, error: str | None = None) -> None:
        """The TCP connection is gone (EOF, reset, socket error): CLOSED.

        Channels are released; nothing else is emitted, the socket is gone."""
        state = self.state
        if state is CLOSED:
            return
        self._move(Input.TRANSPORT_LOST, TerminationCause.TRANSPORT_LOST)
        self._release_now()
        self._closed()

    # ------------------------------------------------------------------ timers

    def handle_timer(self, now: float, stalled: bool = False) -> None:
        """The deadline passed. ``stalled`` is set by the scheduler when the
        tick was later than the stall threshold (the server was blocked)."""
        state = self.state
        if state is ACTIVE:
            self._heartbeat(now, stalled)
        elif state is CLOSED:
            return
        elif stalled:
            # The server was blocked, so the peer's bytes may be unread: a late
            # tick terminates nobody. Look again once the backlog is read.
            self._set_deadline(now + self._scheduler.config.effective_stall_threshold)
        elif state is OPEN:
            self._terminate(Input.HANDSHAKE_TIMEOUT, TerminationCause.HANDSHAKE_TIMEOUT)
        else:
            assert state is DRAINING
            drain_deadline = self._scheduler.drain_deadline
            cause = (
                TerminationCause.DRAIN_DEADLINE
                if drain_deadline is not None and now >= drain_deadline
                else TerminationCause.CLOSE_TIMEOUT
            )
            self._terminate(Input.CLOSE_TIMEOUT, cause)

    def _heartbeat(self, now: float, stalled: bool) -> None:
        scheduler = self._scheduler
        config = scheduler.config
        interval = config.heartbeat_interval
        slot = self.deadline
        assert slot is not None
        if self.reading_paused:
            # The handler is not taking messages, so the peer cannot be judged;
            # but a handler stuck for as long as a silent peer would be allowed
            # must not hold the connection forever. (A loop stall counts nothing.)
            self._paused_slots += 0 if stalled else 1
            if self._paused_slots > config.max_missed_pongs:
                self._begin_teardown(
                    now,
                    Input.CLOSE,
                    TerminationCause.HANDLER_STALLED,
                    CloseCode.TRY_AGAIN_LATER,
                    "server handler stalled",
                    drift=True,
                )
                return
        else:
            self._paused_slots = 0
        missed_pongs, missed_echoes = self.missed_pongs, self.missed_echoes
        decision = decide(
            now,
            missed_pongs if missed_pongs > missed_echoes else missed_echoes,
            self._last_probe_at,
            interval,
            config.max_missed_pongs,
            stalled or self.reading_paused,
            self._active_since_due,
        )
        if decision is Decision.PROBE:  # the commonest by far: every ping
            next_state(ACTIVE, HEARTBEAT)
            self._probe(now)
            self.deadline = deadline = slot + interval  # _set_deadline, inlined
            scheduler.arm(self, deadline)
        elif decision is Decision.QUIET:
            next_state(ACTIVE, Input.HEARTBEAT)
            self._active_since_due = False
            if scheduler.protocol_heartbeat:
                self.missed_pongs += 1
            if scheduler.app_heartbeat:
                self.missed_echoes += 1
            self._set_deadline(slot + interval)
        elif decision is Decision.DEFER:
            next_state(ACTIVE, Input.HEARTBEAT)
            self._set_deadline(self._last_probe_at + interval)
        elif decision is Decision.STALL:
            next_state(ACTIVE, Input.HEARTBEAT)
            self._set_deadline(slot + interval * (math.floor((now - slot) / interval) + 1))
        elif decision is Decision.TIMEOUT:
            metrics = scheduler.metrics
            if self.missed_pongs >= config.max_missed_pongs:
                metrics.missed_pongs += 1
                cause = TerminationCause.HEARTBEAT_TIMEOUT
            else:
                metrics.missed_app_heartbeats += 1
                cause = TerminationCause.APP_HEARTBEAT_TIMEOUT
            self._terminate(Input.HEARTBEAT_TIMEOUT, cause)
        else:  # pragma: no cover - exhaustiveness, checked by mypy
            assert_never(decision)

    def _probe(self, now: float) -> None:
        """Count the miss first, then probe: the answer, if it comes, resets it."""
        scheduler = self._scheduler
        metrics = scheduler.metrics
        ping = scheduler.probe(now)
        payload = ping.payload
        self._active_since_due = False
        self._last_probe_at = now
        if scheduler.protocol_heartbeat:
            if self._ping_payload is not None:
                metrics.missed_pongs += 1
            self.missed_pongs += 1
            self._ping_payload = payload
            metrics.pings_sent += 1
            self._actions.append(ping)
        if scheduler.app_heartbeat:
            if self._probe_id is not None:
                metrics.missed_app_heartbeats += 1
            self.missed_echoes += 1
            self._probe_id = probe_id = payload.hex()
            metrics.app_heartbeats_sent += 1
            self._actions.append(SendHeartbeat(heartbeat_text(probe_id)))

    # ------------------------------------------------------------- generic input

    def handle(self, event: ev.Event) -> int | bool | None:
        """Apply one event by calling its method; returns what that method returns."""
        match event:
            case ev.UpgradeRequested(now, origin, host):
                return self.request_upgrade(now, origin=origin, host=host)
            case ev.UpgradeInvalid(now, status, reason):
                self.reject_upgrade(now, status, reason)
            case ev.PongReceived(now, payload):
                self.receive_pong(now, payload)
            case ev.MessageReceived(now, data):
                self.receive_message(now, data)
            case ev.ActivitySeen(now):
                self.note_activity(now)
            case ev.ClientSeqReported(now, seq):
                self.report_client_seq(now, seq)
            case ev.SendRequested(now, data, critical, buffered):
                return self.send(data, buffered=buffered, critical=critical)
            case ev.Subscribe(now, channel):
                self.subscribe(channel)
            case ev.Unsubscribe(now, channel):
                self.unsubscribe(channel)
            case ev.CloseRequested(now, code, reason):
                self.close(now, code, reason)
            case ev.PeerClosed(now, code, reason):
                self.receive_close(now, code, reason)
            case ev.PeerMisbehaved(now, cause, code, reason):
                self.fail(now, cause, code, reason)
            case ev.HandlerFailed(now, error):
                self.handler_failed(now, error)
            case ev.HandlerReturned(now):
                self.handler_returned(now)
            case ev.ReadingPaused(now):
                self.pause_reading(now)
            case ev.ReadingResumed(now):
                self.resume_reading(now)
            case ev.ChannelsReleased(now, buffered):
                self.channels_released(now, buffered=buffered)
            case ev.ChannelReleaseFailed(now, error):
                self.channel_release_failed(now, error)
            case ev.DrainRequested(now):
                self.drain(now)
            case ev.TerminateRequested(now, cause):
                self.terminate(now, cause)
            case ev.TransportLost(now, error):
                self.transport_lost(now, error)
            case ev.TimerFired(now, stalled):
                self.handle_timer(now, stalled=stalled)
            case _:  # pragma: no cover - exhaustiveness, checked by mypy
                assert_never(event)
        return None

    # ---------------------------------------------------------------- internals

    def _move(self, input_: Input, cause: TerminationCause | None) -> State:
        """Take the table's transition for ``input_`` to a new state; record
        the first cause; emit StateChanged."""
        previous = self.state
        state = next_state(previous, input_)
        assert state is not previous  # self-transitions never come through here
        if cause is not None and self.cause is None:
            self.cause = cause
        if previous is ACTIVE:
            self.reading_paused = False  # a closing connection reads the peer's close
        self.state = state
        counts = self._scheduler.metrics.connections
        counts[previous] -= 1
        counts[state] += 1
        self._actions.append(StateChanged(self.id, previous, state, self.cause))
        return state

    def _begin_teardown(
        self,
        now: float,
        input_: Input,
        cause: TerminationCause,
        code: int,
        reason: str,
        *,
        drift: bool,
    ) -> None:
        """ACTIVE → DRAINING (step RELEASING); release channels; the rest
        follows their release."""
        self._move(input_, cause)
        self.closing_step = ClosingStep.RELEASING
        self._close_plan = _ClosePlan(int(code), reason, drift and code not in _NO_DRIFT_NOTICE)
        channels = self._channels
        self._channels = None
        self._actions.append(ReleaseChannels(tuple(sorted(channels)) if channels else ()))
        self._set_deadline(self._scheduler.close_deadline(now))

    def _releasing(self) -> bool:
        """DRAINING, with the release of channels still to be acknowledged."""
        step = self.closing_step
        return step is ClosingStep.RELEASING or step is ClosingStep.RELEASING_PEER_CLOSED

    def _closing(self, input_: Input) -> None:
        """Take DRAINING's step for ``input_``; both close frames crossed: CLOSED."""
        step = self.closing_step
        assert step is not None  # only DRAINING connections get here
        step = self.closing_step = next_closing_step(step, input_)
        if step is ClosingStep.COMPLETE:
            # The server closes TCP first (RFC 6455 §7.1.1).
            self._move(Input.CLOSE_COMPLETE, None)
            self._actions.append(CloseTransport())
            self._closed()

    def _send_close(self, plan: _ClosePlan) -> None:
        code = plan.code
        if not is_sendable(code):  # pragma: no cover - every caller validated it
            raise InvalidCloseCode(f"refusing to send close code {code}")
        self._scheduler.metrics.close_codes_sent[code] += 1
        self._actions.append(SendClose(code, plan.reason))

    def _terminate(self, input_: Input, cause: TerminationCause) -> None:
        self._move(input_, cause)
        self._release_now()
        self._scheduler.metrics.terminations[cause] += 1
        self._actions.append(Terminate(cause))
        self._closed()

    def _release_now(self) -> None:
        channels = self._channels
        if channels:
            self._channels = None
            self._actions.append(ReleaseChannels(tuple(sorted(channels))))

    def _closed(self) -> None:
        assert self.cause is not None  # every path to CLOSED names its cause
        self._scheduler.metrics.closed_by_cause[self.cause] += 1
        self.deadline = None
        self.closing_step = None
        self._close_plan = None
        self._scheduler.retire(self)

    def _set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        self._scheduler.arm(self, deadline)
