"""The client's address behind trusted proxies (``Config.trusted_proxies``).

A proxy names the client in ``Forwarded: for=...`` (RFC 7239) or
``X-Forwarded-For``; each proxy on the way appends the address it received
from. Anyone can write those headers, so they are read only when the TCP
peer is a trusted proxy, and from the right: the first address that is not
itself a trusted proxy is the client. Without trusted proxies, or from any
other peer, the client is the TCP peer.

``Forwarded`` wins over ``X-Forwarded-For`` when both are present (it is the
standard, and a proxy that writes it knows what it does). Entries that are
not addresses (``unknown``, an obfuscated ``_hidden``) end the walk: the
client is then the last address known, the proxy that wrote it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from .handshake import Address, Headers

__all__ = ["TrustedProxies", "parse_trusted", "trusted_proxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``--trust-proxy`` with no value: the loopback networks and Unix sockets.
LOOPBACK = ("127.0.0.0/8", "::1", "unix")


def parse_trusted(entries: Iterable[str]) -> tuple[tuple[Network, ...], bool]:
    """Networks and whether Unix-socket peers are trusted; ValueError names a bad entry."""
    networks: list[Network] = []
    unix = False
    for entry in entries:
        if entry == "loopback":
            nets, _ = parse_trusted(LOOPBACK)
            networks.extend(nets)
            unix = True
        elif entry == "unix":
            unix = True
        else:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address, a network (10.0.0.0/8), 'unix' or 'loopback'"
                ) from None
    return tuple(networks), unix


@functools.lru_cache(maxsize=8)
def trusted_proxies(entries: frozenset[str]) -> TrustedProxies:
    """The :class:`TrustedProxies` of a config's entries, parsed once."""
    return TrustedProxies(entries)


class TrustedProxies:
    """Decides the client's address from the peer and the request's headers."""

    __slots__ = ("_networks", "_unix")

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks, self._unix = parse_trusted(entries)

    def __bool__(self) -> bool:
        return bool(self._networks) or self._unix

    def trusts(self, address: Address | None) -> bool:
        """Whether ``address`` (a peer, or a hop a proxy named) is a trusted proxy."""
        if address is None:
            return False
        if isinstance(address, str):
            return self._unix
        try:
            ip = ipaddress.ip_address(address[0].split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client_address(self, peer: Address | None, headers: Headers) -> Address | None:
        """The client: the first untrusted hop from the right, or ``peer``."""
        if not self.trusts(peer):
            return peer
        hops = _forwarded_for(headers) if "forwarded" in headers else _x_forwarded_for(headers)
        client = peer
        for hop in reversed(hops):
            if hop is None:
                break  # "unknown" or obfuscated: nothing further can be trusted
            client = hop
            if not self.trusts(hop):
                break
        return client


def _x_forwarded_for(headers: Headers) -> list[Address | None]:
    return [
        _node(part.strip())
        for value in headers.get_all("x-forwarded-for")
        for part in value.split(",")
        if part.strip()
    ]


def _forwarded_for(headers: Headers) -> list[Address | None]:
    """The ``for=`` of each element of every ``Forwarded`` field, in order."""
    hops: list[Address | None] = []
    for value in headers.get_all("forwarded"):
        for element in value.split(","):
            node: Address | None = None
            for pair in element.split(";"):
                name, _, raw = pair.strip().partition("=")
                if name.strip().lower() == "for":
                    node = _node(raw.strip().strip('"'))
            hops.append(node)
    return hops


def _node(text: str) -> Address | None:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:80``, ``2001:db8::1`` → (ip, port)."""
    port = 0
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if port_text.isdigit():
            port = int(port_text)
    else:
        host = text
    try:
        return (str(ipaddress.ip_address(host)), port)
    except ValueError:
        return None
