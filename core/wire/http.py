"""The HTTP request that opens every connection, parsed by h11 and judged here.

:class:`RequestReader` takes the first bytes of a connection and returns one
verdict: a WebSocket upgrade to accept (the origin is judged later, by the
lifecycle), a plain request for an HTTP endpoint (``/healthz``,
``/metrics``, and a server's pages: paths answered as plain HTTP unless the
request asks for the upgrade; whatever its method: the wire answers 405 to
all but GET and HEAD), or a refusal with its status (RFC 6455 §4.2.1, RFC
9110):

=====  ===========================================================
400    malformed HTTP, HTTP/1.0, a missing or bad Sec-WebSocket-Key,
       a body on an upgrade request
404    any other path than the plain endpoints on a plain-only listener
405    an upgrade request whose method is not GET (``Allow: GET``)
414    a request line longer than ``max_request_line``
426    a WebSocket path without the upgrade headers, or a version other
       than 13 (``Upgrade: websocket``, ``Sec-WebSocket-Version: 13``)
431    a head larger than ``max_header_bytes`` or with more than
       ``max_headers`` fields, checked even when it arrived in one read
=====  ===========================================================

403 (origin) and 503 (draining, full) are the lifecycle's decisions; any
other refusal is the handshake hook's (``handshake.py``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import sys
from http import HTTPStatus

import h11

from ..config import Config

__all__ = [
    "HTTP_ENDPOINTS",
    "HttpRequest",
    "PlainRequest",
    "Refusal",
    "RequestReader",
    "UpgradeRequest",
    "Verdict",
    "render_response",
    "render_switching_protocols",
]

#: Paths answered as plain HTTP; every other path is a WebSocket endpoint.
HTTP_ENDPOINTS = frozenset({"/healthz", "/metrics"})


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head. Header names are lower-case; values are str."""

    method: str
    target: str
    http_version: str
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_tokens(self, name: str) -> list[str]:
        """Every comma-separated token of every field with this name, lower-cased."""
        return [
            token.strip().lower()
            for key, value in self.headers
            if key == name
            for token in value.split(",")
            if token.strip()
        ]


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A well-formed WebSocket upgrade request (RFC 6455 §4.2.1)."""

    request: HttpRequest
    key: str
    origin: str | None
    host: str | None
    subprotocols: tuple[str, ...]
    extensions: tuple[str, ...]
    #: Bytes that followed the request (frames sent before our answer).
    trailing: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PlainRequest:
    """A request for one of the plain HTTP endpoints."""

    request: HttpRequest


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """The request cannot be served: answer with this status and close."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


Verdict = UpgradeRequest | PlainRequest | Refusal

_BLANK_LINE = re.compile(rb"\n\r?\n")
#: A request starts with a method: an RFC 9110 token, then a space.
_METHOD_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{0,32}(?: |\Z)")


class RequestReader:
    """Reads one request head and returns a :data:`Verdict`.

    The head is collected here, bounded by ``max_header_bytes``, and handed to
    h11 complete, in one call: so every check runs on the same bytes in the
    same order, and the verdict never depends on how the head was chunked
    (h11 alone would apply its size cap only to heads still arriving). Feed it
    until it returns a verdict, then discard it.

    ``plain_only``: only the plain endpoints exist; every other path is 404,
    an upgrade request included (a listener for probes and scrapes)."""

    __slots__ = ("_buffer", "_config", "_pages", "_plain_only", "_scanned")

    def __init__(
        self, config: Config, pages: frozenset[str] = frozenset(), *, plain_only: bool = False
    ) -> None:
        """``pages``: paths that are also plain HTTP pages. A request for one
        without ``Upgrade: websocket`` is a :class:`PlainRequest`; with it,
        the path is a WebSocket endpoint like any other."""
        self._config = config
        self._pages = pages
        self._plain_only = plain_only
        self._buffer = bytearray()
        self._scanned = 0  # the end of the head is not before this offset

    def feed(self, data: bytes) -> Verdict | None:
        """Bytes in; a verdict once the head is complete (None: need more)."""
        buffer = self._buffer
        buffer += data
        # Not even the start of a method (a TLS ClientHello, binary noise):
        # refuse at once. The first bytes decide, however they were chunked.
        if not _METHOD_START.match(buffer):
            return Refusal(400, "not an HTTP request")
        # h11 ends a head at a blank line: LF, optional CR, LF.
        match = _BLANK_LINE.search(buffer, max(0, self._scanned - 2))
        if match is None:
            self._scanned = len(buffer)
            if self._line_too_long():
                return Refusal(414, "request line too long")
            if len(buffer) > self._config.max_header_bytes:
                return Refusal(431, "request header fields too large")
            return None
        if self._line_too_long():
            return Refusal(414, "request line too long")
        if match.end() > self._config.max_header_bytes:
            return Refusal(431, "request header fields too large")
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(bytes(buffer))
        self._buffer = bytearray()
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as error:
            return Refusal(400, f"malformed request: {error}")
        assert isinstance(event, h11.Request)  # a complete head is a request or an error
        return self._judge(event, connection)

    def _line_too_long(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\n", 0, self._config.max_request_line + 2)
        return (end if end >= 0 else len(buffer)) > self._config.max_request_line

    def _judge(self, event: h11.Request, connection: h11.Connection) -> Verdict:
        config = self._config
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        # Line length and head size were checked on the raw bytes in feed().
        if len(event.headers) > config.max_headers:
            return Refusal(431, f"more than {config.max_headers} header fields")
        request = HttpRequest(
            method=_shared(method),
            target=_shared(target),
            http_version=_shared(event.http_version.decode("ascii", "replace")),
            headers=tuple(
                (_shared(n.decode("ascii", "replace")), _shared(v.decode("latin-1")))
                for n, v in event.headers
            ),
        )
        path = request.path
        if path in HTTP_ENDPOINTS or (
            path in self._pages and "websocket" not in request.header_tokens("upgrade")
        ):
            return PlainRequest(request)
        if self._plain_only:
            return Refusal(404, "not found: this listener serves /healthz and /metrics only")
        return self._judge_upgrade(request, connection)

    def _judge_upgrade(self, request: HttpRequest, connection: h11.Connection) -> Verdict:
        # RFC 6455 §4.2.1, in the order a client can best act on.
        if request.method != "GET":
            return Refusal(405, "a WebSocket upgrade must use GET", (("allow", "GET"),))
        if request.http_version != "1.1":
            return Refusal(400, "a WebSocket upgrade needs HTTP/1.1")
        upgrade_headers = (("upgrade", "websocket"), ("sec-websocket-version", "13"))
        if "websocket" not in request.header_tokens("upgrade") or (
            "upgrade" not in request.header_tokens("connection")
        ):
            return Refusal(426, "this is a WebSocket endpoint", upgrade_headers)
        versions = request.header_tokens("sec-websocket-version")
        if versions != ["13"]:
            return Refusal(426, "unsupported WebSocket version", upgrade_headers)
        keys = [v for n, v in request.headers if n == "sec-websocket-key"]
        if len(keys) != 1 or not _valid_key(keys[0]):
            return Refusal(400, "missing or invalid Sec-WebSocket-Key")
        if request.header("content-length") not in (None, "0") or request.header(
            "transfer-encoding"
        ):
            return Refusal(400, "an upgrade request has no body")
        h11_conn = connection
        # The GET has no body: h11 ends the message and pauses for the switch;
        # the bytes after the head are the client's first frames.
        while (event := h11_conn.next_event()) is not h11.PAUSED:
            if not isinstance(event, h11.EndOfMessage):  # pragma: no cover - no body, checked
                return Refusal(400, "malformed upgrade request")
        trailing, _ = h11_conn.trailing_data
        return UpgradeRequest(
            request=request,
            key=keys[0].strip(),
            origin=request.header("origin"),
            host=request.header("host"),
            subprotocols=tuple(request.header_tokens("sec-websocket-protocol")),
            extensions=tuple(
                value.strip()
                for n, v in request.headers
                if n == "sec-websocket-extensions"
                for value in v.split(",")
                if value.strip()
            ),
            trailing=bytes(trailing),
        )


def _shared(text: str) -> str:
    """Short strings that thousands of requests repeat ("websocket", "13",
    "Upgrade", the host) are kept once (``sys.intern``; interned strings are
    freed with their last user, so hostile input cannot pile up)."""
    return sys.intern(text) if len(text) <= 64 else text


def _valid_key(key: str) -> bool:
    """RFC 6455 §4.1: the key is base64 of 16 bytes."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def render_response(
    status: int,
    body: bytes,
    *,
    content_type: str | None = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection. ``headers``
    may set the content type (``content_type=None``: theirs, else text);
    the framing fields (length, connection) are always ours."""
    extra = [(n, v) for n, v in headers if n.lower() not in _FRAMING_FIELDS]
    if content_type is None and not any(n.lower() == "content-type" for n, _ in extra):
        content_type = "text/plain; charset=utf-8"
    fields = [] if content_type is None else [("content-type", content_type)]
    fields += [("content-length", str(len(body))), ("connection", "close"), *extra]
    lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
    lines.extend(f"{name}: {value}" for name, value in fields)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status no RFC names: the class's name
        return "Error" if status >= 400 else "Redirect"


#: Response fields the server writes itself; a hook's copies are dropped.
_FRAMING_FIELDS = frozenset({"content-length", "connection", "transfer-encoding"})


def render_switching_protocols(headers: tuple[tuple[str, str], ...]) -> bytes:
    """The 101 response that completes an upgrade."""
    lines = ["HTTP/1.1 101 Switching Protocols", "upgrade: websocket", "connection: Upgrade"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
