"""The client's wire (``wslifecycle.client.ClientConnection``) against the
server's, bytes handed across in memory, on a fake clock: the handshake,
masked frames, the liveness rule seen from the client, every way it ends."""

from __future__ import annotations

import base64
import random
import struct

import pytest
from wsproto.utilities import generate_accept_token

from wslifecycle import Config, HeartbeatMode, Scheduler, State, TerminationCause
from wslifecycle.actions import AcceptUpgrade, CloseTransport, RejectUpgrade, Terminate
from wslifecycle.client import (
    ClientConnection,
    Outcome,
    Refused,
    ResponseReader,
    Upgraded,
    client_config,
    parse_url,
    render_request,
)
from wslifecycle.client.handshake import retry_after_seconds
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire.connection import ServerConnection
from wslifecycle.wire.frames import FrameReader, InboundFailure, InboundMessage, encode_frame

INTERVAL = 1.0


def outcome_of(wire: ClientConnection) -> Outcome | None:
    """Read afresh (a property mypy would keep narrowed across inputs)."""
    return wire.outcome


def state_of(wire: ClientConnection) -> State:
    return wire.state


class Pair:
    """A client wire and a server wire, joined by a lossless in-memory pipe."""

    def __init__(
        self,
        *,
        server: Config | None = None,
        client: Config | None = None,
        url: str = "ws://127.0.0.1:8765/chat",
        **options: object,
    ) -> None:
        rng = random.Random(7)
        self.server_scheduler = Scheduler(
            server or Config(heartbeat_interval=INTERVAL, allow_no_origin=True), seeded_entropy(1)
        )
        self.client_scheduler = Scheduler(
            client or client_config(heartbeat_interval=INTERVAL), seeded_entropy(2)
        )
        self.server = ServerConnection(self.server_scheduler, 0.0)
        self.client = ClientConnection(
            self.client_scheduler,
            0.0,
            parse_url(url),
            random_bytes=rng.randbytes,
            **options,  # type: ignore[arg-type]
        )
        self.client_actions: list[object] = []
        self.server_actions: list[object] = []
        self.server_silent = False  # a half-open server: its bytes never arrive

    def flow(self, now: float) -> None:
        for _ in range(10):
            moved = False
            data = self.client.data_to_send()
            if data and not self.server.ended:
                self.server.receive_data(data, now)
                moved = True
            data = self.server.data_to_send()
            if data and not self.server_silent and not self.client.ended:
                self.client.receive_data(data, now)
                moved = True
            self.client_actions += self.client.take_actions()
            self.server_actions += self.server.take_actions()
            if not moved:
                return

    def run(self, until: float, step: float = 0.05) -> None:
        now = 0.0
        while now < until:
            now = round(now + step, 6)
            for _ in self.client_scheduler.tick(now):
                pass
            self.client.pump(now)
            for _ in self.server_scheduler.tick(now):
                pass
            self.server.pump(now)
            self.flow(now)

    def open(self) -> Pair:
        self.flow(0.0)
        assert self.client.state is State.ACTIVE, self.client_actions
        return self


def test_the_handshake_upgrades_with_an_offered_subprotocol_and_messages_flow() -> None:
    pair = Pair(
        server=Config(
            heartbeat_interval=INTERVAL,
            allowed_origins=frozenset({"https://app.example"}),
            subprotocols=("b", "a"),
        ),
        subprotocols=("a", "b"),
        origin="https://app.example",
        headers=(("Authorization", "Bearer x"),),
    ).open()
    assert pair.client.subprotocol == "b"
    request = pair.server.request
    assert request is not None
    assert request.headers.get("origin") == "https://app.example"
    assert request.headers.get("authorization") == "Bearer x"
    assert request.path == "/chat"
    assert any(isinstance(a, AcceptUpgrade) for a in pair.client_actions)
    pair.client.send("hello", 0.1)
    pair.client.send(b"\x00\x01", 0.1)
    pair.flow(0.1)
    assert [pair.server.take_message(0.1), pair.server.take_message(0.1)] == ["hello", b"\x00\x01"]
    big = "x" * 70_000  # the 64-bit length form, masked
    pair.server.send(big, 0.2, critical=True)
    pair.client.send("y" * 300, 0.2)  # the 16-bit form
    pair.flow(0.2)
    assert pair.client.take_message(0.2) == big
    assert pair.server.take_message(0.2) == "y" * 300
    pair.client.send(big, 0.3)
    pair.flow(0.3)
    assert pair.server.take_message(0.3) == big
    assert pair.client.take_message(0.2) is None


def test_every_client_frame_is_masked_with_a_fresh_key() -> None:
    keys = iter([bytes(16), b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"])
    client = ClientConnection(
        Scheduler(client_config(), seeded_entropy(1)),
        0.0,
        parse_url("ws://h/"),
        random_bytes=lambda n: next(keys),
    )
    request = client.data_to_send()
    assert b"Sec-WebSocket-Key: " + base64.b64encode(bytes(16)) in request
    accept = generate_accept_token(base64.b64encode(bytes(16)))
    client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n",
        0.0,
    )
    client.send("ab", 0.0)
    client.send("ab", 0.0)
    data = client.data_to_send()
    first, second = data[:8], data[8:]
    assert first[:2] == b"\x81\x82"
    assert first[2:6] == b"\x01\x02\x03\x04"
    assert second[2:6] == b"\x05\x06\x07\x08"
    assert bytes(b ^ k for b, k in zip(first[6:], b"\x01\x02", strict=True)) == b"ab"


def test_a_silent_server_is_declared_dead_within_the_servers_own_bound() -> None:
    pair = Pair(server=Config(heartbeat_interval=100.0, allow_no_origin=True)).open()
    pair.server_silent = True  # from t = 0: nothing the server sends arrives
    pair.run(10.0)
    config = pair.client_scheduler.config
    terminated = [a for a in pair.client_actions if isinstance(a, Terminate)]
    assert terminated
    assert terminated[0].cause is TerminationCause.HEARTBEAT_TIMEOUT
    closed_at = pair.client.lifecycle  # CLOSED; when: checked below through the outcome
    assert closed_at.state is State.CLOSED
    outcome = pair.client.outcome
    assert outcome == Outcome(code=1006, reason="the server stopped answering pings", dead=True)
    # Detected no later than the bound (ticks every 50 ms: L = slack + 0.05).
    assert config.detection_bound <= 3 * INTERVAL


def test_a_server_that_pings_keeps_a_quiet_client_from_pinging_but_not_from_judging() -> None:
    """With the server pinging every interval, the client's own probes are
    QUIET (the server's pings prove it alive); when they stop arriving, the
    client probes and times out all the same."""
    pair = Pair().open()
    pair.run(6.0)
    assert pair.client.state is State.ACTIVE
    assert pair.server.state is State.ACTIVE
    assert pair.client_scheduler.metrics.pings_sent <= 1  # the server's pings sufficed


def test_a_pinging_client_measures_latency_against_a_quiet_server() -> None:
    pair = Pair(server=Config(heartbeat_interval=100.0, allow_no_origin=True)).open()
    pair.run(4.0)
    assert pair.client.latency == 0.0  # answered in the same step
    assert pair.client.state is State.ACTIVE


def test_a_silent_client_answers_nothing_and_the_server_terminates_it() -> None:
    pair = Pair(client=client_config(heartbeat_interval=1000.0)).open()
    pair.client.answer_pings = False
    pair.run(5.0)
    assert pair.server.state is State.CLOSED
    assert pair.server.lifecycle.cause is TerminationCause.HEARTBEAT_TIMEOUT


def test_application_heartbeats_are_echoed_unseen_unless_silent() -> None:
    server = Config(
        heartbeat_interval=INTERVAL, allow_no_origin=True, heartbeat_mode=HeartbeatMode.APPLICATION
    )
    pair = Pair(server=server, client=client_config(heartbeat_interval=1000.0)).open()
    pair.run(5.0)
    assert pair.server.state is State.ACTIVE
    assert pair.server_scheduler.metrics.app_heartbeat_echoes >= 3
    assert pair.client.take_message(5.0) is None  # never delivered
    pair.client.answer_pings = False
    pair.run(10.0)
    assert pair.server.lifecycle.cause is TerminationCause.APP_HEARTBEAT_TIMEOUT


def test_closing_completes_the_handshake_and_reports_a_local_1000() -> None:
    pair = Pair().open()
    pair.client.close(1.0, 1000, "bye")
    pair.flow(1.0)
    assert pair.server.close_code == 1000
    assert pair.client.state is State.CLOSED
    assert pair.client.outcome == Outcome(code=1000, reason="", local=True)
    pair.client.close(1.1)  # no effect once closed
    assert pair.client.data_to_send() == b""


def test_a_close_before_the_upgrade_drops_the_attempt() -> None:
    pair = Pair()
    pair.client.close(0.0)
    assert pair.client.ended
    assert isinstance(pair.client.take_actions()[-1], Terminate)
    assert pair.client.outcome is not None
    assert pair.client.outcome.local


@pytest.mark.parametrize(("code", "reason"), [(1008, "policy"), (1012, "restart"), (4000, "")])
def test_the_servers_close_code_is_the_outcome(code: int, reason: str) -> None:
    pair = Pair().open()
    pair.server.close(1.0, code, reason)
    pair.flow(1.0)
    assert pair.client.outcome == Outcome(code=code, reason=reason)
    assert any(isinstance(a, CloseTransport) for a in pair.client_actions)


def test_a_close_frame_without_a_code_is_1005() -> None:
    pair = Pair().open()
    pair.client.receive_data(encode_frame(0x8, b""), 1.0)
    pair.flow(1.0)
    assert pair.client.outcome == Outcome(code=1005)


def test_eof_or_a_reset_without_a_close_frame_is_1006() -> None:
    pair = Pair().open()
    pair.client.receive_eof(1.0)
    assert pair.client.outcome == Outcome(code=1006, reason="eof")
    pair.client.receive_eof(1.1)  # once ended, ignored
    pair.client.transport_lost(1.1, "again")
    other = Pair().open()
    other.client.transport_lost(1.0, "ConnectionResetError: reset")
    assert other.client.outcome == Outcome(code=1006, reason="ConnectionResetError: reset")


def test_a_masked_frame_from_the_server_fails_the_connection_with_1002() -> None:
    pair = Pair().open()
    masked = (
        b"\x81\x82"
        + b"\x01\x02\x03\x04"
        + bytes(b ^ k for b, k in zip(b"hi", b"\x01\x02", strict=False))
    )
    pair.client.receive_data(masked, 1.0)
    assert outcome_of(pair.client) is None  # closing: our 1002 went out
    pair.run(11.0)  # the reader reads nothing after a failure: the close timeout ends it
    assert pair.server.close_code == 1002
    outcome = pair.client.outcome
    assert outcome is not None
    assert outcome.code == 1002
    assert outcome.local


def test_a_server_message_over_the_cap_gets_1009() -> None:
    pair = Pair(client=client_config(max_message_size=1000)).open()
    pair.server.send("x" * 2000, 1.0, critical=True)
    pair.flow(1.0)
    pair.run(11.0)
    assert pair.server.close_code == 1009
    assert pair.client.outcome == Outcome(code=1009, reason="frame declares 2000 bytes", local=True)


def test_the_upgrade_times_out_without_an_answer() -> None:
    pair = Pair(client=client_config(handshake_timeout=2.0))
    pair.server_silent = True
    pair.run(3.0)
    assert pair.client.outcome == Outcome(
        code=1006, reason="no answer to the upgrade request in time"
    )


def test_a_refusal_carries_its_status_and_retry_after() -> None:
    client = ClientConnection(
        Scheduler(client_config(), seeded_entropy(1)), 0.0, parse_url("ws://h/"), random_bytes=bytes
    )
    client.receive_data(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\ncontent-length: 5\r\n\r\nbusy\n",
        0.0,
    )
    actions = client.take_actions()
    assert any(isinstance(a, RejectUpgrade) and a.status == 503 for a in actions)
    assert isinstance(actions[-1], CloseTransport)
    assert client.outcome == Outcome(status=503, reason="Service Unavailable", retry_after=7.0)
    assert client.refusal is not None
    assert client.refusal.status == 503


def _answer(key: bytes, *extra: str, accept: str | None = None) -> bytes:
    token = accept if accept is not None else generate_accept_token(base64.b64encode(key)).decode()
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {token}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


KEY = bytes(range(16))


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (_answer(KEY, accept="wrong"), "101 with a wrong Sec-WebSocket-Accept"),
        (
            _answer(KEY).replace(b"Upgrade: websocket\r\n", b""),
            "101 without Upgrade: websocket",
        ),
        (
            _answer(KEY).replace(b"Connection: Upgrade", b"Connection: keep-alive"),
            "101 without Connection: Upgrade",
        ),
        (
            _answer(KEY, "Sec-WebSocket-Extensions: permessage-deflate"),
            "101 accepting an extension that was not offered",
        ),
        (
            _answer(KEY, "Sec-WebSocket-Protocol: z"),
            "101 choosing subprotocol 'z', which was not offered",
        ),
    ],
)
def test_a_101_that_breaks_the_rules_is_refused(response: bytes, reason: str) -> None:
    reader = ResponseReader(KEY, subprotocols=("a",))
    assert reader.feed(response) == Refused(101, reason, reader_headers(response))


def reader_headers(response: bytes) -> tuple[tuple[str, str], ...]:
    lines = response.decode().split("\r\n")[1:]
    return tuple(
        (name.lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines if line)
    )


def test_the_response_may_arrive_byte_by_byte_with_frames_behind_it() -> None:
    reader = ResponseReader(KEY, subprotocols=("a",))
    data = _answer(KEY, "Sec-WebSocket-Protocol: a") + encode_frame(0x1, b"hi")
    verdicts = [reader.feed(data[i : i + 1]) for i in range(len(data) - 4)]
    assert all(v is None for v in verdicts[:-1])
    verdict = verdicts[-1]
    assert isinstance(verdict, Upgraded)
    assert verdict.subprotocol == "a"
    assert verdict.trailing == encode_frame(0x1, b"hi")[:-4]


def test_frames_in_the_same_read_as_the_101_are_delivered() -> None:
    rng = random.Random(3)
    client = ClientConnection(
        Scheduler(client_config(), seeded_entropy(1)),
        0.0,
        parse_url("ws://h/"),
        random_bytes=rng.randbytes,
    )
    request = client.data_to_send()
    key = base64.b64decode(request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0])
    client.receive_data(_answer(key) + encode_frame(0x1, b"first"), 0.0)
    assert client.take_message(0.0) == "first"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the server closed the connection before answering"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", None),
    ],
)
def test_an_answer_that_is_not_http_is_refused_with_status_0(
    data: bytes, reason: str | None
) -> None:
    verdict = ResponseReader(KEY).feed(data)
    assert isinstance(verdict, Refused)
    assert verdict.status == 0
    if reason is not None:
        assert verdict.reason == reason
    else:
        assert verdict.reason.startswith("malformed HTTP response")


def test_eof_before_the_answer_is_a_lost_transport_that_reconnects() -> None:
    client = ClientConnection(
        Scheduler(client_config(), seeded_entropy(1)), 0.0, parse_url("ws://h/"), random_bytes=bytes
    )
    client.receive_eof(0.5)
    assert client.outcome == Outcome(
        code=1006, reason="the server closed the connection before answering"
    )
    assert client.ended


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after_seconds(" 120 ", None) == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", None) is None
    assert (
        retry_after_seconds("Wed, 21 Oct 2015 07:28:00", 0.0) is None
    )  # no zone: not an HTTP-date
    assert retry_after_seconds("soon", 0.0) is None
    assert retry_after_seconds("Wed, 21 Foo 2015 07:28:00 GMT", 0.0) is None
    assert retry_after_seconds("Wed 21 Oct 2015 07:28:00 GMT", 0.0) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28 GMT", 0.0) is None
    assert retry_after_seconds("-5", 0.0) is None


def test_the_request_is_a_valid_upgrade_and_guards_its_own_fields() -> None:
    data = render_request("h:81", "/p?q=1", KEY, subprotocols=("a", "b"), origin="https://o")
    assert data.startswith(b"GET /p?q=1 HTTP/1.1\r\n")
    for field in (
        b"Host: h:81",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        b"Origin: https://o",
        b"Sec-WebSocket-Protocol: a, b",
    ):
        assert field in data
    with pytest.raises(ValueError, match="16 bytes"):
        render_request("h", "/", b"short")
    with pytest.raises(ValueError, match="handshake's own"):
        render_request("h", "/", KEY, headers=(("Sec-WebSocket-Key", "x"),))
    with pytest.raises(ValueError, match="invalid request header"):
        render_request("h", "/", KEY, headers=(("Bad Name", "x"),))


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("ws://example.com", (False, "example.com", 80, "/", "example.com")),
        ("wss://example.com/a?b=c", (True, "example.com", 443, "/a?b=c", "example.com")),
        ("ws://127.0.0.1:8765/x", (False, "127.0.0.1", 8765, "/x", "127.0.0.1:8765")),
        ("WSS://[::1]:9000/", (True, "::1", 9000, "/", "[::1]:9000")),
        ("wss://[::1]/", (True, "::1", 443, "/", "[::1]")),
    ],
)
def test_urls(url: str, target: tuple[object, ...]) -> None:
    parsed = parse_url(url)
    assert (parsed.secure, parsed.host, parsed.port, parsed.resource, parsed.host_header) == target
    assert parse_url(parsed.url) == parsed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/", "scheme must be ws or wss"),
        ("ws://h/#frag", "no fragment"),
        ("ws://h/#", "no fragment"),
        ("ws://user:pw@h/", "credentials"),
        ("ws:///path", "no host"),
        ("ws://h:99999/", "out of range"),
        (b"ws://h/", "is a str"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_an_outcome_has_exactly_one_of_code_and_status() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Outcome()
    with pytest.raises(ValueError, match="exactly one"):
        Outcome(code=1000, status=403)
    assert str(Outcome(code=1008, reason="no")) == "close code 1008: no"
    assert str(Outcome(status=403)) == "HTTP 403"


def test_the_client_reader_takes_unmasked_frames_whole_or_in_pieces() -> None:
    frames = encode_frame(0x1, b"a") + struct.pack("!BBH", 0x82, 126, 200) + b"b" * 200
    whole = FrameReader(client_config(), [], client=True).feed(frames)
    reader = FrameReader(client_config(), [], client=True)
    pieces = [item for i in range(len(frames)) for item in reader.feed(frames[i : i + 1])]
    assert whole == pieces == [InboundMessage("a"), InboundMessage(b"b" * 200)]
    masked = b"\x81\x81" + b"\x00\x00\x00\x00" + b"a"
    for feed in (masked, masked[:1]):
        reader = FrameReader(client_config(), [], client=True)
        items = reader.feed(feed) + reader.feed(masked[1:] if feed != masked else b"")
        assert isinstance(items[0], InboundFailure)
        assert items[0].code == 1002


def test_the_answer_in_two_reads_and_input_after_the_end_is_dropped() -> None:
    pair = Pair()
    request = pair.client.data_to_send()
    pair.server.receive_data(request, 0.0)
    answer = pair.server.data_to_send()
    pair.client.receive_data(answer[:10], 0.0)
    assert state_of(pair.client) is State.OPEN
    pair.client.receive_data(b"", 0.0)
    pair.client.receive_data(answer[10:], 0.0)
    assert pair.client.state is State.ACTIVE
    assert repr(pair.client) == "<ClientConnection ws://127.0.0.1:8765/chat active>"
    pair.client.transport_lost(1.0)
    assert pair.client.outcome == Outcome(code=1006, reason="transport_lost")
    pair.client.receive_data(encode_frame(0x1, b"late"), 1.1)
    assert pair.client.take_message(1.1) is None


def test_an_application_that_falls_behind_pauses_reading_until_it_catches_up() -> None:
    pair = Pair(client=client_config(inbox_high_water=4, inbox_low_water=1)).open()
    for i in range(4):
        pair.server.send(f"m{i}", 1.0, critical=True)
    pair.flow(1.0)
    assert pair.client.reading_paused
    taken = [pair.client.take_message(1.0) for _ in range(3)]
    assert taken == ["m0", "m1", "m2"]
    assert not pair.client.reading_paused


def test_a_heartbeat_that_arrives_while_closing_is_not_echoed() -> None:
    server = Config(
        heartbeat_interval=INTERVAL, allow_no_origin=True, heartbeat_mode=HeartbeatMode.APPLICATION
    )
    pair = Pair(server=server).open()
    pair.client.close(1.0)
    pair.client.data_to_send()  # our close frame, lost
    pair.client.receive_data(encode_frame(0x1, b'{"type":"heartbeat","id":"x"}'), 1.1)
    assert pair.client.data_to_send() == b""
    assert pair.client.take_message(1.1) is None
