"""``wslifecycle serve --serve-client`` on each driver, over real sockets:
the browser module at ``/client.js`` (GET and HEAD), named on stdout, and
nothing there without the flag."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
from websockets.sync.client import connect

from tests.drivers.harness import cli_server, http
from wslifecycle.drivers import browser_client

DRIVERS = ("asyncio", "selector", "trio")
SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "drivers" / "client.js"


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_module_is_served_at_client_js(driver: str) -> None:
    """GET /client.js: the module shipped in the package, as JavaScript, that
    any origin may import; HEAD: the same head, no body. The relay answers
    beside it, and the line after the serving line names it (the only one)."""
    with cli_server(driver, "--serve-client", "--allow-no-origin") as (process, port):
        request = f"GET /client.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        status, fields, body = http(port, request)
        assert status == 200
        assert fields["content-type"] == "text/javascript; charset=utf-8"
        assert fields["access-control-allow-origin"] == "*"
        assert fields["x-content-type-options"] == "nosniff"
        assert int(fields["content-length"]) == len(body)
        assert body == SHIPPED.read_bytes() == browser_client.source()
        assert b"export function connect(url, options = {})" in body

        head = http(port, f"HEAD /client.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert (head[0], head[1]["content-length"], head[2]) == (200, str(len(body)), b"")

        with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as relay:
            relay.send('{"type":"subscribe","channel":"news"}')
            assert '"subscribed"' in str(relay.recv(timeout=5))
        assert stdout_after_drain(process) == (
            f"wslifecycle: browser client on http://127.0.0.1:{port}/client.js\n"
        )


@pytest.mark.parametrize("driver", DRIVERS)
def test_without_the_flag_there_is_no_module(driver: str) -> None:
    """Off by default: /client.js is a WebSocket path like any other, so a
    plain GET is refused (426, upgrade required) and no line names it."""
    with cli_server(driver) as (process, port):
        status, _, body = http(port, b"GET /client.js HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 426
        assert b"export function connect" not in body
        assert stdout_after_drain(process) == ""


def stdout_after_drain(process: subprocess.Popen[str]) -> str:
    """What ``process`` printed after its serving line, once drained (SIGTERM)."""
    process.terminate()
    assert process.wait(15) == 0
    assert process.stdout is not None
    return process.stdout.read()
