"""Where a client connects: a ``ws://`` or ``wss://`` URL, checked once.

RFC 6455 §3: the scheme says whether TLS is used (default ports 80 and
443), the resource name is the path and query, and a fragment is not
allowed. A bad URL raises ``ValueError`` naming what is wrong, before any
socket is opened.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

__all__ = ["Target", "parse_url"]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A WebSocket endpoint: what to dial and what to ask for."""

    secure: bool
    host: str  # without the brackets of an IPv6 literal
    port: int
    resource: str  # path and query, at least "/"

    @property
    def host_header(self) -> str:
        """The Host field: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "wss" if self.secure else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.resource}"


def parse_url(url: str) -> Target:
    """The :class:`Target` of a ``ws://`` or ``wss://`` URL."""
    if not isinstance(url, str):
        raise ValueError(f"a WebSocket URL is a str, got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r}: the scheme must be ws or wss, got {parts.scheme!r}")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{url!r}: a WebSocket URL has no fragment (RFC 6455 §3)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: credentials in the URL are not sent; use a header")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{url!r}: {error}") from None
    secure = scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return Target(secure, host, port if port is not None else (443 if secure else 80), resource)
