"""The wire: bytes in, bytes out (the second layer, docs/theory.md). Still sans-IO.

h11 parses the HTTP request; an upgrade is answered with wsproto's accept
token and frames are parsed by wsproto's decoders; a plain request
(``/healthz``, ``/metrics``, a server's pages) is answered over HTTP. Every size limit is
enforced here; every decision about the connection is the lifecycle's.
"""

from __future__ import annotations

from .connection import (
    HttpReply,
    PageReply,
    PlainResponder,
    ReleaseHook,
    ServerConnection,
    health_responder,
)
from .http import HTTP_ENDPOINTS, HttpRequest

__all__ = [
    "HTTP_ENDPOINTS",
    "HttpReply",
    "HttpRequest",
    "PageReply",
    "PlainResponder",
    "ReleaseHook",
    "ServerConnection",
    "health_responder",
]
