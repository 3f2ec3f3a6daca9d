"""``wslifecycle serve --dashboard`` on each driver, over real sockets: the
page over plain HTTP, its feed over a WebSocket that the origin policy
guards like any other, and the relay beside it unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.drivers.harness import cli_server, http

DRIVERS = ("asyncio", "selector", "trio")


@contextmanager
def served(driver: str, *flags: str) -> Iterator[int]:
    """The CLI on a free port (its port); SIGTERM drains it, exit 0."""
    with cli_server(driver, *flags) as (_, port):
        yield port


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_page_is_served_and_its_feed_refuses_a_foreign_origin(driver: str) -> None:
    """GET /dashboard: the page, never cached, under a strict policy. The
    feed: 403 for a foreign Origin, a snapshot for the page's own origin.
    /chat is still the relay."""
    with served(driver, "--dashboard") as port:
        request = f"GET /dashboard HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        status, fields, body = http(port, request)
        assert status == 200
        assert fields["content-type"] == "text/html; charset=utf-8"
        assert fields["cache-control"] == "no-store"
        assert fields["content-security-policy"].startswith("default-src 'none'; script-src ")
        assert body.startswith(b"<!doctype html>")
        assert b"<title>wslifecycle" in body
        head = http(port, f"HEAD /dashboard HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert (head[0], head[2]) == (200, b"")

        feed = f"ws://127.0.0.1:{port}/dashboard"
        foreign = Origin("https://evil.example")
        with pytest.raises(InvalidStatus) as refused, connect(feed, origin=foreign, open_timeout=5):
            pass
        assert refused.value.response.status_code == 403
        with connect(feed, origin=Origin(f"http://127.0.0.1:{port}"), open_timeout=5) as page:
            page.send('{"type":"snapshot"}')
            snapshot = json.loads(page.recv(timeout=5))
            assert snapshot["type"] == "snapshot"
            assert snapshot["connections"]["active"] == 1  # the feed itself
            page.send("hello")
            assert json.loads(page.recv(timeout=5))["type"] == "error"
        with connect(
            f"ws://127.0.0.1:{port}/chat", origin=Origin(f"http://127.0.0.1:{port}")
        ) as chat:
            chat.send(json.dumps({"type": "subscribe", "channel": "room"}))
            answer = json.loads(chat.recv(timeout=5))
            assert (answer["type"], answer["channel"], answer["seq"]) == ("subscribed", "room", 0)


@pytest.mark.parametrize("driver", DRIVERS)
def test_without_the_flag_there_is_no_page(driver: str) -> None:
    """Without --dashboard, /dashboard is a WebSocket path like any other:
    a plain GET gets 426, and an upgrade there is the relay."""
    with served(driver, "--allow-no-origin") as port:
        status, _, _ = http(port, b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 426
        with connect(f"ws://127.0.0.1:{port}/dashboard", open_timeout=5) as relay:
            relay.send('{"type":"snapshot"}')  # not a relay request: echoed
            assert relay.recv(timeout=5) == '{"type":"snapshot"}'
