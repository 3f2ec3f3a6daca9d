"""The opening handshake on the wire: one test per status, each naming the
rule it checks, each input fed whole, byte by byte and in chunks."""

from __future__ import annotations

import pytest

from tests.wire.helpers import (
    ACCEPT,
    KEY,
    MODES,
    config,
    feed,
    new_wire,
    parse_server_frames,
    scheduler_of,
    split_http,
    text,
    upgrade_request,
)
from wslifecycle import Config, Scheduler, State, TerminationCause
from wslifecycle.actions import AcceptUpgrade, CloseTransport, RejectUpgrade
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import HttpRequest, ServerConnection

STANDARD = [
    ("Host", "localhost"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


def without(name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in STANDARD if n != name]


def replaced(name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in STANDARD]


def status_of(written: bytes) -> int:
    return int(written.split(b" ", 2)[1])


def refuse(request: bytes, mode: str, cfg: Config | None = None) -> tuple[int, bytes]:
    wire = new_wire(cfg)
    outcome = feed(wire, request, mode)
    rejected = [a for a in outcome.actions if isinstance(a, RejectUpgrade)]
    assert len(rejected) == 1
    assert isinstance(outcome.actions[-1], CloseTransport)
    assert wire.lifecycle.state is State.CLOSED
    assert status_of(outcome.written) == rejected[0].status
    assert b"\r\nconnection: close\r\n" in outcome.written
    return rejected[0].status, outcome.written


@pytest.mark.parametrize("mode", MODES)
def test_a_valid_upgrade_is_accepted_with_the_rfc_accept_token(mode: str) -> None:
    """RFC 6455 §4.2.2: 101 with Sec-WebSocket-Accept = base64(SHA-1(key + GUID))."""
    wire = new_wire()
    outcome = feed(wire, upgrade_request(), mode)
    assert outcome.written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"sec-websocket-accept: {ACCEPT}".encode() in outcome.written
    assert any(isinstance(a, AcceptUpgrade) for a in outcome.actions)
    assert wire.lifecycle.state is State.ACTIVE
    assert wire.request is not None
    assert wire.request.path == "/chat"


@pytest.mark.parametrize("mode", MODES)
def test_frames_sent_with_the_request_are_not_lost(mode: str) -> None:
    """Trailing data: a frame in the same read as the request is parsed after
    the upgrade (RFC 6455 §4.1 lets the client send once it has sent its head)."""
    wire = new_wire()
    outcome = feed(wire, upgrade_request() + text("early"), mode)
    assert outcome.messages == ["early"]


@pytest.mark.parametrize("mode", MODES)
def test_malformed_http_gets_400(mode: str) -> None:
    """RFC 9110 §15.5.1: a request h11 cannot parse is a 400."""
    assert refuse(b"\x16\x03\x01\x02\x00 not http\r\n\r\n", mode)[0] == 400


@pytest.mark.parametrize("mode", MODES)
def test_missing_host_gets_400(mode: str) -> None:
    """RFC 9112 §3.2: HTTP/1.1 requires Host."""
    assert refuse(upgrade_request(headers=without("Host")), mode)[0] == 400


@pytest.mark.parametrize("mode", MODES)
def test_http_1_0_gets_400(mode: str) -> None:
    """RFC 6455 §4.1: the upgrade needs HTTP/1.1 or later."""
    assert refuse(upgrade_request(version="HTTP/1.0"), mode)[0] == 400


@pytest.mark.parametrize(
    "headers",
    [
        without("Sec-WebSocket-Key"),
        replaced("Sec-WebSocket-Key", "not base64!"),
        replaced("Sec-WebSocket-Key", "c2hvcnQ="),  # base64 of 5 bytes, not 16
        [*STANDARD, ("Sec-WebSocket-Key", KEY)],  # two keys
    ],
    ids=["missing", "not-base64", "wrong-length", "duplicate"],
)
def test_a_bad_key_gets_400(headers: list[tuple[str, str]]) -> None:
    """RFC 6455 §4.2.1 item 5: exactly one key, base64 of 16 bytes."""
    assert refuse(upgrade_request(headers=headers), "whole")[0] == 400


def test_an_upgrade_with_a_body_gets_400() -> None:
    """RFC 6455 §4.1: the opening handshake is a GET without a body."""
    request = upgrade_request(extra=[("Content-Length", "5")])
    assert refuse(request + b"hello", "whole")[0] == 400


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_non_get_upgrade_gets_405_with_allow(mode: str, method: str) -> None:
    """RFC 6455 §4.1 (method GET) and RFC 9110 §15.5.6 (405 carries Allow)."""
    status, written = refuse(upgrade_request(method=method), mode)
    assert status == 405
    assert b"\r\nallow: GET\r\n" in written


@pytest.mark.parametrize("mode", MODES)
def test_a_long_request_line_gets_414(mode: str) -> None:
    """RFC 9110 §15.5.15: a target over max_request_line is 414, even before
    the line ends."""
    cfg = config(max_request_line=256)
    long_path = "/" + "a" * 300
    assert refuse(upgrade_request(long_path), mode, cfg)[0] == 414
    assert refuse(f"GET {long_path}".encode(), mode, cfg)[0] == 414  # still growing


@pytest.mark.parametrize("mode", MODES)
def test_plain_get_on_a_websocket_path_gets_426(mode: str) -> None:
    """RFC 6455 §4.2.2 and RFC 9110 §15.5.22: no upgrade headers on a
    WebSocket path is 426 Upgrade Required, naming the version."""
    status, written = refuse(b"GET /chat HTTP/1.1\r\nHost: localhost\r\n\r\n", mode)
    assert status == 426
    assert b"\r\nsec-websocket-version: 13\r\n" in written
    assert b"\r\nupgrade: websocket\r\n" in written


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
def test_a_wrong_version_gets_426_with_the_supported_one(version: str) -> None:
    """RFC 6455 §4.2.2 item 4: answer 426 with Sec-WebSocket-Version: 13."""
    request = upgrade_request(headers=replaced("Sec-WebSocket-Version", version))
    status, written = refuse(request, "whole")
    assert status == 426
    assert b"\r\nsec-websocket-version: 13\r\n" in written


@pytest.mark.parametrize("mode", MODES)
def test_too_many_headers_get_431_even_in_one_read(mode: str) -> None:
    """RFC 6585 §5: more than max_headers fields is 431, checked on a head
    that arrived complete."""
    extra = [(f"X-Filler-{i}", "x") for i in range(70)]
    assert refuse(upgrade_request(extra=extra), mode)[0] == 431


@pytest.mark.parametrize("mode", MODES)
def test_a_large_head_gets_431(mode: str) -> None:
    """RFC 6585 §5: a head over max_header_bytes is 431, complete or not."""
    cfg = config(max_header_bytes=1024, max_request_line=256)
    extra = [("X-Big", "y" * 900)]
    assert refuse(upgrade_request(extra=extra), mode, cfg)[0] == 431
    incomplete = upgrade_request(extra=extra)[:-4] + b"X-More: " + b"z" * 2000
    assert refuse(incomplete, mode, cfg)[0] == 431


@pytest.mark.parametrize("mode", MODES)
def test_a_foreign_origin_gets_403_before_the_upgrade(mode: str) -> None:
    """RFC 6455 §10.2: an Origin that is neither allowed nor the
    Host is refused with 403 and no 101 is ever written."""
    cfg = config(allow_no_origin=False, allowed_origins=frozenset({"https://app.example.com"}))
    request = upgrade_request(extra=[("Origin", "https://evil.example")])
    status, written = refuse(request, mode, cfg)
    assert status == 403
    assert b" 101 " not in written


def test_an_allowed_origin_and_the_same_origin_are_accepted() -> None:
    """The allowlist or the request's own Host pass."""
    cfg = config(allow_no_origin=False, allowed_origins=frozenset({"https://app.example.com"}))
    for origin in ("https://app.example.com", "http://localhost"):
        wire = new_wire(cfg)
        wire.receive_data(upgrade_request(extra=[("Origin", origin)]), 0.0)
        assert wire.data_to_send().startswith(b"HTTP/1.1 101 ")


def test_no_origin_is_refused_unless_allowed() -> None:
    """A request without Origin passes only with allow_no_origin."""
    assert refuse(upgrade_request(), "whole", config(allow_no_origin=False))[0] == 403


@pytest.mark.parametrize("mode", MODES)
def test_handshakes_during_drain_get_503(mode: str) -> None:
    """While the server drains, new handshakes get 503."""
    scheduler = Scheduler(config(), seeded_entropy(1))
    scheduler.begin_drain(0.0)
    wire = ServerConnection(scheduler, 0.0)  # accepted after the drain began
    outcome = feed(wire, upgrade_request(), mode)
    assert status_of(outcome.written) == 503
    assert wire.lifecycle.cause is TerminationCause.SERVER_DRAINING


def test_a_handshake_in_progress_when_the_drain_begins_gets_503() -> None:
    """A connection still in its handshake is refused with 503 as
    soon as the drain begins, without waiting for the rest of its request."""
    wire = new_wire()
    scheduler = scheduler_of(wire)
    wire.receive_data(upgrade_request()[:30], 0.0)
    scheduler.begin_drain(0.5)
    wire.pump(0.5)
    assert status_of(wire.data_to_send()) == 503
    wire.receive_data(upgrade_request()[30:], 0.6)  # the rest arrives: ignored
    assert wire.data_to_send() == b""


def test_the_first_subprotocol_we_speak_is_selected() -> None:
    """RFC 6455 §4.2.2 item 5.4: choose one of the client's subprotocols, or none."""
    cfg = config(subprotocols=("v2.chat", "v1.chat"))
    wire = new_wire(cfg)
    wire.receive_data(upgrade_request(extra=[("Sec-WebSocket-Protocol", "v1.chat, v2.chat")]), 0)
    assert b"\r\nsec-websocket-protocol: v2.chat\r\n" in wire.data_to_send()
    assert wire.subprotocol == "v2.chat"
    other = new_wire(cfg)
    other.receive_data(upgrade_request(extra=[("Sec-WebSocket-Protocol", "mqtt")]), 0)
    assert b"sec-websocket-protocol" not in other.data_to_send()


@pytest.mark.parametrize("mode", MODES)
def test_healthz_is_answered_over_http(mode: str) -> None:
    """A plain request is answered over h11 on the same port:
    /healthz is 200 while serving and 503 while draining, then closed."""
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    wire = new_wire()
    outcome = feed(wire, request, mode)
    head, body = split_http(outcome.written)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"ok\n"
    assert isinstance(outcome.actions[-1], CloseTransport)
    assert wire.lifecycle.cause is TerminationCause.PLAIN_HTTP

    scheduler = Scheduler(config(), seeded_entropy(1))
    scheduler.begin_drain(0.0)
    draining = ServerConnection(scheduler, 0.0)
    assert status_of(feed(draining, request, mode).written) == 503


def test_metrics_and_head_use_the_responder() -> None:
    """/metrics is answered by the driver's responder; HEAD gets the head only."""

    def responder(request: HttpRequest) -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4", b"metric 1\n"

    wire = new_wire(responder=responder)
    wire.receive_data(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    written = wire.data_to_send()
    assert b"content-type: text/plain; version=0.0.4" in written
    assert written.endswith(b"metric 1\n")
    head = new_wire(responder=responder)
    head.receive_data(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert head.data_to_send().endswith(b"\r\n\r\n")
    post = new_wire(responder=responder)
    post.receive_data(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0.0)
    assert status_of(post.data_to_send()) == 405


def test_the_handshake_deadline_terminates_a_slow_client() -> None:
    """A slowloris that never finishes its head is terminated at
    the handshake timeout, with no response written."""
    wire = new_wire(config(handshake_timeout=2.0))
    wire.receive_data(upgrade_request()[:20], 0.0)
    scheduler = scheduler_of(wire)
    assert scheduler.next_deadline() == 2.0
    scheduler.tick(2.0)
    wire.pump(2.0)
    assert wire.lifecycle.cause is TerminationCause.HANDSHAKE_TIMEOUT
    assert wire.data_to_send() == b""
    assert wire.ended


def test_input_after_a_refusal_is_ignored() -> None:
    """Once the connection is refused, further bytes change nothing."""
    wire = new_wire()
    wire.receive_data(b"POST /chat HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    wire.data_to_send()
    wire.take_actions()
    wire.receive_data(b"more", 0.1)
    assert wire.data_to_send() == b""
    assert wire.take_actions() == []
    assert parse_server_frames(b"") == []


def test_the_accepted_request_tells_its_path_and_headers() -> None:
    """A handler reads the upgrade request: the path without the query, and
    any header by name in any case (None when absent)."""
    wire = new_wire()
    wire.receive_data(upgrade_request("/chat?room=7", extra=[("X-Token", "abc")]), 0.0)
    request = wire.request
    assert request is not None
    assert (request.path, request.target, request.query) == ("/chat", "/chat?room=7", "room=7")
    assert request.header("X-Token") == request.header("x-token") == "abc"
    assert request.header("Cookie") is None


@pytest.mark.parametrize("mode", MODES)
def test_a_page_path_is_plain_http_unless_the_request_asks_for_the_upgrade(mode: str) -> None:
    """A path among ``pages`` is answered by the responder, with its extra
    header fields, when the request has no ``Upgrade: websocket``; an
    upgrade for it is accepted like any other; a POST to it gets 405."""

    def responder(request: HttpRequest) -> tuple[int, str, bytes, tuple[tuple[str, str], ...]]:
        return 200, "text/html; charset=utf-8", b"<p>page</p>", (("x-frame-options", "DENY"),)

    def wire() -> ServerConnection:
        scheduler = Scheduler(config(), seeded_entropy(1))
        return ServerConnection(scheduler, 0.0, responder=responder, pages=frozenset({"/page"}))

    plain = feed(wire(), b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n", mode)
    head, body = split_http(plain.written)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nx-frame-options: DENY\r\n" in head
    assert body == b"<p>page</p>"
    # Upgrade: h2c is not a WebSocket upgrade: still the page.
    other = feed(wire(), b"GET /page HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", mode)
    assert other.written.endswith(b"<p>page</p>")
    upgrade = feed(wire(), upgrade_request("/page"), mode)
    assert any(isinstance(action, AcceptUpgrade) for action in upgrade.actions)
    post = feed(wire(), b"POST /page HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", mode)
    assert status_of(post.written) == 405
    elsewhere = feed(wire(), b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n", mode)
    assert status_of(elsewhere.written) == 426
