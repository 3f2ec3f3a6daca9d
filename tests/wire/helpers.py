"""Helpers for wire tests: raw client frames (valid or not), a parser for
what the server writes, and feeding input whole, byte by byte or in chunks."""

from __future__ import annotations

import dataclasses
import os
import struct
import weakref
from collections.abc import Iterable

from wslifecycle import Config, Scheduler
from wslifecycle.actions import Action, StateChanged
from wslifecycle.hub import Hub
from wslifecycle.testing import seeded_entropy
from wslifecycle.wire import PlainResponder, ReleaseHook, ServerConnection

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example key
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # ...and its accept token


def config(**changes: object) -> Config:
    base: dict[str, object] = {"allow_no_origin": True, "heartbeat_interval": 10.0}
    base.update(changes)
    return Config(**base)  # type: ignore[arg-type]


def standard_headers() -> list[tuple[str, str]]:
    """The header fields of a well-formed upgrade request (RFC 6455 §4.1)."""
    return [
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]


def upgrade_request(
    path: str = "/chat",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    headers: Iterable[tuple[str, str]] | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """An upgrade request; ``headers`` replaces the standard set."""
    if headers is None:
        headers = standard_headers()
    lines = [f"{method} {path} {version}", *(f"{n}: {v}" for n, v in [*headers, *extra])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """A client frame, masked unless told otherwise; ``length`` may lie."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def text(data: str, **kw: object) -> bytes:
    return frame(0x1, data.encode(), **kw)  # type: ignore[arg-type]


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(0x8, payload)


@dataclasses.dataclass
class ServerFrame:
    opcode: int
    payload: bytes
    fin: bool

    @property
    def close_code(self) -> int | None:
        assert self.opcode == 0x8
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def parse_server_frames(data: bytes) -> list[ServerFrame]:
    """Frames the server wrote (unmasked, RFC 6455 §5.1); fails on anything else."""
    frames = []
    i = 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        assert not second & 0x80, "a server must not mask"
        n = second & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append(ServerFrame(first & 0x0F, data[i : i + n], bool(first & 0x80)))
        i += n
    return frames


def split_http(data: bytes) -> tuple[bytes, bytes]:
    """(HTTP head and body, bytes after the 101 response)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep
    return head + sep, rest


def released(wire: ServerConnection, channels: tuple[str, ...], now: float) -> None:
    """A release hook for tests: releasing always works."""


#: The scheduler each wire made by :func:`new_wire` was opened on.
_SCHEDULERS: weakref.WeakKeyDictionary[ServerConnection, Scheduler] = weakref.WeakKeyDictionary()


def new_wire(
    cfg: Config | None = None,
    *,
    seed: int = 1,
    responder: PlainResponder | None = None,
    release_channels: ReleaseHook | None = None,
) -> ServerConnection:
    scheduler = Scheduler(cfg or config(), seeded_entropy(seed))
    wire = ServerConnection(scheduler, 0.0, responder=responder, release_channels=release_channels)
    _SCHEDULERS[wire] = scheduler
    return wire


def scheduler_of(wire: ServerConnection) -> Scheduler:
    """The scheduler a wire from :func:`new_wire` or :func:`open_wire` runs on."""
    return _SCHEDULERS[wire]


def take_messages(wire: ServerConnection, now: float = 1.0) -> list[str | bytes]:
    """Every message waiting in the wire's inbox, oldest first; it empties."""
    messages: list[str | bytes] = []
    while (message := wire.take_message(now)) is not None:
        messages.append(message)
    return messages


_DEFAULT_HOOK: ReleaseHook = released


def open_wire(
    cfg: Config | None = None, *, release_channels: ReleaseHook | None = _DEFAULT_HOOK
) -> ServerConnection:
    """A wire past its handshake, output and actions taken."""
    wire = new_wire(cfg, release_channels=release_channels)
    wire.receive_data(upgrade_request(), 0.0)
    assert wire.data_to_send().startswith(b"HTTP/1.1 101 ")
    wire.take_actions()
    return wire


def first_probe(wire: ServerConnection) -> tuple[ServerFrame, float]:
    """Run the scheduler to the wire's first heartbeat slot: the one frame
    it wrote (a ping, or the JSON heartbeat) and the slot's time."""
    scheduler = scheduler_of(wire)
    deadline = scheduler.next_deadline()
    assert deadline is not None
    scheduler.tick(deadline)
    wire.pump(deadline)
    (probe,) = parse_server_frames(wire.data_to_send())
    return probe, deadline


@dataclasses.dataclass
class Outcome:
    written: bytes
    actions: list[Action]
    #: The messages delivered, in order (taken from the inbox after each chunk).
    messages: list[str | bytes]


def feed(wire: ServerConnection, data: bytes, mode: str, now: float = 1.0) -> Outcome:
    """Feed ``data`` whole, byte by byte, or in 7-byte chunks; collect the
    bytes written, the driver's actions and the messages delivered."""
    written = bytearray()
    actions: list[Action] = []
    messages: list[str | bytes] = []
    if mode == "whole":
        chunks = [data]
    elif mode == "bytes":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    for chunk in chunks:
        wire.receive_data(chunk, now)
        written += wire.data_to_send()
        actions += wire.take_actions()
        messages += take_messages(wire, now)
    return Outcome(bytes(written), actions, messages)


MODES = ["whole", "bytes", "chunks"]


def without_ids(actions: list[Action]) -> list[object]:
    return [(type(a).__name__, a.current) if isinstance(a, StateChanged) else a for a in actions]


def connect(hub: Hub) -> ServerConnection:
    """A wire of ``hub`` upgraded at time 0, its 101 and actions taken."""
    wire = hub.open(0.0)
    wire.receive_data(upgrade_request(), 0.0)
    wire.data_to_send()
    wire.take_actions()
    return wire
