"""The browser tests' own web site, on a loopback port of its own: a page
(``/``, which loads ``client_harness.js``) and a copy of the browser module
(``/client.js``) for servers that do not serve it. The page's origin is
another than any WebSocket server's, as for an application served apart
from its WebSocket endpoint."""

from __future__ import annotations

import http.server
import pathlib
import threading
from typing import Self

from wslifecycle.drivers import browser_client

__all__ = ["Site"]

HERE = pathlib.Path(__file__).resolve().parent

_PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>wslifecycle browser client test</title>
<script type="module" src="/client_harness.js"></script>
"""


class Site:
    """``with Site() as site: ... site.origin ...``"""

    def __init__(self) -> None:
        files = {
            "/": ("text/html; charset=utf-8", _PAGE),
            "/client_harness.js": (
                "text/javascript; charset=utf-8",
                (HERE / "client_harness.js").read_bytes(),
            ),
            "/client.js": ("text/javascript; charset=utf-8", browser_client.source()),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                content_type, body = found
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test says what matters

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
