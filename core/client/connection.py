"""One client-side connection's bytes, sans-IO: ``ClientConnection``.

The mirror of :class:`~wslifecycle.wire.connection.ServerConnection`, on the
same :class:`~wslifecycle.ConnectionLifecycle` and the same one-timer
:class:`~wslifecycle.Scheduler`, so the client's liveness rule is the
server's, seen from the other end: it pings the server every
``heartbeat_interval`` and counts missed pongs, and (the client's config
sets ``activity_is_liveness``) a ping, a message or a heartbeat from the
server also proves it alive. A server silent from t0 is declared dead, and
the connection dropped, by t0 + (max_missed_pongs + 1) × interval + 2L: the
bound of ``heartbeat.py``, unchanged.

    wire = ClientConnection(scheduler, now, target, random_bytes=os.urandom)
    transport.write(wire.data_to_send())       # the upgrade request first
    wire.receive_data(data, now)               # bytes read; receive_eof(now), transport_lost(now)
    for action in wire.take_actions():
        AcceptUpgrade   -> the handshake is done: ACTIVE, messages may be sent
        RejectUpgrade   -> the server refused (``wire.refusal`` says how)
        CloseTransport  -> close the socket (FIN)
        Terminate       -> drop the socket now: the server is dead, or broke the protocol
    message = wire.take_message(now)
    wire.outcome                               # once ended: how, for the reconnect policy

Frames are masked with a key from ``random_bytes`` (RFC 6455 §5.3); the
handshake's nonce comes from it too. A server's application heartbeat
(``{"type":"heartbeat","id":…}``, ``relay.py``) is echoed at once and never
reaches the application. ``answer_pings = False`` stops answering pings and
heartbeats (a silent peer, for ``wslifecycle probe``). What the server sent
and when we last answered are counted for the probe: ``pings_received``,
``heartbeats_received``, ``answered_at``, ``peer_close``.

Closing: the client sends its close frame, the server echoes it and closes
TCP; once both frames crossed the lifecycle closes TCP too (RFC 6455 §7.1.1
lets a client close at any time after that).
"""

from __future__ import annotations

from collections.abc import Callable

from ..actions import (
    AcceptUpgrade,
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
from ..causes import TerminationCause
from ..heartbeat import heartbeat_echo_id
from ..scheduler import Scheduler
from ..transitions import State
from ..wire.base import WireBase
from ..wire.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    InboundClose,
    InboundMessage,
    InboundPing,
    InboundPong,
    close_payload,
    encode_masked_frame,
)
from ..wire.mask import Unmask
from ..wire.mask import unmask as pure_mask
from .handshake import Refused, ResponseReader, Upgraded, render_request
from .outcome import Outcome
from .url import Target

__all__ = ["ClientConnection"]

ACTIVE, CLOSED = State.ACTIVE, State.CLOSED

#: Ended by the peer's fault or ours: the code the outcome reports.
_TERMINATED_CODES = {
    TerminationCause.PROTOCOL_ERROR: 1002,
    TerminationCause.INVALID_PAYLOAD: 1007,
    TerminationCause.MESSAGE_TOO_BIG: 1009,
}


class ClientConnection(WireBase):
    """The wire of one client-side connection: the handshake, masked frames,
    the lifecycle."""

    __slots__ = (
        "_close_sent",
        "_ended",
        "_error",
        "_mask",
        "_peer_close",
        "_random_bytes",
        "_reader",
        "_response",
        "_scheduler",
        "answer_pings",
        "answered_at",
        "heartbeats_received",
        "pings_received",
        "refusal",
        "response_headers",
        "subprotocol",
        "target",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        now: float,
        target: Target,
        *,
        random_bytes: Callable[[int], bytes],
        subprotocols: tuple[str, ...] = (),
        origin: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        mask: Unmask | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Queue the upgrade request for ``target``. ``random_bytes(n)``
        gives n unpredictable bytes (``os.urandom``; a seeded source in
        tests). ``mask`` replaces the pure-Python XOR (the drivers pass
        websockets' C one when installed). ``wall_time``: the wall clock
        now, to read a ``Retry-After`` HTTP-date. Raises ValueError for a
        header that may not be set."""
        self._scheduler = scheduler
        self.target = target
        self._random_bytes = random_bytes
        self._mask = mask or pure_mask
        key = random_bytes(16)
        request = render_request(
            target.host_header,
            target.resource,
            key,
            subprotocols=subprotocols,
            origin=origin,
            headers=headers,
        )
        super().__init__(scheduler.open(now))
        self._response: ResponseReader | None = ResponseReader(
            key,
            subprotocols=subprotocols,
            max_header_bytes=scheduler.config.max_header_bytes,
            wall_time=wall_time,
        )
        self._reader: FrameReader | None = None
        self._out.append(request)
        self._peer_close: tuple[int | None, str] | None = None
        self._close_sent = False
        self._ended = False
        self._error: str | None = None
        #: The server's refusal (status, reason, Retry-After), if it refused.
        self.refusal: Refused | None = None
        #: The negotiated subprotocol, if any.
        self.subprotocol: str | None = None
        #: The 101's header fields (names lower-case), once upgraded.
        self.response_headers: tuple[tuple[str, str], ...] = ()
        #: False: a silent peer, answering no ping and no application heartbeat.
        self.answer_pings = True
        #: Pings, and application heartbeats while ACTIVE, read from the server.
        self.pings_received = 0
        self.heartbeats_received = 0
        #: The ``now`` of the last pong or heartbeat echo queued (None: none yet).
        self.answered_at: float | None = None

    def __repr__(self) -> str:
        return f"<ClientConnection {self.target.url} {self.lifecycle.state.value}>"

    # ---------------------------------------------------------- what it is

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def ended(self) -> bool:
        """True once the driver was told to close or drop the socket."""
        return self._ended

    @property
    def latency(self) -> float | None:
        """The last pong's round-trip time in seconds (None before the first)."""
        return self.lifecycle.latency

    @property
    def peer_close(self) -> tuple[int | None, str] | None:
        """The server's close frame (code, None if it carried none; reason),
        once one was read."""
        return self._peer_close

    @property
    def outcome(self) -> Outcome | None:
        """How the connection ended (None before CLOSED): the input of the
        reconnect policy."""
        lifecycle = self.lifecycle
        if lifecycle.state is not CLOSED:
            return None
        refusal = self.refusal
        if refusal is not None:
            return Outcome(
                status=refusal.status, reason=refusal.reason, retry_after=refusal.retry_after
            )
        cause = lifecycle.cause
        local = cause is TerminationCause.APPLICATION_CLOSE
        if cause is TerminationCause.HEARTBEAT_TIMEOUT:
            return Outcome(code=1006, reason="the server stopped answering pings", dead=True)
        if cause in _TERMINATED_CODES:
            return Outcome(code=_TERMINATED_CODES[cause], reason=self._error or "", local=True)
        peer = self._peer_close
        if peer is not None:
            code = 1005 if peer[0] is None else peer[0]
            return Outcome(code=code, reason=peer[1], local=local)
        if cause is TerminationCause.HANDSHAKE_TIMEOUT:
            return Outcome(code=1006, reason="no answer to the upgrade request in time")
        reason = self._error or (cause.value if cause is not None else "")
        return Outcome(code=1006, reason=reason, local=local)

    # ------------------------------------------------------ the transport's inputs

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket."""
        self.pump(now)
        if self._ended or not data:
            return
        if self._reader is not None:
            self._feed_frames(data, now)
        else:
            response = self._response
            assert response is not None  # not ended, no frames: the answer is due
            verdict = response.feed(data)
            if verdict is not None:
                self._response = None
                self._judge(verdict, now)
        self.pump(now)

    def receive_eof(self, now: float) -> None:
        """The server closed its side of TCP."""
        self.pump(now)
        if self._ended:
            return
        if self._response is not None:
            # Before any answer: no HTTP status to judge (a server killed or
            # restarting with our request in its backlog), so no refusal:
            # a lost transport, 1006, which reconnects.
            self._response = None
            self.transport_lost(now, "the server closed the connection before answering")
            return
        self.transport_lost(now, "eof")

    def transport_lost(self, now: float, error: str | None = None) -> None:
        """The socket ended under us (EOF, reset, a failed read or write)."""
        self.pump(now)
        if self._ended:
            return
        if error is not None and self._error is None:
            self._error = error
        self.lifecycle.transport_lost(now, error)
        self.pump(now)
        self._ended = True
        self._out.clear()
        self._actions.append(CloseTransport())

    def terminate(self, now: float, cause: TerminationCause) -> None:
        """Drop the connection at once (no close frame)."""
        self.lifecycle.terminate(now, cause)
        self.pump(now)

    # ------------------------------------------------------ the application's inputs

    def send(self, data: str | bytes, now: float, *, critical: bool = True) -> None:
        """Send a message. Critical by default: a client's sends are its
        requests, and a client that stops reading its own socket is rare;
        past ``max_write_buffer`` the connection is dropped all the same.
        Raises ConnectionClosed once closing, InvalidTransition before the
        handshake is done."""
        self.lifecycle.send(data, buffered=self.buffered, critical=critical, sequenced=False)
        self.pump(now)

    def close(self, now: float, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (no effect once closing). Before the
        handshake is done, the connection is dropped instead."""
        if self.lifecycle.state is State.OPEN:
            self.terminate(now, TerminationCause.APPLICATION_CLOSE)
            return
        self.lifecycle.close(now, code, reason)
        self.pump(now)

    # ----------------------------------------------------------------- output

    def pump(self, now: float) -> None:
        """Turn the lifecycle's queued actions into bytes, messages and
        driver actions. Every input calls it; the driver calls it after a
        scheduler tick."""
        lifecycle = self.lifecycle
        actions = self._actions
        while queued := lifecycle.take_actions():
            for action in queued:
                if isinstance(action, SendMessage):
                    data = action.data
                    if isinstance(data, str):
                        self._frame(OP_TEXT, data.encode("utf-8"))
                    else:
                        self._frame(OP_BINARY, data)
                elif isinstance(action, DeliverMessage):
                    self._deliver(action.data, now, self._scheduler.config)
                elif isinstance(action, SendPing):
                    self._frame(OP_PING, action.payload)
                elif isinstance(action, SendClose):
                    self._frame(OP_CLOSE, close_payload(action.code, action.reason))
                    self._close_sent = True
                elif isinstance(action, ReleaseChannels):
                    # A teardown began (DRAINING); a client holds no server
                    # channels, so they are released at once.
                    lifecycle.channels_released(now, buffered=self.buffered)
                elif isinstance(action, CloseTransport):
                    self._ended = True
                    actions.append(action)
                elif isinstance(action, Terminate):
                    self._ended = True
                    self._out.clear()
                    actions.append(action)
                elif isinstance(action, AcceptUpgrade | RejectUpgrade | StateChanged | Alert):
                    actions.append(action)
                else:  # pragma: no cover - a client's config sends neither
                    assert isinstance(action, SendHeartbeat | SendStateDrift)

    # ---------------------------------------------------------------- internals

    def _judge(self, verdict: Upgraded | Refused, now: float) -> None:
        lifecycle = self.lifecycle
        if isinstance(verdict, Refused):
            self.refusal = verdict
            # The status goes to the metrics and the outcome; 0 (no HTTP
            # answer at all) and a bad 101 are recorded as 502, "bad gateway".
            status = verdict.status if 300 <= verdict.status <= 599 else 502
            lifecycle.reject_upgrade(now, status, verdict.reason)
            return
        if not lifecycle.accept_upgrade(now):  # pragma: no cover - clients set no limit
            return
        self.subprotocol = verdict.subprotocol
        self.response_headers = verdict.headers
        self._reader = FrameReader(self._scheduler.config, [], client=True)
        if verdict.trailing:
            self._feed_frames(verdict.trailing, now)

    def _feed_frames(self, data: bytes, now: float) -> None:
        reader = self._reader
        assert reader is not None
        lifecycle = self.lifecycle
        for item in reader.feed(data):
            if isinstance(item, InboundMessage):
                probe_id = heartbeat_echo_id(item.data)
                if probe_id is None:
                    lifecycle.receive_message(now, item.data)
                elif lifecycle.state is ACTIVE:
                    # The server's application heartbeat: echo it, unseen.
                    self.heartbeats_received += 1
                    lifecycle.note_activity(now)
                    if self.answer_pings:
                        lifecycle.send(
                            item.data, buffered=self.buffered, critical=True, sequenced=False
                        )
                        self.answered_at = now
            elif isinstance(item, InboundPong):
                lifecycle.receive_pong(now, item.payload)
            elif isinstance(item, InboundPing):
                self.pings_received += 1
                if self.answer_pings and not self._close_sent and lifecycle.state is not CLOSED:
                    self._frame(OP_PONG, item.payload)
                    self.answered_at = now
                lifecycle.note_activity(now)
            elif isinstance(item, InboundClose):
                self._peer_close = (item.code, item.reason)
                lifecycle.receive_close(now, item.code, item.reason)
            else:
                self._error = item.reason
                lifecycle.fail(now, item.cause, item.code, item.reason)

    def _frame(self, opcode: int, payload: bytes) -> None:
        self._out.append(encode_masked_frame(opcode, payload, self._random_bytes(4), self._mask))
