"""The torture cases: hostile clients on raw sockets, each with the outcome
the server must give and a time bound.

A case is a function ``(port) -> Outcome`` plus the outcome expected. Clients
speak raw bytes (handshakes, masked frames, resets) so every byte is the
test's choice; frames are built with tests.wire.helpers.frame.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import time
import zlib
from collections.abc import Callable

from tests.wire.helpers import KEY, close_frame, frame, standard_headers
from tests.wire.helpers import upgrade_request as request

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

#: The server config the torture suite runs against: small limits, fast timeouts.
LIMITS = {
    "heartbeat_interval": 0.5,
    "handshake_timeout": 1.0,
    "close_timeout": 1.0,
    "max_message_size": 64 * 1024,
    "max_fragments": 16,
    "max_request_line": 1024,
    "max_header_bytes": 4096,
    "max_headers": 32,
    "write_buffer_guard": 64 * 1024,
    "max_write_buffer": 256 * 1024,
    "max_connections": 40,
    "compression": True,
    "allowed_origins": frozenset({"https://app.example.com"}),
    "allow_no_origin": True,
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the client saw: an HTTP status, a close code, or the socket ending."""

    kind: str  # "http", "close", "ended"
    value: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind} {self.value}" if self.value else self.kind


def HTTP(status: int) -> Outcome:  # noqa: N802 - reads as a constant in the table
    return Outcome("http", status)


def CLOSE(code: int) -> Outcome:  # noqa: N802 - reads as a constant in the table
    return Outcome("close", code)


ENDED = Outcome("ended")


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    name: str
    run: Callable[[int], Outcome]
    expected: Outcome
    within: float  # seconds: the outcome must be seen by then


# ------------------------------------------------------------------ clients


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def without(name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in standard_headers() if n != name]


def replaced(name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in standard_headers()]


def read_until_end(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes or resets (or timeout)."""
    start = time.monotonic()
    data = b""
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"server still open after {timeout} s; got {data[:200]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def http_outcome(sock: socket.socket, timeout: float = 5.0) -> Outcome:
    data, seconds = read_until_end(sock, timeout)
    if data.startswith(b"HTTP/1.1 "):
        return Outcome("http", int(data.split(b" ", 2)[1]), seconds)
    return Outcome("ended", 0, seconds)


def upgraded(port: int, extra: list[tuple[str, str]] = ()) -> socket.socket:  # type: ignore[assignment]
    sock = connect(port)
    sock.sendall(request(extra=extra))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head[:100]
    return sock


def close_outcome(sock: socket.socket, timeout: float = 5.0) -> Outcome:
    """Read frames until the server's close frame (answered) or the end."""
    start = time.monotonic()
    buffer = b""
    deadline = start + timeout
    while True:
        code = _close_code(buffer)
        if code is not None:
            with contextlib.suppress(OSError):
                sock.sendall(close_frame(code if code not in (1005, 1006) else 1000))
            return Outcome("close", code, time.monotonic() - start)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no close frame after {timeout} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return Outcome("ended", 0, time.monotonic() - start)
        buffer += chunk


def _close_code(data: bytes) -> int | None:
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        header = 2
        if length == 126:
            if i + 4 > len(data):
                return None
            (length,) = struct.unpack("!H", data[i + 2 : i + 4])
            header = 4
        elif length == 127:
            if i + 10 > len(data):
                return None
            (length,) = struct.unpack("!Q", data[i + 2 : i + 10])
            header = 10
        if i + header + length > len(data):
            return None
        if opcode == OP_CLOSE:
            payload = data[i + header : i + header + length]
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        i += header + length
    return None


def read_message(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """The payload of the next data frame, skipping the server's heartbeat
    pings (which may come first at any time)."""
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            header = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                (length,) = struct.unpack("!H", buffer[2:4])
                header = 4
            if len(buffer) < header + length:
                break
            payload, buffer = buffer[header : header + length], buffer[header + length :]
            if opcode in (OP_TEXT, OP_BINARY):
                return payload
        chunk = sock.recv(65536)
        assert chunk, "the server closed before sending a message"
        buffer += chunk


def rst(sock: socket.socket) -> None:
    """Reset the connection (SO_LINGER 0, then close)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def eof(sock: socket.socket) -> None:
    """Half-close (FIN), then let go of the socket."""
    sock.shutdown(socket.SHUT_WR)
    sock.close()


# -------------------------------------------------------------------- cases


def handshake_case(data: bytes, **connect_kw: object) -> Callable[[int], Outcome]:
    def run(port: int) -> Outcome:
        with connect(port) as sock:
            sock.sendall(data)
            return http_outcome(sock)

    return run


def frames_case(data: bytes, extra: list[tuple[str, str]] = ()) -> Callable[[int], Outcome]:  # type: ignore[assignment]
    def run(port: int) -> Outcome:
        with upgraded(port, extra) as sock:
            sock.sendall(data)
            return close_outcome(sock)

    return run


def silent(data: bytes) -> Callable[[int], Outcome]:
    """Send ``data`` (maybe nothing) and then nothing more: slowloris."""

    def run(port: int) -> Outcome:
        with connect(port) as sock:
            if data:
                sock.sendall(data)
            return http_outcome(sock, timeout=5)

    return run


def trickle(port: int) -> Outcome:
    """One byte of a valid request every 0.2 s: never done within the deadline."""
    data = request()
    with connect(port) as sock:
        start = time.monotonic()
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.2)  # the pacing is also the wait for the server's verdict
            try:
                if not sock.recv(4096):
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
        return Outcome("ended", 0, time.monotonic() - start)


def many_slowloris_then_a_real_client(port: int) -> Outcome:
    """30 idle half-handshakes do not stop a real client from being served."""
    idle = [connect(port) for _ in range(30)]
    try:
        for sock in idle:
            sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\n")
        with upgraded(port) as sock:
            sock.sendall(frame(OP_TEXT, b"served"))
            assert read_message(sock) == b"served"
            sock.sendall(close_frame(1000))
            return close_outcome(sock)
    finally:
        for sock in idle:
            sock.close()


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


DEFLATE = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]


def lifecycle_end(
    action: Callable[[socket.socket], None], upgrade: bool
) -> Callable[[int], Outcome]:
    """End the connection abruptly at some point; the server must just clean up."""

    def run(port: int) -> Outcome:
        sock = upgraded(port) if upgrade else connect(port)
        action(sock)
        return ENDED

    return run


def _send_then(
    data: bytes, end: Callable[[socket.socket], None]
) -> Callable[[socket.socket], None]:
    def act(sock: socket.socket) -> None:
        sock.sendall(data)
        end(sock)

    return act


def _close_after_server_close(sock: socket.socket) -> None:
    """We start the close, the server answers, we vanish with RST."""
    sock.sendall(close_frame(1000))
    sock.settimeout(5)
    sock.recv(4096)
    rst(sock)


def flood_without_reading(port: int) -> Outcome:
    """Echo mode: keep sending, never read. The echoes (critical) pile up in
    the server until the slow-consumer limit terminates the connection."""
    sock = upgraded(port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = frame(OP_BINARY, b"x" * 32 * 1024)
    start = time.monotonic()
    try:
        sock.settimeout(10)
        while time.monotonic() - start < 10:
            sock.sendall(payload)
    except OSError:  # reset by the server: terminated
        return Outcome("ended", 0, time.monotonic() - start)
    finally:
        sock.close()
    raise TimeoutError("the server never cut a client that does not read")


def connection_flood(port: int) -> Outcome:
    """Beyond max_connections, upgrades get 503; those accepted still work."""
    accepted, refused = [], 0
    try:
        for _ in range(LIMITS["max_connections"] + 10):  # type: ignore[operator]
            sock = connect(port)
            sock.sendall(request())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            if head.startswith(b"HTTP/1.1 101 "):
                accepted.append(sock)
            else:
                assert head.startswith(b"HTTP/1.1 503 "), head[:60]
                refused += 1
                sock.close()
        assert len(accepted) == LIMITS["max_connections"], len(accepted)
        assert refused == 10
        accepted[0].sendall(frame(OP_TEXT, b"still served"))
        assert read_message(accepted[0]) == b"still served"
        return HTTP(503)
    finally:
        for sock in accepted:
            sock.close()


ORIGIN = "Origin"
BOMB = deflated(b"\x00" * (16 << 20))  # 16 MiB of zeros: about 16 KiB deflated

# One case per line, grouped by family: (family, name, client, expected, bound in s).
# fmt: off
CASES: list[Case] = [
    # --- slow and partial handshakes (slowloris): terminated at the deadline
    Case("slowloris", "nothing sent", silent(b""), ENDED, 2.5),
    Case("slowloris", "half a request line", silent(b"GET /ch"), ENDED, 2.5),
    Case("slowloris", "head without its blank line", silent(request()[:-2]), ENDED, 2.5),
    Case("slowloris", "one byte every 0.2 s", trickle, ENDED, 2.5),
    Case("slowloris", "30 idle half-heads, then a real client", many_slowloris_then_a_real_client, CLOSE(1000), 5),
    # --- oversized and over-numerous headers
    Case("headers", "33 header fields", handshake_case(request(extra=[(f"X-{i}", "v") for i in range(33)])), HTTP(431), 2),
    Case("headers", "one 5 KiB field", handshake_case(request(extra=[("X-Big", "b" * 5000)])), HTTP(431), 2),
    Case("headers", "2 KiB request line", handshake_case(request("/" + "a" * 2048)), HTTP(414), 2),
    Case("headers", "request line still growing", handshake_case(b"GET /" + b"a" * 1500), HTTP(414), 2),
    Case("headers", "head growing past the cap", handshake_case(request()[:-2] + b"X-More: " + b"z" * 5000), HTTP(431), 2),
    # --- bad upgrade requests of every kind
    Case("upgrade", "POST", handshake_case(request(method="POST")), HTTP(405), 2),
    Case("upgrade", "PUT", handshake_case(request(method="PUT")), HTTP(405), 2),
    Case("upgrade", "HTTP/1.0", handshake_case(request(version="HTTP/1.0")), HTTP(400), 2),
    Case("upgrade", "no Upgrade header", handshake_case(request(headers=without("Upgrade"))), HTTP(426), 2),
    Case("upgrade", "Upgrade: h2c", handshake_case(request(headers=replaced("Upgrade", "h2c"))), HTTP(426), 2),
    Case("upgrade", "Connection: keep-alive", handshake_case(request(headers=replaced("Connection", "keep-alive"))), HTTP(426), 2),
    Case("upgrade", "version 8", handshake_case(request(headers=replaced("Sec-WebSocket-Version", "8"))), HTTP(426), 2),
    Case("upgrade", "no key", handshake_case(request(headers=without("Sec-WebSocket-Key"))), HTTP(400), 2),
    Case("upgrade", "short key", handshake_case(request(headers=replaced("Sec-WebSocket-Key", "c2hvcnQ="))), HTTP(400), 2),
    Case("upgrade", "two keys", handshake_case(request(extra=[("Sec-WebSocket-Key", KEY)])), HTTP(400), 2),
    Case("upgrade", "no Host", handshake_case(request(headers=without("Host"))), HTTP(400), 2),
    Case("upgrade", "a body", handshake_case(request(extra=[("Content-Length", "4")]) + b"body"), HTTP(400), 2),
    Case("upgrade", "binary garbage", handshake_case(b"\x00\xff\x13\x37" * 20 + b"\r\n\r\n"), HTTP(400), 2),
    Case("upgrade", "a TLS ClientHello", handshake_case(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40), HTTP(400), 2),
    # --- cross-site and malformed Origins: 403 before the upgrade
    Case("origin", "another site", handshake_case(request(extra=[(ORIGIN, "https://evil.example")])), HTTP(403), 2),
    Case("origin", "null", handshake_case(request(extra=[(ORIGIN, "null")])), HTTP(403), 2),
    Case("origin", "no scheme", handshake_case(request(extra=[(ORIGIN, "app.example.com")])), HTTP(403), 2),
    Case("origin", "allowed host, other port", handshake_case(request(extra=[(ORIGIN, "https://app.example.com:8443")])), HTTP(403), 2),
    Case("origin", "with userinfo", handshake_case(request(extra=[(ORIGIN, "https://app.example.com@evil.example")])), HTTP(403), 2),
    Case("origin", "same host, other port", handshake_case(request(extra=[(ORIGIN, "http://localhost:81")])), HTTP(403), 2),
    # --- frames: huge lengths, caps, control frames, reserved bits and opcodes, masks, UTF-8
    Case("frames", "header claiming 2^62 bytes", frames_case(frame(OP_BINARY, b"", length=2**62)[:14]), CLOSE(1009), 2),
    Case("frames", "message over the cap in fragments", frames_case(b"".join(frame(OP_BINARY if i == 0 else OP_CONT, b"a" * 20000, fin=i == 3) for i in range(4))), CLOSE(1009), 2),
    Case("frames", "17 fragments", frames_case(b"".join(frame(OP_TEXT if i == 0 else OP_CONT, b"a", fin=False) for i in range(17))), CLOSE(1009), 2),
    Case("frames", "17 empty fragments", frames_case(b"".join(frame(OP_TEXT if i == 0 else OP_CONT, b"", fin=False) for i in range(17))), CLOSE(1009), 2),
    Case("frames", "ping of 126 bytes", frames_case(frame(OP_PING, b"p" * 126)), CLOSE(1002), 2),
    Case("frames", "fragmented ping", frames_case(frame(OP_PING, b"p", fin=False)), CLOSE(1002), 2),
    Case("frames", "fragmented close", frames_case(frame(OP_CLOSE, b"\x03\xe8", fin=False)), CLOSE(1002), 2),
    Case("frames", "RSV1 on a control frame", frames_case(frame(OP_PING, b"p", rsv=4), DEFLATE), CLOSE(1002), 2),
    Case("frames", "RSV2", frames_case(frame(OP_TEXT, b"x", rsv=2)), CLOSE(1002), 2),
    Case("frames", "RSV3", frames_case(frame(OP_TEXT, b"x", rsv=1)), CLOSE(1002), 2),
    Case("frames", "opcode 3", frames_case(frame(0x3, b"x")), CLOSE(1002), 2),
    Case("frames", "opcode 11", frames_case(frame(0xB, b"")), CLOSE(1002), 2),
    Case("frames", "unmasked text", frames_case(frame(OP_TEXT, b"x", mask=False)), CLOSE(1002), 2),
    Case("frames", "unmasked ping", frames_case(frame(OP_PING, b"x", mask=False)), CLOSE(1002), 2),
    Case("frames", "continuation out of nowhere", frames_case(frame(OP_CONT, b"x")), CLOSE(1002), 2),
    Case("frames", "new message inside a fragmented one", frames_case(frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b")), CLOSE(1002), 2),
    Case("frames", "invalid UTF-8 split across fragments", frames_case(frame(OP_TEXT, b"ok\xe2\x82", fin=False) + frame(OP_CONT, b"\x28", fin=False)), CLOSE(1007), 2),
    Case("frames", "overlong UTF-8", frames_case(frame(OP_TEXT, b"\xc0\xaf")), CLOSE(1007), 2),
    Case("frames", "UTF-16 surrogate in UTF-8", frames_case(frame(OP_TEXT, b"\xed\xa0\x80")), CLOSE(1007), 2),
    # --- every class of close code and close payload
    Case("close", "1000 echoed", frames_case(close_frame(1000)), CLOSE(1000), 2),
    Case("close", "1001 echoed", frames_case(close_frame(1001, b"bye")), CLOSE(1001), 2),
    Case("close", "1011 echoed", frames_case(close_frame(1011)), CLOSE(1011), 2),
    Case("close", "1014 echoed (IANA)", frames_case(close_frame(1014)), CLOSE(1014), 2),
    Case("close", "3000 echoed (registered)", frames_case(close_frame(3000)), CLOSE(3000), 2),
    Case("close", "4999 echoed (private)", frames_case(close_frame(4999)), CLOSE(4999), 2),
    Case("close", "empty payload answered with 1000", frames_case(close_frame(None)), CLOSE(1000), 2),
    Case("close", "one-byte payload", frames_case(frame(OP_CLOSE, b"\x03")), CLOSE(1002), 2),
    Case("close", "0", frames_case(close_frame(0)), CLOSE(1002), 2),
    Case("close", "999", frames_case(close_frame(999)), CLOSE(1002), 2),
    Case("close", "1004 (reserved)", frames_case(close_frame(1004)), CLOSE(1002), 2),
    Case("close", "1005 (never on the wire)", frames_case(close_frame(1005)), CLOSE(1002), 2),
    Case("close", "1006 (never on the wire)", frames_case(close_frame(1006)), CLOSE(1002), 2),
    Case("close", "1015 (never on the wire)", frames_case(close_frame(1015)), CLOSE(1002), 2),
    Case("close", "2999 (unassigned)", frames_case(close_frame(2999)), CLOSE(1002), 2),
    Case("close", "5000", frames_case(close_frame(5000)), CLOSE(1002), 2),
    Case("close", "reason not UTF-8", frames_case(close_frame(1000, b"\xff\xfe")), CLOSE(1007), 2),
    Case("close", "reason of 123 bytes", frames_case(close_frame(1000, b"r" * 123)), CLOSE(1000), 2),
    # --- compression bombs (compression is on in this server)
    Case("compression", "16 MiB of zeros in one frame", frames_case(frame(OP_BINARY, BOMB, rsv=4), DEFLATE), CLOSE(1009), 3),
    Case("compression", "bomb spread over fragments", frames_case(frame(OP_BINARY, BOMB[: len(BOMB) // 2], rsv=4, fin=False) + frame(OP_CONT, BOMB[len(BOMB) // 2 :]), DEFLATE), CLOSE(1009), 3),
    Case("compression", "corrupt deflate stream", frames_case(frame(OP_TEXT, b"\xff" * 16, rsv=4), DEFLATE), CLOSE(1007), 2),
    Case("compression", "deflated invalid UTF-8", frames_case(frame(OP_TEXT, deflated(b"\xc3\x28"), rsv=4), DEFLATE), CLOSE(1007), 2),
    # --- RST and EOF at every point of a connection's life
    Case("abrupt", "RST right after connect", lifecycle_end(rst, upgrade=False), ENDED, 2),
    Case("abrupt", "EOF mid-request", lifecycle_end(_send_then(request()[:30], eof), upgrade=False), ENDED, 2),
    Case("abrupt", "RST after the request", lifecycle_end(_send_then(request(), rst), upgrade=False), ENDED, 2),
    Case("abrupt", "EOF right after the upgrade", lifecycle_end(eof, upgrade=True), ENDED, 2),
    Case("abrupt", "RST right after the upgrade", lifecycle_end(rst, upgrade=True), ENDED, 2),
    Case("abrupt", "RST mid-frame", lifecycle_end(_send_then(frame(OP_BINARY, b"x" * 1000)[:300], rst), upgrade=True), ENDED, 2),
    Case("abrupt", "EOF mid-message", lifecycle_end(_send_then(frame(OP_TEXT, b"half", fin=False), eof), upgrade=True), ENDED, 2),
    Case("abrupt", "RST after our close frame", lifecycle_end(_send_then(close_frame(1000), rst), upgrade=True), ENDED, 2),
    Case("abrupt", "RST after the server answered our close", lifecycle_end(_close_after_server_close, upgrade=True), ENDED, 2),
    # --- peers that stop reading, and floods
    Case("backpressure", "flood without reading (slow consumer)", flood_without_reading, ENDED, 10),
    Case("flood", "connections beyond max_connections", connection_flood, HTTP(503), 10),
]
# fmt: on
