"""WebSocket frames in and out, with every limit enforced.

Inbound, wsproto's ``FrameDecoder`` parses and unmasks frames (RFC 6455
§5.2, §5.3) and streams data-frame payloads as they arrive, and its
``MessageDecoder`` checks fragment order and decodes UTF-8 incrementally, so
invalid text fails as soon as its bad byte arrives (§8.1, 1007). wsproto has
no size or fragment caps and reports parse failures as if they were close
frames, so :class:`FrameReader` drives those two pieces itself and adds:

* the message cap, counted across fragments in payload bytes (after
  inflation) and checked against a frame's *declared* length as soon as its
  header arrives, so a header claiming 2^62 bytes fails before any payload
  (1009);
* the fragment cap, every frame of a message counted, empty ones too (1009);
* close-frame rules (§5.5.1, §7.4): a one-byte payload or a code outside
  1000-1003, 1007-1014, 3000-4999 is a protocol error (1002), a reason that
  is not UTF-8 is 1007;
* a failure is an :class:`InboundFailure` value, never an exception.

Outbound frames from a server are unmasked (§5.1); :func:`encode_frame`
writes them directly (a header and the payload) because that is the hot
path of every ping and message. With permessage-deflate negotiated, data
frames go through wsproto's ``FrameProtocol`` instead.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import cast

from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    MessageDecoder,
    Opcode,
    ParseFailed,
)

from ..causes import TerminationCause
from ..close_codes import is_sendable
from ..config import Config

__all__ = [
    "CloseReceived",
    "FrameReader",
    "InboundFailure",
    "MessageReceived",
    "PingReceived",
    "PongReceived",
    "encode_close",
    "encode_frame",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_CAUSE_FOR_CODE = {
    1002: TerminationCause.PROTOCOL_ERROR,
    1007: TerminationCause.INVALID_PAYLOAD,
    1009: TerminationCause.MESSAGE_TOO_BIG,
}


@dataclasses.dataclass(frozen=True, slots=True)
class MessageReceived:
    data: str | bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PingReceived:
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class InboundFailure:
    """The peer broke the protocol or a limit: fail with ``code``."""

    code: int
    cause: TerminationCause
    reason: str


Inbound = MessageReceived | PingReceived | PongReceived | CloseReceived | InboundFailure


class FrameReader:
    """Bytes from the client in, complete messages and control frames out."""

    __slots__ = (
        "_decoder",
        "_done",
        "_fragments",
        "_in_frame",
        "_inflating",
        "_max_fragments",
        "_max_size",
        "_messages",
        "_parts",
        "_size",
    )

    def __init__(self, config: Config, extensions: list[Extension]) -> None:
        self._decoder = FrameDecoder(client=False, extensions=extensions)
        self._messages = MessageDecoder()
        self._max_size = config.max_message_size
        self._max_fragments = config.max_fragments
        self._parts: list[str | bytes] = []
        self._size = 0  # payload bytes of the message so far
        self._fragments = 0  # frames of the message so far
        self._in_frame = False  # a data frame's payload is still arriving
        self._done = False  # a close frame or a failure ended the input
        # With permessage-deflate a frame's declared length says nothing about
        # its inflated size; the extension bounds inflation instead.
        self._inflating = any(extension.enabled() for extension in extensions)

    @property
    def buffered(self) -> int:
        """Bytes held for the message being assembled (for memory checks)."""
        return self._size + len(self._decoder.buffer)

    def feed(self, data: bytes) -> list[Inbound]:
        """Parse what ``data`` completes. After a close frame or a failure,
        input is ignored (RFC 6455 §5.5.1: nothing follows a close)."""
        if self._done:
            return []
        decoder = self._decoder
        decoder.receive_bytes(data)
        out: list[Inbound] = []
        while True:
            try:
                frame = decoder.process_buffer()
            except ParseFailed as error:
                out.append(self._fail(int(error.code), f"{error}"))
                return out
            if frame is None:
                failure = self._check_declared_length()
                if failure is not None:
                    out.append(failure)
                return out
            item = self._frame(frame)
            if item is not None:
                out.append(item)
                if isinstance(item, CloseReceived | InboundFailure):
                    self._done = True
                    return out

    def _frame(self, frame: Frame) -> Inbound | None:
        opcode = frame.opcode
        payload = frame.payload
        assert isinstance(payload, bytes)  # FrameDecoder yields raw bytes
        if opcode is Opcode.PING:
            return PingReceived(payload)
        if opcode is Opcode.PONG:
            return PongReceived(payload)
        if opcode is Opcode.CLOSE:
            return self._close(payload)
        return self._data(frame, len(payload))

    def _data(self, frame: Frame, size: int) -> Inbound | None:
        if not self._in_frame:
            self._fragments += 1
            if self._fragments > self._max_fragments:
                return self._fail(1009, f"message spans more than {self._max_fragments} frames")
        self._in_frame = not frame.frame_finished
        self._size += size
        if self._size > self._max_size:
            return self._fail(1009, f"message over {self._max_size} bytes")
        try:
            decoded = self._messages.process_frame(frame)
        except ParseFailed as error:
            # The decoder's text names a byte position that depends on how the
            # input was chunked; the close reason must not.
            code = int(error.code)
            return self._fail(code, "invalid UTF-8 in text" if code == 1007 else f"{error}")
        chunk = decoded.payload
        assert isinstance(chunk, str | bytes)
        if chunk:
            self._parts.append(chunk)
        if not decoded.message_finished:
            return None
        parts = self._parts
        if decoded.opcode is Opcode.TEXT:
            data: str | bytes = "".join(cast("list[str]", parts))
        else:
            data = b"".join(cast("list[bytes]", parts))
        self._parts = []
        self._size = 0
        self._fragments = 0
        return MessageReceived(data)

    def _check_declared_length(self) -> InboundFailure | None:
        """Fail at the header if the frame cannot fit the message cap."""
        decoder = self._decoder
        header = decoder.header
        if header is None or header.opcode.iscontrol() or self._inflating:
            return None  # deflated frames are bounded while they inflate
        remaining = header.payload_len - decoder.payload_consumed
        if self._size + remaining > self._max_size:
            return self._fail(1009, f"frame declares {header.payload_len} bytes")
        return None

    def _close(self, payload: bytes) -> Inbound:
        # RFC 6455 §5.5.1 and §7.4.
        if not payload:
            return CloseReceived(None, "")
        if len(payload) == 1:
            return self._fail(1002, "close frame with a one-byte payload")
        (code,) = struct.unpack("!H", payload[:2])
        if not is_sendable(code):
            return self._fail(1002, f"close code {code} is not valid on the wire")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(1007, "close reason is not UTF-8")
        return CloseReceived(code, reason)

    def _fail(self, code: int, reason: str) -> InboundFailure:
        self._done = True
        if code not in _CAUSE_FOR_CODE:  # wsproto uses only 1002, 1007 and 1009
            code = int(CloseReason.PROTOCOL_ERROR)
        # A close reason is at most 123 bytes (RFC 6455 §5.5).
        short = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        return InboundFailure(code, _CAUSE_FOR_CODE[code], short)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (RFC 6455 §5.2)."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def encode_close(code: int, reason: str) -> bytes:
    """A close frame; ``code`` was checked sendable by the lifecycle."""
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


class CompressedWriter:
    """Data frames through permessage-deflate (wsproto keeps the context)."""

    __slots__ = ("_protocol",)

    def __init__(self, extensions: list[Extension]) -> None:
        self._protocol = FrameProtocol(client=False, extensions=extensions)

    def message(self, data: str | bytes) -> bytes:
        return bytes(self._protocol.send_data(data, fin=True))
