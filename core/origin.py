"""The origin policy: may this upgrade request proceed? (docs/limits.md)

A browser always sends ``Origin``; a page on another site can open a WebSocket
to us with the user's cookies (cross-site WebSocket hijacking), so the Origin
must be checked before the upgrade. The rule, in order:

1. a configured ``origin_validator(origin, host)`` decides alone;
2. no Origin header: allowed only with ``allow_no_origin`` (non-browser clients);
3. the Origin is in ``allowed_origins``;
4. the Origin names the same host and port as the request's Host header
   (same-origin), default ports (80 for http/ws, 443 for https/wss) ignored.

Anything else (``null``, a malformed value, another site) is refused with
HTTP 403 before the upgrade.
"""

from __future__ import annotations

from .config import Config

__all__ = ["origin_allowed"]

_DEFAULT_PORTS = {"http": "80", "ws": "80", "https": "443", "wss": "443"}


def origin_allowed(config: Config, origin: str | None, host: str | None) -> bool:
    """Whether a request with this Origin and Host header passes the policy."""
    if config.origin_validator is not None:
        return bool(config.origin_validator(origin, host))
    if origin is None:
        return config.allow_no_origin
    normalised = origin.strip().rstrip("/").lower()
    if normalised in config.allowed_origins:
        return True
    return host is not None and _same_origin(normalised, host.strip().lower())


def _same_origin(origin: str, host: str) -> bool:
    scheme, sep, netloc = origin.partition("://")
    if not sep or not netloc or "/" in netloc or "@" in netloc:
        return False
    default = _DEFAULT_PORTS.get(scheme)
    if default is None:
        return False
    return _strip_port(netloc, default) == _strip_port(host, default)


def _strip_port(netloc: str, default_port: str) -> str:
    """``example.com:443`` → ``example.com`` when 443 is the scheme's default."""
    # rpartition keeps an IPv6 literal whole: "[::1]:443" → "[::1]", "443".
    host, sep, port = netloc.rpartition(":")
    return host if sep and port == default_port else netloc
