"""One TCP connection's bytes, sans-IO: ``ServerConnection``.

It owns a :class:`~wslifecycle.ConnectionLifecycle` and turns bytes into its
inputs and its actions into bytes. A driver's whole job around it:

    wire = ServerConnection(scheduler, now, responder=..., release_channels=...)
    wire.receive_data(data, now)          # or wire.receive_eof(now)
    transport.write(wire.data_to_send())  # bytes to write, in order
    for event in wire.take_events():      # what the driver/application sees
        DeliverMessage  -> hand to the handler
        CloseTransport  -> close the socket (FIN) once written
        Terminate       -> drop the socket now (RST); nothing more is written
        AcceptUpgrade, RejectUpgrade, StateChanged, Alert -> log, route

After ``scheduler.tick(now)``, call :meth:`pump` on the owner of each
lifecycle it returns (``lifecycle.owner`` is the wire). Methods the
application calls (:meth:`send`, :meth:`close`, ...) pump by themselves.

Conventions: input after the connection ended (EOF, terminate, our close of
TCP) is dropped; after a close frame from us, pings are no longer answered;
after EOF or terminate nothing more is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsproto.extensions import Extension
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from ..actions import (
    AcceptUpgrade,
    Action,
    CloseTransport,
    RejectUpgrade,
    ReleaseChannels,
    SendClose,
    SendHeartbeat,
    SendMessage,
    SendPing,
    SendStateDrift,
    Terminate,
)
from ..lifecycle import ConnectionLifecycle
from ..scheduler import Scheduler
from ..transitions import State
from .deflate import BoundedPerMessageDeflate
from .frames import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseReceived,
    CompressedWriter,
    FrameReader,
    MessageReceived,
    PingReceived,
    PongReceived,
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

__all__ = ["HttpReply", "PlainResponder", "ReleaseHook", "ServerConnection", "health_responder"]

#: (status, content type, body) of a plain HTTP answer.
HttpReply = tuple[int, str, bytes]
#: Answers a plain HTTP request (``/healthz``, ``/metrics``).
PlainResponder = Callable[[HttpRequest], HttpReply]
#: Removes a connection from pub/sub channels, synchronously; may raise.
ReleaseHook = Callable[[ConnectionLifecycle, tuple[str, ...]], None]

OPEN, ACTIVE, DRAINING, CLOSED = State.OPEN, State.ACTIVE, State.DRAINING, State.CLOSED


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


class ServerConnection:
    """The wire of one server-side connection: h11 + wsproto + the lifecycle."""

    __slots__ = (
        "__weakref__",  # the hub tracks closing sockets without keeping them
        "_close_sent",
        "_config",
        "_ended",
        "_events",
        "_extensions",
        "_http",
        "_out",
        "_reader",
        "_refusal",
        "_release",
        "_responder",
        "_unmask",
        "_writer",
        "context",
        "lifecycle",
        "request",
        "subprotocol",
        "write_buffer_size",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        now: float,
        *,
        responder: PlainResponder | None = None,
        release_channels: ReleaseHook | None = None,
        unmask: Unmask | None = None,
    ) -> None:
        """``responder`` answers plain HTTP requests (default: ``/healthz``
        only). ``release_channels`` removes the connection from its pub/sub
        channels when teardown asks; without it, ``ReleaseChannels`` reaches
        :meth:`take_events` and the driver acknowledges it on the lifecycle.
        ``unmask`` replaces the pure-Python unmasking (``wire.mask``)."""
        self.lifecycle = lifecycle = scheduler.open(now)
        lifecycle.owner = self
        self._config = scheduler.config
        self._http: RequestReader | None = RequestReader(scheduler.config)
        self._responder = responder or health_responder(scheduler)
        self._release = release_channels
        self._unmask = unmask
        self._reader: FrameReader | None = None
        self._writer: CompressedWriter | None = None
        self._extensions: list[Extension] = []
        self._refusal: Refusal | None = None
        self._out: list[bytes] = []
        self._events: list[Action] = []
        self._ended = False
        self._close_sent = False
        #: Free for the driver: its own object for this connection.
        self.context: Any = None
        #: The accepted upgrade request (path, headers), once there is one.
        self.request: UpgradeRequest | None = None
        #: The negotiated subprotocol, if any.
        self.subprotocol: str | None = None
        #: Bytes the transport still holds unsent; the driver keeps it current.
        #: It feeds the write-buffer guard and the STATE_DRIFT notice rule.
        self.write_buffer_size = 0

    def __repr__(self) -> str:
        return f"<ServerConnection {self.lifecycle.id} {self.lifecycle.state.value}>"

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket."""
        self.pump(now)  # a timer or a drain may have ended the connection meanwhile
        if self._ended or not data:
            return
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

    def receive_eof(self, now: float) -> None:
        """The peer closed its side (or the socket failed). Nothing more is
        written; the driver closes the socket."""
        self.pump(now)
        if self._ended:
            return
        lifecycle = self.lifecycle
        if lifecycle.state is not CLOSED:  # the driver may have reported the loss itself
            lifecycle.transport_lost(now, "eof")
        self.pump(now)  # releases channels, logs the transition; writes nothing
        self._ended = True
        self._out.clear()
        self._events.append(CloseTransport())

    # ----------------------------------------------------------- application

    @property
    def inbound_buffered(self) -> int:
        """Input bytes held for a frame or message still arriving (bounded by
        the message cap plus one read)."""
        return self._reader.buffered if self._reader is not None else 0

    @property
    def buffered(self) -> int:
        """Outbound bytes not yet written: ours plus the transport's."""
        return self.write_buffer_size + sum(map(len, self._out))

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

    def data_to_send(self) -> bytes:
        """Every byte to write, in order; the buffer empties."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def take_events(self) -> list[Action]:
        """Actions for the driver and the application, in order; the queue empties."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    @property
    def ended(self) -> bool:
        """True once the driver was told to close or drop the socket."""
        return self._ended

    def pump(self, now: float) -> None:
        """Turn the lifecycle's queued actions into bytes and events."""
        lifecycle = self.lifecycle
        out = self._out
        events = self._events
        while actions := lifecycle.take_actions():
            for action in actions:
                # Most frequent first: this runs for every message and ping.
                if isinstance(action, SendMessage):
                    out.append(self._message(action.data))
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
                    events.append(action)
                    self._accept(now)
                elif isinstance(action, RejectUpgrade):
                    self._reject(action)
                    events.append(action)
                elif isinstance(action, CloseTransport):
                    self._ended = True
                    events.append(action)
                elif isinstance(action, Terminate):
                    self._ended = True
                    out.clear()  # RST: what was not written is dropped
                    events.append(action)
                else:  # DeliverMessage, StateChanged, Alert
                    events.append(action)

    # ---------------------------------------------------------------- internals

    def _judge(self, verdict: Verdict, now: float) -> None:
        lifecycle = self.lifecycle
        if isinstance(verdict, UpgradeRequest):
            self.request = verdict
            lifecycle.request_upgrade(now, origin=verdict.origin, host=verdict.host)
        elif isinstance(verdict, PlainRequest):
            status, content_type, body = self._responder(verdict.request)
            head_only = verdict.request.method == "HEAD"
            self._out.append(
                render_response(status, body, content_type=content_type, head_only=head_only)
            )
            lifecycle.serve_plain_http(now)
        else:
            self._refusal = verdict
            lifecycle.reject_upgrade(now, verdict.status, verdict.reason)

    def _accept(self, now: float) -> None:
        request = self.request
        assert request is not None
        config = self._config
        headers = [("sec-websocket-accept", generate_accept_token(request.key.encode()).decode())]
        for protocol in config.subprotocols:
            if protocol in request.subprotocols:
                self.subprotocol = protocol
                headers.append(("sec-websocket-protocol", protocol))
                break
        if config.compression and request.extensions:
            extension = BoundedPerMessageDeflate(config.max_message_size)
            accepted = server_extensions_handshake(request.extensions, [extension])
            if accepted is not None:
                headers.append(("sec-websocket-extensions", accepted.decode("ascii")))
                self._extensions = [extension]
                self._writer = CompressedWriter(self._extensions)
        self._out.append(render_switching_protocols(tuple(headers)))
        self._reader = FrameReader(config, self._extensions, self._unmask)
        if request.trailing:
            self._feed_frames(request.trailing, now)

    def _reject(self, action: RejectUpgrade) -> None:
        headers = self._refusal.headers if self._refusal is not None else ()
        body = f"{action.reason}\n".encode()
        self._out.append(render_response(action.status, body, headers=headers))

    def _feed_frames(self, data: bytes, now: float) -> None:
        reader = self._reader
        assert reader is not None
        lifecycle = self.lifecycle
        for item in reader.feed(data):
            if isinstance(item, MessageReceived):
                lifecycle.receive_message(now, item.data)
            elif isinstance(item, PongReceived):
                lifecycle.receive_pong(now, item.payload)
            elif isinstance(item, PingReceived):
                # RFC 6455 §5.5.2: answer with the same payload, unless we
                # have sent our close frame already (§5.5.1).
                if not self._close_sent and lifecycle.state is not CLOSED:
                    self._out.append(encode_frame(OP_PONG, item.payload))
                lifecycle.note_activity(now)
            elif isinstance(item, CloseReceived):
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
        if hook is None:
            self._events.append(action)
            return
        try:
            hook(lifecycle, action.channels)
        except Exception as error:  # any broker failure closes with 1011
            if lifecycle.state is DRAINING:
                lifecycle.channel_release_failed(now, f"{type(error).__name__}: {error}")
            return
        if lifecycle.state is DRAINING:
            lifecycle.channels_released(now, buffered=self.buffered)
