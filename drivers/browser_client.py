"""The browser client module, ``client.js`` beside this module, served at
``/client.js`` (``wslifecycle serve --serve-client``).

One dependency-free ES module (see its header for the API); a page imports
it from the server it connects to. It is public code, so any origin may
load it (``access-control-allow-origin: *``: module scripts are fetched with
CORS); the WebSocket it opens is still checked against the origin policy
like any other.
"""

from __future__ import annotations

import functools
import importlib.resources

from wslifecycle.hub import Hub
from wslifecycle.wire import HttpRequest, PageReply

__all__ = ["PATH", "add_page", "announce", "page", "source"]

#: Where the module is served.
PATH = "/client.js"


@functools.cache
def source() -> bytes:
    """The module's text, as shipped in the package."""
    return importlib.resources.files("wslifecycle.drivers").joinpath("client.js").read_bytes()


@functools.cache
def _reply() -> PageReply:
    headers = (
        ("access-control-allow-origin", "*"),
        # Revalidated on each load: an upgraded server serves the new module.
        ("cache-control", "no-cache"),
        ("x-content-type-options", "nosniff"),
    )
    return 200, "text/javascript; charset=utf-8", source(), headers


def page(request: HttpRequest) -> PageReply:
    """The answer to ``GET /client.js`` (and HEAD)."""
    return _reply()


def add_page(hub: Hub) -> None:
    """Serve the module at :data:`PATH` (on the selector driver, with the
    server's lock held)."""
    hub.add_page(PATH, page)


def announce(host: str, port: int) -> None:
    """The module's address on stdout, after the serving line."""
    where = f"[{host}]" if ":" in host else host
    print(f"wslifecycle: browser client on http://{where}:{port}{PATH}", flush=True)
