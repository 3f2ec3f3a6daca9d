"""The client's side of the opening handshake (RFC 6455 §4.1), with h11.

:func:`render_request` writes the GET with its Upgrade fields and a
Sec-WebSocket-Key drawn from the caller's entropy; :class:`ResponseReader`
reads the server's answer and returns one verdict:

* :class:`Upgraded`: a 101 whose Upgrade, Connection and
  Sec-WebSocket-Accept fields are right, whose subprotocol is one we offered
  and which accepts no extension (we offer none): frames follow;
* :class:`Refused`: any other answer, with its status and ``Retry-After``
  (seconds, or an HTTP-date read against the caller's wall clock), or a 101
  that breaks one of the rules above (its reason says which). The reconnect
  policy decides by the status what happens next.

The response head is bounded by ``max_header_bytes``, like a request's.
"""

from __future__ import annotations

import base64
import dataclasses

import h11
from wsproto.utilities import generate_accept_token

from .httpdate import http_date_seconds

__all__ = ["Refused", "ResponseReader", "Upgraded", "render_request", "retry_after_seconds"]


@dataclasses.dataclass(frozen=True, slots=True)
class Upgraded:
    """The server switched protocols."""

    subprotocol: str | None
    headers: tuple[tuple[str, str], ...]
    #: Bytes that came after the 101 (the server's first frames).
    trailing: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """The server did not upgrade (or upgraded wrongly: ``status`` 101)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None


Verdict = Upgraded | Refused


def render_request(
    host: str,
    resource: str,
    key: bytes,
    *,
    subprotocols: tuple[str, ...] = (),
    origin: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The upgrade request. ``key`` is 16 random bytes (§4.1: a fresh nonce
    for each connection). Extra ``headers`` may not replace the handshake's
    own fields."""
    if len(key) != 16:
        raise ValueError(f"a Sec-WebSocket-Key nonce is 16 bytes, got {len(key)}")
    own = {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"}
    fields = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(key).decode("ascii")),
        ("Sec-WebSocket-Version", "13"),
    ]
    if origin is not None:
        fields.append(("Origin", origin))
    if subprotocols:
        fields.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    for name, value in headers:
        if name.lower() in own:
            raise ValueError(f"header {name!r} is the handshake's own; it cannot be set")
        fields.append((name, value))
    connection = h11.Connection(our_role=h11.CLIENT)
    try:
        data = connection.send(h11.Request(method="GET", target=resource, headers=fields))
    except h11.LocalProtocolError as error:  # a header name or value h11 refuses
        raise ValueError(f"invalid request header: {error}") from None
    assert data is not None
    return data


class ResponseReader:
    """Reads the response head to our request; :meth:`feed` returns the
    verdict once it has one."""

    __slots__ = ("_accept", "_connection", "_subprotocols", "_wall_time")

    def __init__(
        self,
        key: bytes,
        *,
        subprotocols: tuple[str, ...] = (),
        max_header_bytes: int = 16 * 1024,
        wall_time: float | None = None,
    ) -> None:
        """``wall_time``: the wall clock (seconds since the epoch) when the
        request went out, to read a ``Retry-After`` given as an HTTP-date."""
        self._accept = generate_accept_token(base64.b64encode(key)).decode("ascii")
        self._subprotocols = subprotocols
        self._wall_time = wall_time
        self._connection = connection = h11.Connection(
            our_role=h11.CLIENT, max_incomplete_event_size=max_header_bytes
        )
        # h11 pairs a response with a request it has sent, and takes a 101
        # only for a request that proposed the upgrade: tell it ours.
        proposal = [("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]
        connection.send(h11.Request(method="GET", target="/", headers=proposal))

    def feed(self, data: bytes) -> Verdict | None:
        """Bytes from the server; None until the head is complete. ``data``
        empty: the server closed before answering."""
        if not data:
            return Refused(0, "the server closed the connection before answering")
        connection = self._connection
        connection.receive_data(data)
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as error:
            return Refused(0, f"malformed HTTP response: {error}")
        if event is h11.NEED_DATA:
            return None
        assert isinstance(event, h11.InformationalResponse | h11.Response)
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers
        )
        status = event.status_code
        if status != 101:
            reason = event.reason.decode("latin-1", "replace") or "refused"
            return Refused(status, reason, headers, self._retry_after(headers))
        problem = self._check_upgrade(headers)
        if problem is not None:
            return Refused(101, problem, headers)
        trailing, _ = connection.trailing_data
        protocol = _field(headers, "sec-websocket-protocol")
        return Upgraded(protocol, headers, bytes(trailing))

    def _check_upgrade(self, headers: tuple[tuple[str, str], ...]) -> str | None:
        """Why this 101 must not be trusted (RFC 6455 §4.1, the client's
        checks 1-6), or None."""
        if "websocket" not in _tokens(headers, "upgrade"):
            return "101 without Upgrade: websocket"
        if "upgrade" not in _tokens(headers, "connection"):
            return "101 without Connection: Upgrade"
        if _field(headers, "sec-websocket-accept") != self._accept:
            return "101 with a wrong Sec-WebSocket-Accept"
        if _field(headers, "sec-websocket-extensions") is not None:
            return "101 accepting an extension that was not offered"
        protocol = _field(headers, "sec-websocket-protocol")
        if protocol is not None and protocol not in self._subprotocols:
            return f"101 choosing subprotocol {protocol!r}, which was not offered"
        return None

    def _retry_after(self, headers: tuple[tuple[str, str], ...]) -> float | None:
        value = _field(headers, "retry-after")
        return None if value is None else retry_after_seconds(value, self._wall_time)


def retry_after_seconds(value: str, wall_time: float | None) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) in seconds from now: delay-seconds,
    or an HTTP-date when the wall clock is known. None if unreadable."""
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() too
        return float(int(value))
    if wall_time is None:
        return None
    when = http_date_seconds(value)
    if when is None:
        return None
    return max(0.0, when - wall_time)


def _field(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.strip()
    return None


def _tokens(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [
        token.strip().lower()
        for key, value in headers
        if key == name
        for token in value.split(",")
        if token.strip()
    ]
