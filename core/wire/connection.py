"""One TCP connection's bytes, sans-IO: ``ServerConnection``.

It owns a :class:`~wslifecycle.ConnectionLifecycle` and is the one object a
driver talks to about that connection: every input is a method that takes
``now`` and pumps by itself, and the output is bytes plus a few actions.

    wire = hub.open(now)                        # or ServerConnection(scheduler, now)
    wire.receive_data(data, now)                # bytes read; or receive_eof(now),
                                                # transport_lost(now, error)
    transport.write(wire.data_to_send())        # bytes to write, in order
    for action in wire.take_actions():          # what the driver must do
        HandshakeRequested -> wire.answer_upgrade(now, hook(action.request))
                           (only with defer_handshake=True)
        AcceptUpgrade   -> start the handler
        CloseTransport  -> close the socket (FIN) once written
        Terminate       -> drop the socket now (RST); nothing more is written
        RejectUpgrade, StateChanged, Alert -> log
    message = wire.take_message(now)            # the handler's next message
    wire.reading_paused                         # True: do not read the socket now

Messages wait in the wire's :class:`~wslifecycle.inbox.Inbox`; when the
handler falls ``inbox_high_water`` behind, the wire pauses reading (an input
of the lifecycle, so unread pongs blame nobody) and resumes it at
``inbox_low_water``. The driver only keeps its socket's reading in step with
:attr:`ServerConnection.reading_paused`. The handler's end is an input too:
:meth:`~ServerConnection.handler_failed` (1011) or
:meth:`~ServerConnection.handler_returned` (1000).

The handshake: a well-formed upgrade request that passes the origin policy
is accepted at once, with the first of ``Config.subprotocols`` the client
offered; or, with ``defer_handshake=True``, the wire stops there and hands
the request to the caller (``HandshakeRequested``), whose
:meth:`~ServerConnection.answer_upgrade` (an :class:`~wslifecycle.handshake.Accept`
or :class:`~wslifecycle.handshake.Reject`) may come later: the handshake
timeout runs until it does.

Conventions: input after the connection ended (EOF, terminate, our close of
TCP) is dropped; after a close frame from us, pings are no longer answered;
after EOF or terminate nothing more is written.
"""

from __future__ import annotations

from collections.abc import Callable

from wsproto.extensions import Extension
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from ..actions import (
    AcceptUpgrade,
    Alert,
    CloseTransport,
    DeliverMessage,
    HandshakeRequested,
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
from ..causes import AlertKind, TerminationCause
from ..forwarded import trusted_proxies
from ..handshake import Accept, Address, HandshakeRequest, Headers, Reject
from ..scheduler import Scheduler
from ..transitions import State
from .base import WireBase
from .deflate import BoundedPerMessageDeflate
from .frames import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CompressedWriter,
    FrameReader,
    InboundClose,
    InboundMessage,
    InboundPing,
    InboundPong,
    encode_close,
    encode_frame,
)
from .http import (
    HttpRequest,
    PlainRequest,
    Refusal,
    RequestReader,
    UpgradeRequest,
    Verdict,
    render_response,
    render_switching_protocols,
)
from .mask import Unmask

__all__ = [
    "ClosedHook",
    "HttpReply",
    "PageReply",
    "PlainResponder",
    "ReleaseHook",
    "ServerConnection",
    "health_responder",
]

#: (status, content type, body) of a plain HTTP answer.
HttpReply = tuple[int, str, bytes]
#: A plain HTTP answer with extra header fields (a page's Content-Security-Policy).
PageReply = tuple[int, str, bytes, tuple[tuple[str, str], ...]]
#: Answers a plain HTTP request (``/healthz``, ``/metrics``, a server's pages).
PlainResponder = Callable[[HttpRequest], HttpReply | PageReply]
#: Removes a connection from pub/sub channels, synchronously; may raise.
#: Removes a connection from its channels at ``now``: True (or None) when
#: done, False when the caller will call :meth:`ServerConnection.channels_released`
#: later (a broker that must be heard from first: the close frame waits).
ReleaseHook = Callable[["ServerConnection", tuple[str, ...], float], "bool | None"]
#: Told once when a connection's lifecycle has reached CLOSED.
ClosedHook = Callable[["ServerConnection"], None]

OPEN, ACTIVE, DRAINING, CLOSED = State.OPEN, State.ACTIVE, State.DRAINING, State.CLOSED
_ALLOW_GET_HEAD = (("allow", "GET, HEAD"),)


def health_responder(scheduler: Scheduler) -> PlainResponder:
    """``/healthz``: 200 while serving, 503 once draining (so a load balancer
    stops sending traffic). Other paths: 404."""

    def respond(request: HttpRequest) -> HttpReply:
        if request.path == "/healthz":
            if scheduler.draining:
                return 503, "text/plain; charset=utf-8", b"draining\n"
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return 404, "text/plain; charset=utf-8", b"not found\n"

    return respond


class ServerConnection(WireBase):
    """The wire of one server-side connection: h11 + wsproto + the lifecycle.

    :meth:`take_actions` hands the driver only ``HandshakeRequested``,
    ``AcceptUpgrade``, ``RejectUpgrade``, ``CloseTransport``, ``Terminate``,
    ``StateChanged`` and ``Alert``."""

    __slots__ = (
        "__weakref__",  # the hub tracks closing sockets without keeping them
        "_accept",
        "_awaiting_answer",
        "_close_sent",
        "_config",
        "_defer",
        "_ended",
        "_extensions",
        "_http",
        "_on_closed",
        "_peer_close",
        "_reader",
        "_refusal",
        "_release",
        "_responder",
        "_unmask",
        "_upgrade",
        "_writer",
        "context",
        "peer_address",
        "request",
        "subprotocol",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        now: float,
        *,
        responder: PlainResponder | None = None,
        release_channels: ReleaseHook | None = None,
        on_closed: ClosedHook | None = None,
        unmask: Unmask | None = None,
        peer_address: Address | None = None,
        defer_handshake: bool = False,
        pages: frozenset[str] = frozenset(),
        plain_only: bool = False,
    ) -> None:
        """``responder`` answers plain HTTP requests (default: ``/healthz``
        only), those for ``pages`` included: paths answered as plain HTTP
        unless the request asks for the upgrade. ``release_channels``
        removes the connection from its pub/sub channels when teardown asks
        (default: it has none to leave). ``on_closed`` is told once the
        lifecycle is CLOSED. ``unmask`` replaces the pure-Python unmasking
        (``wire.mask``). ``peer_address`` is the socket's peer, as the
        driver knows it. ``defer_handshake``: hand each upgrade request that
        passed the origin policy to the caller (``HandshakeRequested``)
        instead of accepting it. ``plain_only``: answer the plain HTTP
        endpoints only, never upgrade (a metrics port)."""
        super().__init__(scheduler.open(now))
        self._config = scheduler.config
        self._http: RequestReader | None = RequestReader(
            scheduler.config, pages, plain_only=plain_only
        )
        self._responder = responder or health_responder(scheduler)
        self._release = release_channels
        self._on_closed = on_closed
        self._unmask = unmask
        self._reader: FrameReader | None = None
        self._writer: CompressedWriter | None = None
        self._extensions: list[Extension] = []
        self._refusal: Refusal | Reject | None = None
        self._defer = defer_handshake
        self._awaiting_answer = False
        self._upgrade: UpgradeRequest | None = None
        self._accept: Accept | None = None
        self._peer_close: tuple[int | None, str] | None = None
        self._ended = False
        self._close_sent = False
        #: The socket's peer (a proxy, behind one), as the driver gave it.
        self.peer_address = peer_address
        #: The upgrade request (path, query, headers, addresses), once there is one.
        self.request: HandshakeRequest | None = None
        #: The negotiated subprotocol, if any.
        self.subprotocol: str | None = None
        #: What the handshake hook's ``Accept(context=...)`` gave (None otherwise).
        self.context: object = None

    def __repr__(self) -> str:
        return f"<ServerConnection {self.lifecycle.id} {self.lifecycle.state.value}>"

    # ---------------------------------------------------------- what it is

    @property
    def id(self) -> str:
        """The connection id (a session id: from the entropy's CSPRNG)."""
        return self.lifecycle.id

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def latency(self) -> float | None:
        """The last pong's round-trip time in seconds (None before the first)."""
        return self.lifecycle.latency

    @property
    def remote_address(self) -> Address | None:
        """The client's address: the peer's, or with trusted proxies
        (``Config.trusted_proxies``) the one they forwarded."""
        request = self.request
        return request.remote_address if request is not None else self.peer_address

    @property
    def awaiting_answer(self) -> bool:
        """True while the upgrade request waits for :meth:`answer_upgrade`."""
        return self._awaiting_answer and self.lifecycle.state is OPEN and not self._ended

    @property
    def close_code(self) -> int | None:
        """Once CLOSED, the code of the peer's close frame (1005 if it carried
        none), or 1006 if none arrived (RFC 6455 §7.1.5); None before."""
        if self.lifecycle.state is not CLOSED:
            return None
        if self._peer_close is None:
            return 1006
        code = self._peer_close[0]
        return 1005 if code is None else code

    @property
    def close_reason(self) -> str | None:
        """The reason of the peer's close frame ("" without one); None before CLOSED."""
        if self.lifecycle.state is not CLOSED:
            return None
        return self._peer_close[1] if self._peer_close is not None else ""

    @property
    def ended(self) -> bool:
        """True once the driver was told to close or drop the socket."""
        return self._ended

    @property
    def inbound_buffered(self) -> int:
        """Input bytes held for a frame or message still arriving (bounded by
        the message cap plus one read)."""
        return self._reader.buffered if self._reader is not None else 0

    # ------------------------------------------------------ the transport's inputs

    def receive_data(self, data: bytes, now: float) -> bool:
        """Bytes read from the socket. Returns False when they changed nothing
        a driver acts on (no bytes to write, no action, no message, no
        deadline moved: a lone pong, the commonest read), so it need not
        flush; True otherwise."""
        reader = self._reader
        lifecycle = self.lifecycle
        if (
            reader is not None
            and lifecycle.state is ACTIVE
            and not lifecycle.has_actions
            and not self._out
            and not self._actions
        ):
            payload = reader.lone_pong(data)
            if payload is not None:
                lifecycle.receive_pong(now, payload)  # in ACTIVE: no action, no deadline
                return False
        self.pump(now)  # a timer or a drain may have ended the connection meanwhile
        if self._ended or not data:
            return True
        if self._reader is not None:
            self._feed_frames(data, now)
        else:
            # Not ended and no frames yet: the request head is still arriving.
            assert self._http is not None
            verdict = self._http.feed(data)
            if verdict is not None:
                self._http = None
                self._judge(verdict, now)
        self.pump(now)
        return True

    def take_lone_ping(self) -> bytes | None:
        """After a timer: the payload of the ping to send when that is all
        there is to do (nothing else queued, no bytes waiting); it is taken,
        and the caller writes the frame. None: :meth:`pump` as usual."""
        if self._out or self._actions:
            return None
        return self.lifecycle.take_lone_ping()

    def receive_eof(self, now: float) -> None:
        """The peer closed its side of TCP."""
        self.transport_lost(now, "eof")

    def transport_lost(self, now: float, error: str | None = None) -> None:
        """The socket ended under us (EOF, reset, a failed read or write):
        CLOSED, channels released. Nothing more is written; the driver closes
        the socket (``CloseTransport``)."""
        self.pump(now)
        if self._ended:
            return
        self.lifecycle.transport_lost(now, error)  # no effect if already CLOSED
        self.pump(now)  # releases channels, logs the transition; writes nothing
        self._ended = True
        self._out.clear()
        self._actions.append(CloseTransport())

    def terminate(self, now: float, cause: TerminationCause) -> None:
        """Drop the connection at once (RST, no close frame): the server is
        stopping without a drain, or a limit of the driver's was hit."""
        self.lifecycle.terminate(now, cause)
        self.pump(now)

    # ------------------------------------------------------- the hook's answer

    def answer_upgrade(self, now: float, answer: Accept | Reject | None) -> bool:
        """Answer a deferred upgrade request (``HandshakeRequested``).
        ``None`` accepts as the default hook would. Returns False when nothing
        waits for an answer any more (the handshake timed out, the server
        drained, the peer left): the answer is dropped. Raises ValueError,
        changing nothing, for an ``Accept`` whose subprotocol the client did
        not offer (answer again, e.g. with ``Reject(500)``)."""
        self.pump(now)
        if not self.awaiting_answer:
            return False
        request = self.request
        assert request is not None
        if answer is None:
            answer = Accept()
        if isinstance(answer, Reject):
            self._awaiting_answer = False
            self._refusal = answer
            self.lifecycle.reject_upgrade(now, answer.status, answer.reason)
        elif isinstance(answer, Accept):
            offered = request.subprotocols
            if answer.subprotocol is not None and answer.subprotocol not in offered:
                raise ValueError(
                    f"Accept.subprotocol: {answer.subprotocol!r} was not offered by the client"
                    f" (it offered {list(offered)})"
                )
            self._awaiting_answer = False
            self._accept = answer
            self.context = answer.context
            self.lifecycle.accept_upgrade(now)
        else:
            raise TypeError(
                f"the handshake hook must return Accept, Reject or None, got {answer!r}"
            )
        self.pump(now)
        return True

    # -------------------------------------------------------- the handler's inputs

    def drop_messages(self, now: float) -> int:
        """Forget the queued messages (nobody will answer them); how many.
        Reading resumes."""
        inbox = self._inbox
        dropped = inbox.clear() if inbox is not None else 0
        if self.lifecycle.reading_paused:
            self.lifecycle.resume_reading(now)
        return dropped

    def handler_failed(self, now: float, error: str) -> None:
        """The handler raised: close with 1011 (no effect once closing)."""
        self.lifecycle.handler_failed(now, error)
        self.pump(now)

    def handler_returned(self, now: float) -> None:
        """The handler is done with the connection: close with 1000 (no
        effect once closing)."""
        self.lifecycle.handler_returned(now)
        self.pump(now)

    def send(
        self,
        data: str | bytes,
        now: float,
        *,
        critical: bool = False,
        sequenced: bool = True,
    ) -> int | None:
        """Send a message (see :meth:`ConnectionLifecycle.send`)."""
        seq = self.lifecycle.send(
            data, buffered=self.buffered, critical=critical, sequenced=sequenced
        )
        self.pump(now)
        return seq

    def close(self, now: float, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (see :meth:`ConnectionLifecycle.close`)."""
        self.lifecycle.close(now, code, reason)
        self.pump(now)

    # ----------------------------------------------------------------- output

    def pump(self, now: float) -> None:
        """Turn the lifecycle's queued actions into bytes, messages and
        driver actions. Every input calls it; the hub calls it after a timer."""
        lifecycle = self.lifecycle
        out = self._out
        actions = self._actions
        while queued := lifecycle.take_actions():
            for action in queued:
                # Most frequent first: this runs for every message and ping.
                if isinstance(action, SendMessage):
                    out.append(self._message(action.data))
                elif isinstance(action, DeliverMessage):
                    self._deliver(action.data, now, self._config)
                elif isinstance(action, SendPing):
                    out.append(encode_frame(OP_PING, action.payload))
                elif isinstance(action, SendHeartbeat | SendStateDrift):
                    out.append(self._message(action.text))
                elif isinstance(action, SendClose):
                    out.append(encode_close(action.code, action.reason))
                    self._close_sent = True
                elif isinstance(action, ReleaseChannels):
                    self._release_channels(action, now)
                elif isinstance(action, AcceptUpgrade):
                    actions.append(action)
                    self._accept_upgrade(now)
                elif isinstance(action, RejectUpgrade):
                    self._reject(action)
                    actions.append(action)
                elif isinstance(action, CloseTransport):
                    self._ended = True
                    actions.append(action)
                elif isinstance(action, Terminate):
                    self._ended = True
                    out.clear()  # RST: what was not written is dropped
                    actions.append(action)
                elif isinstance(action, StateChanged):
                    actions.append(action)
                    if action.current is CLOSED and self._on_closed is not None:
                        self._on_closed(self)
                else:  # Alert
                    actions.append(action)

    # ---------------------------------------------------------------- internals

    def _judge(self, verdict: Verdict, now: float) -> None:
        lifecycle = self.lifecycle
        if isinstance(verdict, UpgradeRequest):
            self._upgrade = verdict
            self.request = request = self._handshake_request(verdict)
            if not lifecycle.screen_upgrade(now, origin=verdict.origin, host=verdict.host):
                return
            if self._defer:
                self._awaiting_answer = True
                self._actions.append(HandshakeRequested(request))
            else:
                lifecycle.accept_upgrade(now)
        elif isinstance(verdict, PlainRequest):
            plain = verdict.request
            # First: the request leaves the connection gauge, so /metrics
            # does not count the scrape it is answering.
            lifecycle.serve_plain_http(now, plain.path)
            if plain.method in ("GET", "HEAD"):
                reply = self._responder(plain)
                status, content_type, body = reply[:3]
                headers = reply[3] if len(reply) == 4 else ()
                self._out.append(
                    render_response(
                        status,
                        body,
                        content_type=content_type,
                        headers=headers,
                        head_only=plain.method == "HEAD",
                    )
                )
            else:
                self._out.append(render_response(405, b"use GET\n", headers=_ALLOW_GET_HEAD))
        else:
            self._refusal = verdict
            lifecycle.reject_upgrade(now, verdict.status, verdict.reason)

    def _handshake_request(self, upgrade: UpgradeRequest) -> HandshakeRequest:
        head = upgrade.request
        path, _, query = head.target.partition("?")
        headers = Headers(head.headers)
        peer = self.peer_address
        proxies = trusted_proxies(self._config.trusted_proxies)
        return HandshakeRequest(
            method=head.method,
            path=path,
            query=query,
            headers=headers,
            subprotocols=upgrade.subprotocols,
            extensions=upgrade.extensions,
            peer_address=peer,
            remote_address=proxies.client_address(peer, headers) if proxies else peer,
        )

    def _accept_upgrade(self, now: float) -> None:
        upgrade = self._upgrade
        assert upgrade is not None
        config = self._config
        answer = self._accept
        key = upgrade.key.encode()
        headers = [("sec-websocket-accept", generate_accept_token(key).decode())]
        chosen = answer.subprotocol if answer is not None else None
        if chosen is None:
            chosen = next((p for p in config.subprotocols if p in upgrade.subprotocols), None)
        if chosen is not None:
            self.subprotocol = chosen
            headers.append(("sec-websocket-protocol", chosen))
        if config.compression and upgrade.extensions:
            extension = BoundedPerMessageDeflate(config.max_message_size)
            accepted = server_extensions_handshake(list(upgrade.extensions), [extension])
            if accepted is not None:
                headers.append(("sec-websocket-extensions", accepted.decode("ascii")))
                self._extensions = [extension]
                self._writer = CompressedWriter(self._extensions)
        if answer is not None:
            headers.extend(answer.headers)
        self._out.append(render_switching_protocols(tuple(headers)))
        self._reader = FrameReader(config, self._extensions, self._unmask)
        self._upgrade = None  # the key and the trailing bytes are spent
        if upgrade.trailing:
            self._feed_frames(upgrade.trailing, now)

    def _reject(self, action: RejectUpgrade) -> None:
        refusal = self._refusal
        if isinstance(refusal, Reject):  # the hook's own response
            self._out.append(
                render_response(
                    refusal.status,
                    refusal.body,
                    headers=refusal.headers,
                    content_type=None,
                )
            )
            return
        headers = refusal.headers if refusal is not None else ()
        body = f"{action.reason}\n".encode()
        self._out.append(render_response(action.status, body, headers=headers))

    def _feed_frames(self, data: bytes, now: float) -> None:
        reader = self._reader
        assert reader is not None
        lifecycle = self.lifecycle
        for item in reader.feed(data):
            if isinstance(item, InboundMessage):
                lifecycle.receive_message(now, item.data)
            elif isinstance(item, InboundPong):
                lifecycle.receive_pong(now, item.payload)
            elif isinstance(item, InboundPing):
                # RFC 6455 §5.5.2: answer with the same payload, unless we
                # have sent our close frame already (§5.5.1).
                if not self._close_sent and lifecycle.state is not CLOSED:
                    self._out.append(encode_frame(OP_PONG, item.payload))
                lifecycle.note_activity(now)
            elif isinstance(item, InboundClose):
                self._peer_close = (item.code, item.reason)  # the reader yields one at most
                lifecycle.receive_close(now, item.code, item.reason)
            else:
                lifecycle.fail(now, item.cause, item.code, item.reason)

    def _message(self, data: str | bytes) -> bytes:
        if self._writer is not None:
            return self._writer.message(data)
        if isinstance(data, str):
            return encode_frame(OP_TEXT, data.encode("utf-8"))
        return encode_frame(OP_BINARY, data)

    def _release_channels(self, action: ReleaseChannels, now: float) -> None:
        lifecycle = self.lifecycle
        hook = self._release
        if hook is not None:
            try:
                done = hook(self, action.channels, now)
            except Exception as error:  # any broker failure closes with 1011
                reason = f"{type(error).__name__}: {error}"
                if lifecycle.state is DRAINING:
                    lifecycle.channel_release_failed(now, reason)
                else:  # terminated or lost: no close frame to carry it, so say it
                    self._actions.append(Alert(AlertKind.TEARDOWN_FAILED, self.id, 0.0, reason))
                return
            if done is False:
                return  # channels_released() follows
        if lifecycle.state is DRAINING:
            lifecycle.channels_released(now, buffered=self.buffered)

    def channels_released(self, now: float) -> None:
        """A release hook that returned False is done: the teardown goes on
        (the close frame follows). No effect once the connection is CLOSED."""
        if self.lifecycle.state is DRAINING:
            self.lifecycle.channels_released(now, buffered=self.buffered)
            self.pump(now)
