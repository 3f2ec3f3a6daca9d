"""The handshake hook's vocabulary: the request it reads and the answer it gives.

A WebSocket upgrade that is well formed, arrives while the server is not
draining and passes the origin policy (``origin.py``, always the first step)
is handed to the caller as a :class:`HandshakeRequest`. The caller answers
with :class:`Accept` (a subprotocol, extra response headers, a value the
handler can read) or :class:`Reject` (a status, headers, a body), at once or
later: the handshake timeout runs until the answer comes. ``None`` means the
default answer: accept, with the first of ``Config.subprotocols`` that the
client offered.

    def process_request(request: HandshakeRequest) -> Accept | Reject | None:
        if request.path == "/private" and request.headers.get("authorization") != TOKEN:
            return Reject(401, "a bearer token is required\\n")
        return None

Drivers take such a callable (``process_request=``; sync or async on asyncio
and Trio, sync on the selector); an embedder answers with
``ServerConnection.answer_upgrade`` (see docs/embedding.md).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qs

__all__ = [
    "Accept",
    "Address",
    "HandshakeRequest",
    "Headers",
    "ProcessRequest",
    "Reject",
]

#: A peer: (host, port) for TCP, the socket path ("" when unnamed) for a Unix socket.
Address = tuple[str, int] | str

# RFC 9110 §5.1 (a token) and §5.5 (no CR, LF or NUL in a field value).
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\0]")


class Headers(Mapping[str, str]):
    """HTTP header fields: names case-insensitive, a name may repeat.

    ``headers["x-token"]`` is the value (several fields with that name are
    joined with ", ", RFC 9110 §5.3); :meth:`get_all` lists them one by one;
    :meth:`raw_items` gives every field in arrival order."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = tuple((name.lower(), value) for name, value in fields)

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._fields))

    def __len__(self) -> int:
        return len(dict.fromkeys(name for name, _ in self._fields))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(field == key for field, _ in self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self._fields)!r})"

    def get_all(self, name: str) -> list[str]:
        """Every value of the fields named ``name`` (any case), in order."""
        key = name.lower()
        return [value for field, value in self._fields if field == key]

    def raw_items(self) -> tuple[tuple[str, str], ...]:
        """Every field as (lower-case name, value), in arrival order."""
        return self._fields


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A WebSocket upgrade request, as the handshake hook and the handler see it."""

    method: str
    #: The request target without its query string ("/chat").
    path: str
    #: The raw query string, without "?" ("" when there is none).
    query: str
    headers: Headers
    #: Subprotocols the client offered, in its order of preference.
    subprotocols: tuple[str, ...]
    #: Extensions the client offered (each with its parameters, as sent).
    extensions: tuple[str, ...]
    #: The TCP peer (the proxy, behind one); None when the driver did not say.
    peer_address: Address | None = None
    #: The client: the peer, or with trusted proxies the address they forwarded.
    remote_address: Address | None = None

    @property
    def target(self) -> str:
        """Path and query, as on the request line."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def params(self) -> dict[str, list[str]]:
        """The query string decoded: ``?room=7&room=8`` → ``{"room": ["7", "8"]}``."""
        return parse_qs(self.query, keep_blank_values=True)

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")

    @property
    def host(self) -> str | None:
        return self.headers.get("host")

    def header(self, name: str) -> str | None:
        """The value of a header (any case; repeated fields joined), or None."""
        return self.headers.get(name)


HeaderItems = Iterable[tuple[str, str]] | Mapping[str, str]


def _header_items(field: str, headers: HeaderItems) -> tuple[tuple[str, str], ...]:
    items = tuple(headers.items() if isinstance(headers, Mapping) else headers)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError(f"{field}: each header is a (name, value) pair, got {item!r}")
        name, value = item
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise ValueError(f"{field}: {name!r} is not a valid header name")
        if not isinstance(value, str) or _BAD_VALUE.search(value):
            raise ValueError(f"{field}: the value of {name!r} must be a str without CR, LF or NUL")
    return items


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Accept:
    """Complete the upgrade.

    ``subprotocol`` must be one the client offered (None: the first of
    ``Config.subprotocols`` it offered, if any); ``headers`` are added to the
    101 response; ``context`` is any value, read by the handler as
    ``conn.context`` (the user a token named, a parsed route)."""

    subprotocol: str | None
    headers: tuple[tuple[str, str], ...]
    context: object

    def __init__(
        self,
        subprotocol: str | None = None,
        headers: HeaderItems = (),
        context: object = None,
    ) -> None:
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise ValueError(f"Accept.subprotocol: must be a str or None, got {subprotocol!r}")
        object.__setattr__(self, "subprotocol", subprotocol)
        object.__setattr__(self, "headers", _header_items("Accept.headers", headers))
        object.__setattr__(self, "context", context)


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Reject:
    """Refuse the upgrade with an HTTP response, then close the connection.

    ``status`` is 300–599 (a redirect needs a ``location`` header); ``body``
    is sent as given (str as UTF-8 text/plain, unless headers set a
    content-type)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]

    def __init__(self, status: int, body: str | bytes = b"", headers: HeaderItems = ()) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 599:
            raise ValueError(f"Reject.status: must be an HTTP status 300-599, got {status!r}")
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, bytes):
            raise ValueError(f"Reject.body: must be str or bytes, got {type(body).__name__}")
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "headers", _header_items("Reject.headers", headers))

    @property
    def reason(self) -> str:
        """The body's first line (logged and carried by ``RejectUpgrade``)."""
        return self.body.decode("utf-8", "replace").partition("\n")[0][:200]


#: The handshake hook: ``None`` means the default answer (accept).
ProcessRequest = Callable[[HandshakeRequest], Accept | Reject | None]
