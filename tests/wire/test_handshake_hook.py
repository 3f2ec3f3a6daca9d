"""The handshake hook, sans-IO: the wire stops at a pending upgrade, hands the
request over, and applies the answer whenever it comes (fake clock)."""

from __future__ import annotations

import pytest

from tests.wire.helpers import (
    close_frame,
    config,
    parse_server_frames,
    split_http,
    text,
    upgrade_request,
)
from wslifecycle import Config, Scheduler, State, TerminationCause
from wslifecycle.actions import (
    AcceptUpgrade,
    CloseTransport,
    HandshakeRequested,
    RejectUpgrade,
    StateChanged,
    Terminate,
)
from wslifecycle.handshake import Accept, HandshakeRequest, Reject
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import ServerConnection

PEER = ("10.0.0.9", 51000)


#: The scheduler each deferred wire runs on.
SCHEDULERS: dict[ServerConnection, Scheduler] = {}


def deferred_wire(cfg: Config | None = None) -> ServerConnection:
    scheduler = Scheduler(cfg or config(), seeded_entropy(3))
    wire = ServerConnection(scheduler, 0.0, defer_handshake=True, peer_address=PEER)
    SCHEDULERS[wire] = scheduler
    return wire


def pending(wire: ServerConnection, data: bytes | None = None) -> HandshakeRequest:
    """Feed an upgrade request; the one request handed over."""
    wire.receive_data(data or upgrade_request("/room/7?x=1&x=2"), 0.1)
    assert wire.data_to_send() == b""  # nothing is answered yet
    (action,) = wire.take_actions()
    assert isinstance(action, HandshakeRequested)
    assert wire.awaiting_answer
    assert wire.state is State.OPEN
    return action.request


def test_the_request_handed_over_tells_everything_the_hook_needs() -> None:
    wire = deferred_wire()
    request = pending(
        wire,
        upgrade_request(
            "/room/7?x=1&x=2",
            extra=[
                ("Sec-WebSocket-Protocol", "chat.v1, chat.v2"),
                ("Sec-WebSocket-Extensions", "permessage-deflate"),
                ("X-Tag", "a"),
                ("x-tag", "b"),
                ("Origin", "http://localhost"),
            ],
        ),
    )
    assert (request.method, request.path, request.query) == ("GET", "/room/7", "x=1&x=2")
    assert request.target == "/room/7?x=1&x=2"
    assert request.params == {"x": ["1", "2"]}
    assert request.subprotocols == ("chat.v1", "chat.v2")
    assert request.extensions == ("permessage-deflate",)
    assert request.headers.get_all("X-TAG") == ["a", "b"]
    assert request.headers["x-tag"] == "a, b"
    assert request.header("Sec-WebSocket-Version") == "13"
    assert (request.origin, request.host) == ("http://localhost", "localhost")
    assert request.peer_address == request.remote_address == PEER
    assert wire.request is request
    assert wire.remote_address == PEER


def test_accept_with_a_subprotocol_headers_and_a_context() -> None:
    wire = deferred_wire()
    request = pending(wire, upgrade_request(extra=[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")]))
    answer = Accept("chat.v2", {"X-Served-By": "hook"}, context={"user": "ann"})
    assert wire.answer_upgrade(0.2, answer) is True
    head, _ = split_http(wire.data_to_send())
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nsec-websocket-protocol: chat.v2\r\n" in head
    assert b"\r\nX-Served-By: hook\r\n" in head
    assert [type(a) for a in wire.take_actions()] == [StateChanged, AcceptUpgrade]
    assert (wire.state, wire.subprotocol, wire.context) == (
        State.ACTIVE,
        "chat.v2",
        {"user": "ann"},
    )
    assert not wire.awaiting_answer
    assert request.subprotocols == ("chat.v1", "chat.v2")
    # A second answer finds nothing waiting.
    assert wire.answer_upgrade(0.3, Reject(401)) is False


def test_none_is_the_default_answer_and_frames_sent_early_are_kept() -> None:
    """The client's first frame arrived with its request: it is read once accepted."""
    cfg = config(subprotocols=("chat.v2",))
    wire = deferred_wire(cfg)
    data = upgrade_request(extra=[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")]) + text("hi")
    pending(wire, data)
    assert wire.answer_upgrade(0.2, None) is True
    assert wire.subprotocol == "chat.v2"  # the config's choice
    assert wire.take_message(0.2) == "hi"


def test_reject_sends_the_hooks_status_body_and_headers() -> None:
    wire = deferred_wire()
    pending(wire)
    refusal = Reject(
        401,
        "a bearer token is required\nsee the docs",
        [("WWW-Authenticate", "Bearer"), ("Content-Length", "9999"), ("connection", "keep")],
    )
    assert refusal.reason == "a bearer token is required"
    assert wire.answer_upgrade(0.2, refusal) is True
    reply = wire.data_to_send()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 401 Unauthorized",
        b"content-type: text/plain; charset=utf-8",
        b"content-length: 39",
        b"connection: close",
        b"WWW-Authenticate: Bearer",  # the hook's framing fields were dropped
    ]
    assert body == b"a bearer token is required\nsee the docs"
    actions = wire.take_actions()
    assert RejectUpgrade(401, "a bearer token is required") in actions
    assert actions[-1] == CloseTransport()
    assert wire.lifecycle.cause is TerminationCause.HANDSHAKE_REJECTED
    assert SCHEDULERS[wire].metrics.handshakes_rejected == {401: 1}


@pytest.mark.parametrize(
    ("status", "phrase"), [(302, b"Found"), (399, b"Redirect"), (599, b"Error"), (429, b"Too Many")]
)
def test_a_rejection_may_redirect_or_use_any_error_status(status: int, phrase: bytes) -> None:
    wire = deferred_wire()
    pending(wire)
    headers = {"Location": "wss://other.example/", "Content-Type": "application/json"}
    wire.answer_upgrade(0.2, Reject(status, b'{"go":"elsewhere"}', headers))
    head = wire.data_to_send().partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 %d %s" % (status, phrase))
    assert b"content-type: text/plain" not in head  # the hook set its own
    assert b"\r\nContent-Type: application/json" in head


def test_an_unoffered_subprotocol_raises_and_changes_nothing() -> None:
    wire = deferred_wire()
    pending(wire, upgrade_request(extra=[("Sec-WebSocket-Protocol", "chat.v1")]))
    with pytest.raises(ValueError, match=r"'chat.v2' was not offered by the client \(it offered"):
        wire.answer_upgrade(0.2, Accept("chat.v2"))
    assert wire.awaiting_answer
    with pytest.raises(TypeError, match="must return Accept, Reject or None"):
        wire.answer_upgrade(0.2, "yes")  # type: ignore[arg-type]
    assert wire.awaiting_answer
    assert wire.answer_upgrade(0.2, Reject(500)) is True
    assert wire.data_to_send().startswith(b"HTTP/1.1 500 ")


def test_the_handshake_timeout_runs_while_the_hook_thinks() -> None:
    """No answer by handshake_timeout: terminated; the late answer is dropped."""
    cfg = config(handshake_timeout=2.0)
    wire = deferred_wire(cfg)
    pending(wire)
    scheduler = SCHEDULERS[wire]
    assert scheduler.next_deadline() == pytest.approx(2.0, abs=cfg.effective_timer_slack)
    for lifecycle in scheduler.tick(2.1):
        assert lifecycle is wire.lifecycle
    wire.pump(2.1)
    assert Terminate(TerminationCause.HANDSHAKE_TIMEOUT) in wire.take_actions()
    assert not wire.awaiting_answer
    assert wire.answer_upgrade(2.5, Accept()) is False
    assert wire.data_to_send() == b""


def test_a_drain_while_the_hook_thinks_refuses_with_503() -> None:
    wire = deferred_wire()
    pending(wire)
    scheduler = SCHEDULERS[wire]
    for lifecycle in scheduler.begin_drain(0.3):
        assert lifecycle is wire.lifecycle
    wire.pump(0.3)
    assert wire.data_to_send().startswith(b"HTTP/1.1 503 ")
    assert wire.answer_upgrade(0.4, Accept()) is False


def test_the_connection_limit_is_checked_when_the_hook_accepts() -> None:
    cfg = config(max_connections=1)
    scheduler = Scheduler(cfg, seeded_entropy(4))
    first, second = (
        ServerConnection(scheduler, 0.0, defer_handshake=True),
        ServerConnection(scheduler, 0.0, defer_handshake=True),
    )
    pending(first)
    pending(second)
    assert first.answer_upgrade(0.2, Accept()) is True
    assert second.answer_upgrade(0.2, Accept()) is True  # answered: with 503
    assert second.data_to_send().startswith(b"HTTP/1.1 503 ")
    assert second.lifecycle.cause is TerminationCause.CONNECTION_LIMIT


def test_an_undeferred_wire_never_waits() -> None:
    wire = ServerConnection(Scheduler(config(), seeded_entropy(5)), 0.0)
    assert wire.remote_address is None
    assert wire.answer_upgrade(0.0, Accept()) is False  # nothing asked yet
    wire.receive_data(upgrade_request(), 0.1)
    assert wire.state is State.ACTIVE
    assert not any(isinstance(a, HandshakeRequested) for a in wire.take_actions())
    assert wire.answer_upgrade(0.2, Accept()) is False


def test_the_origin_policy_runs_before_the_hook() -> None:
    """A refused Origin never reaches the hook: 403 with the reason in the body."""
    wire = deferred_wire(config(allow_no_origin=False))
    wire.receive_data(upgrade_request(extra=[("Origin", "https://evil.example")]), 0.1)
    reply = wire.data_to_send()
    assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert reply.endswith(
        b"Origin 'https://evil.example' not allowed: it is not the Host's origin;"
        b" add it with --allow-origin or allowed_origins\n"
    )
    assert not any(isinstance(a, HandshakeRequested) for a in wire.take_actions())


def test_trusted_proxies_set_the_remote_address() -> None:
    cfg = config(trusted_proxies=frozenset({"10.0.0.0/8"}))
    wire = deferred_wire(cfg)
    request = pending(wire, upgrade_request(extra=[("X-Forwarded-For", "198.51.100.4")]))
    assert request.remote_address == ("198.51.100.4", 0)
    assert request.peer_address == PEER
    assert wire.remote_address == ("198.51.100.4", 0)


# ------------------------------------------------------------- after the end


def test_close_code_and_reason_are_the_peers() -> None:
    wire = deferred_wire()
    pending(wire)
    wire.answer_upgrade(0.2, None)
    wire.data_to_send()
    assert (wire.close_code, wire.close_reason) == (None, None)
    wire.receive_data(close_frame(4001, b"bye"), 0.5)
    (echo,) = parse_server_frames(wire.data_to_send())
    assert echo.close_code == 4001
    wire.receive_data(close_frame(1000), 0.6)  # a second close frame is not recorded
    wire.receive_eof(0.7)
    assert wire.state is State.CLOSED
    assert (wire.close_code, wire.close_reason) == (4001, "bye")


def test_close_code_1005_without_a_code_and_1006_without_a_frame() -> None:
    quiet = deferred_wire()
    pending(quiet)
    quiet.answer_upgrade(0.2, None)
    quiet.receive_data(close_frame(), 0.5)
    quiet.receive_eof(0.6)
    assert (quiet.close_code, quiet.close_reason) == (1005, "")

    lost = deferred_wire()
    pending(lost)
    lost.answer_upgrade(0.2, None)
    lost.terminate(0.5, TerminationCause.SERVER_STOPPED)
    assert (lost.close_code, lost.close_reason) == (1006, "")
