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
HTTP 403 before the upgrade, and the body says why and what to change. The
policy is the first step of every handshake: the handshake hook
(``handshake.py``) only sees requests that passed it.
"""

from __future__ import annotations

from .config import Config

__all__ = ["origin_allowed", "origin_refusal"]

_DEFAULT_PORTS = {"http": "80", "ws": "80", "https": "443", "wss": "443"}


def origin_allowed(config: Config, origin: str | None, host: str | None) -> bool:
    """Whether a request with this Origin and Host header passes the policy."""
    return origin_refusal(config, origin, host) is None


def origin_refusal(config: Config, origin: str | None, host: str | None) -> str | None:
    """Why a request with this Origin and Host is refused (None: it passes),
    in words that tell the operator what to change."""
    if config.origin_validator is not None:
        if config.origin_validator(origin, host):
            return None
        return "Origin refused by origin_validator"
    if origin is None:
        if config.allow_no_origin:
            return None
        return "Origin missing: pass --allow-no-origin or allowed_origins"
    normalised = origin.strip().rstrip("/").lower()
    if normalised in config.allowed_origins:
        return None
    if host is not None and _same_origin(normalised, host.strip().lower()):
        return None
    shown = origin if len(origin) <= 100 else origin[:100] + "..."
    return (
        f"Origin {shown!r} not allowed: it is not the Host's origin;"
        " add it with --allow-origin or allowed_origins"
    )


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
