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

Fast path: when the decoder holds nothing and the input starts with whole
frames that need no decision of wsproto's (control frames, unfragmented text
or binary messages under the cap, no extension, nothing reserved), they are
parsed here directly: a few microseconds instead of wsproto's twenty, for
every pong and every small message. Anything else, and anything that might
be an error, goes to wsproto, so the rules live in one place; the property
tests feed the same bytes whole (fast path) and byte by byte (wsproto) and
require the same result.

Outbound frames from a server are unmasked (§5.1); :func:`encode_frame`
writes them directly (a header and the payload) because that is the hot
path of every ping and message. With permessage-deflate negotiated, data
frames go through wsproto's ``FrameProtocol`` instead. A client's frames are
masked (:func:`encode_masked_frame`), the key an argument like all entropy.
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
from .mask import Unmask
from .mask import unmask as pure_unmask

__all__ = [
    "FrameReader",
    "InboundClose",
    "InboundFailure",
    "InboundMessage",
    "InboundPing",
    "InboundPong",
    "close_payload",
    "encode_close",
    "encode_frame",
    "encode_masked_frame",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_CAUSE_FOR_CODE = {
    1002: TerminationCause.PROTOCOL_ERROR,
    1007: TerminationCause.INVALID_PAYLOAD,
    1009: TerminationCause.MESSAGE_TOO_BIG,
}


# What the reader yields, frame-level (the lifecycle's own inputs, with
# ``now``, are in ``wslifecycle.events``).


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMessage:
    """A complete text (``str``) or binary (``bytes``) message."""

    data: str | bytes


@dataclasses.dataclass(frozen=True, slots=True)
class InboundPing:
    """A ping frame, to be answered with a pong (RFC 6455 §5.5.2)."""

    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class InboundPong:
    """A pong frame (RFC 6455 §5.5.3)."""

    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class InboundClose:
    """A valid close frame; ``code`` is None when it carried none."""

    code: int | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class InboundFailure:
    """The peer broke the protocol or a limit: fail with ``code``."""

    code: int
    cause: TerminationCause
    reason: str


Inbound = InboundMessage | InboundPing | InboundPong | InboundClose | InboundFailure


class _Decoder(FrameDecoder):
    """wsproto's frame decoder, checking fragment order at the header.

    wsproto checks it in its MessageDecoder, after the payload was read and,
    with permessage-deflate, inflated; whether zlib has seen enough bytes to
    fail first then depends on how the input was chunked. Checked here, at the
    header, the verdict is the same whatever the chunking (RFC 6455 §5.4)."""

    def __init__(
        self, extensions: list[Extension], messages: MessageDecoder, *, client: bool
    ) -> None:
        super().__init__(client=client, extensions=extensions)
        self._messages = messages

    def parse_header(self) -> bool:
        if not super().parse_header():
            return False
        header = self.header
        assert header is not None
        opcode = header.opcode
        if not opcode.iscontrol():
            in_message = self._messages.opcode is not None
            if opcode is Opcode.CONTINUATION and not in_message:
                raise ParseFailed("unexpected CONTINUATION")
            if opcode is not Opcode.CONTINUATION and in_message:
                raise ParseFailed(f"expected CONTINUATION, got {opcode!r}")
        return True


class FrameReader:
    """Bytes from the peer in, complete messages and control frames out.

    A server's reader (the default) requires masked frames; a client's
    (``client=True``) requires unmasked ones (RFC 6455 §5.1: either breach
    is a protocol error, 1002)."""

    __slots__ = (
        "_decoder",
        "_done",
        "_extensions",
        "_fast",
        "_fragments",
        "_in_frame",
        "_inflating",
        "_key_size",
        "_max_fragments",
        "_max_size",
        "_messages",
        "_parts",
        "_size",
        "_unmask",
        "client",
    )

    def __init__(
        self,
        config: Config,
        extensions: list[Extension],
        unmask: Unmask | None = None,
        *,
        client: bool = False,
    ) -> None:
        # wsproto's decoders exist only while a frame needs them (see _slow):
        # an idle connection, or one whose frames all take the fast path,
        # holds none.
        self._extensions = extensions
        self._messages: MessageDecoder | None = None
        self._decoder: _Decoder | None = None
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
        self._fast = not self._inflating  # RSV1 frames need the extension
        self._unmask: Unmask = unmask or pure_unmask
        self.client = client
        self._key_size = 0 if client else 4  # a server's frames carry no masking key

    @property
    def buffered(self) -> int:
        """Bytes held for the message being assembled (for memory checks)."""
        decoder = self._decoder
        return self._size + (len(decoder.buffer) if decoder is not None else 0)

    def feed(self, data: bytes) -> list[Inbound]:
        """Parse what ``data`` completes. After a close frame or a failure,
        input is ignored (RFC 6455 §5.5.1: nothing follows a close)."""
        if self._done:
            return []
        out: list[Inbound] = []
        if self._fast and self._idle():
            data = self._whole_frames(data, out)
            if not data:
                return out
        decoder = self._slow()
        decoder.receive_bytes(data)
        while True:
            try:
                frame = decoder.process_buffer()
            except ParseFailed as error:
                out.append(self._parse_failed(error))
                return out
            if frame is None:
                failure = self._check_declared_length()
                if failure is not None:
                    out.append(failure)
                elif self._fast and self._idle():
                    self._decoder = self._messages = None  # back to the fast path
                return out
            item = self._frame(frame)
            if item is not None:
                out.append(item)
                if isinstance(item, InboundClose | InboundFailure):
                    self._done = True
                    return out

    def lone_pong(self, data: bytes) -> bytes | None:
        """The unmasked payload when ``data`` is exactly one whole pong frame
        from a client and no frame or message is half-read: the commonest
        read of all, taken without building a frame object (the same rules
        as :meth:`feed`'s). None: :meth:`feed` it."""
        size = len(data) - 6
        if (
            0 <= size <= 125
            and data[0] == 0x8A  # FIN, no reserved bits, pong
            and data[1] == 0x80 | size  # masked, as a client's frames are
            and self._key_size  # a server's reader
            and self._fast
            and not self._done
            and (self._decoder is None or self._idle())
        ):
            return self._unmask(data[6:], data[2:6])
        return None

    def _idle(self) -> bool:
        """No frame or message half-read: whole frames may take the fast path."""
        decoder = self._decoder
        if decoder is None:
            return True
        messages = self._messages
        assert messages is not None  # made together with the decoder
        return decoder.header is None and not decoder.buffer and messages.opcode is None

    def _slow(self) -> _Decoder:
        """wsproto's decoders, made when a frame first needs them."""
        decoder = self._decoder
        if decoder is None:
            self._messages = messages = MessageDecoder()
            self._decoder = decoder = _Decoder(self._extensions, messages, client=self.client)
        return decoder

    def _whole_frames(self, data: bytes, out: list[Inbound]) -> bytes:
        """Parse the whole, simple frames at the start of ``data`` (see the
        module docstring); return what is left for wsproto."""
        end = len(data)
        pos = 0
        key_size = self._key_size
        mask_bit = 0x80 if key_size else 0
        while pos + 2 <= end:
            first, second = data[pos], data[pos + 1]
            if first & 0x70 or second & 0x80 != mask_bit or not first & 0x80:
                break  # reserved bits, the wrong masking, or a fragment: wsproto's call
            opcode = first & 0x0F
            length = second & 0x7F
            start = pos + 2 + key_size
            if length == 126:
                if pos + 4 > end:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
                if length < 126:
                    break  # a needlessly long encoding is a protocol error
                start = pos + 4 + key_size
            elif length == 127:
                break  # 64-bit lengths are rare: leave them to wsproto
            if opcode >= 0x8:
                if opcode > 0xA or length > 125:
                    break  # reserved control opcode, or too long: a protocol error
            elif not 0x1 <= opcode <= 0x2 or length > self._max_size:
                break
            stop = start + length
            if stop > end:
                break  # not all here yet
            if key_size:
                payload = self._unmask(data[start:stop], data[start - 4 : start])
            else:
                payload = data[start:stop]
            pos = stop
            if opcode == 0x1:
                try:
                    item: Inbound = InboundMessage(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    item = self._fail(1007, "invalid UTF-8 in text")
            elif opcode == 0x2:
                item = InboundMessage(payload)
            elif opcode == 0xA:
                item = InboundPong(payload)
            elif opcode == 0x9:
                item = InboundPing(payload)
            else:
                item = self._close(payload)
            out.append(item)
            if isinstance(item, InboundClose | InboundFailure):
                self._done = True
                return b""
        return data[pos:]

    def _frame(self, frame: Frame) -> Inbound | None:
        opcode = frame.opcode
        payload = frame.payload
        assert isinstance(payload, bytes)  # FrameDecoder yields raw bytes
        if opcode is Opcode.PING:
            return InboundPing(payload)
        if opcode is Opcode.PONG:
            return InboundPong(payload)
        if opcode is Opcode.CLOSE:
            return self._close(payload)
        return self._data(frame, len(payload))

    def _data(self, frame: Frame, size: int) -> Inbound | None:
        if not self._in_frame:
            self._fragments += 1
            if self._fragments > self._max_fragments:
                return self._fail(1009, f"message spans more than {self._max_fragments} frames")
            # A new frame: judge its declared length now, before any of its
            # payload, whether or not some payload came with the header.
            failure = self._check_declared_length(already=size)
            if failure is not None:
                return failure
        self._in_frame = not frame.frame_finished
        self._size += size
        if self._size > self._max_size:
            return self._fail(1009, f"message over {self._max_size} bytes")
        messages = self._messages
        assert messages is not None  # the slow path made it
        try:
            decoded = messages.process_frame(frame)
        except ParseFailed as error:
            return self._parse_failed(error)
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
        return InboundMessage(data)

    def _check_declared_length(self, already: int = 0) -> InboundFailure | None:
        """Fail at the header if the frame cannot fit the message cap.
        ``already``: bytes of this frame handed over but not yet counted."""
        decoder = self._decoder
        assert decoder is not None  # the slow path made it
        header = decoder.header
        if header is None or header.opcode.iscontrol() or self._inflating:
            return None  # deflated frames are bounded while they inflate
        remaining = header.payload_len - decoder.payload_consumed
        if self._size + already + remaining > self._max_size:
            return self._fail(1009, f"frame declares {header.payload_len} bytes")
        return None

    def _close(self, payload: bytes) -> Inbound:
        # RFC 6455 §5.5.1 and §7.4.
        if not payload:
            return InboundClose(None, "")
        if len(payload) == 1:
            return self._fail(1002, "close frame with a one-byte payload")
        (code,) = struct.unpack("!H", payload[:2])
        if not is_sendable(code):
            return self._fail(1002, f"close code {code} is not valid on the wire")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(1007, "close reason is not UTF-8")
        return InboundClose(code, reason)

    def _parse_failed(self, error: ParseFailed) -> InboundFailure:
        code = int(error.code)
        if code != 1007:
            return self._fail(code, f"{error}")
        # wsproto's text names a byte position, or says whether inflating or
        # decoding failed first; both depend on how the input was chunked,
        # and the close reason must not.
        return self._fail(
            1007, "invalid compressed text" if self._inflating else "invalid UTF-8 in text"
        )

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


def encode_masked_frame(opcode: int, payload: bytes, key: bytes, mask: Unmask) -> bytes:
    """One final frame from a client, masked with the 4-byte ``key`` (RFC
    6455 §5.3: every client frame, with a fresh unpredictable key)."""
    length = len(payload)
    first = 0x80 | opcode
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 0xFE, length)
    else:
        header = struct.pack("!BBQ", first, 0xFF, length)
    return header + key + mask(payload, key)


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload; ``code`` was checked sendable by the lifecycle."""
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def encode_close(code: int, reason: str) -> bytes:
    """A close frame; ``code`` was checked sendable by the lifecycle."""
    return encode_frame(OP_CLOSE, close_payload(code, reason))


class CompressedWriter:
    """A server's data frames through permessage-deflate (wsproto keeps the
    context). Clients offer no compression (``wslifecycle.client``), so
    wsproto's own client masking, from ``os.urandom``, never runs."""

    __slots__ = ("_protocol",)

    def __init__(self, extensions: list[Extension]) -> None:
        self._protocol = FrameProtocol(client=False, extensions=extensions)

    def message(self, data: str | bytes) -> bytes:
        return bytes(self._protocol.send_data(data, fin=True))
