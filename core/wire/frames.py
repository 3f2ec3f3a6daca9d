"""WebSocket frames in and out, with every limit enforced.

Inbound, frames are parsed in one of two ways, and messages are assembled
from them in one place:

* the fast path: whole frames that need no decision of wsproto's (control
  frames, text, binary and continuation frames with a 7- or 16-bit length,
  nothing reserved, no extension) are parsed here directly, a few
  microseconds a frame instead of wsproto's twenty;
* wsproto's ``FrameDecoder`` takes everything else: a frame split across
  reads (its payload streamed as it arrives), 64-bit lengths, reserved bits
  or opcodes, permessage-deflate (it inflates). Once it has finished a frame,
  the bytes after it go back to the fast path.

Either way every data frame is judged at its header, before any payload, by
one method (``_data_header``) and its payload assembled by one other
(``_payload``), so the verdict does not depend on the path or on how the
input was chunked; the property tests feed the same bytes whole (fast path)
and byte by byte (wsproto) and require the same result. The rules:

* fragment order (RFC 6455 §5.4): a continuation with no message open, or a
  new text or binary frame while one is, is a protocol error (1002); control
  frames may come between fragments;
* the message cap, counted across fragments in payload bytes (after
  inflation) and checked against a frame's *declared* length as soon as its
  header arrives, so a header claiming 2^62 bytes fails before any payload
  (1009);
* the fragment cap, every frame of a message counted, empty ones too (1009);
* text is decoded incrementally, so invalid UTF-8 fails as soon as its bad
  byte arrives, and a sequence cut at a fragment's end only when the message
  ends without completing it (§8.1, 1007);
* close-frame rules (§5.5.1, §7.4): a one-byte payload or a code outside
  1000-1003, 1007-1014, 3000-4999 is a protocol error (1002), a reason that
  is not UTF-8 is 1007;
* a failure is an :class:`InboundFailure` value, never an exception.

Outbound frames from a server are unmasked (§5.1); :func:`encode_frame`
writes them directly (a header and the payload) because that is the hot
path of every ping and message. With permessage-deflate negotiated, data
frames go through wsproto's ``FrameProtocol`` instead. A client's frames are
masked (:func:`encode_masked_frame`), the key an argument like all entropy.
"""

from __future__ import annotations

import codecs
import dataclasses
import struct
from typing import cast

from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
    XorMaskerSimple,
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


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class _Refused(Exception):
    """A data frame's header broke a message rule: the reader's verdict."""

    def __init__(self, failure: InboundFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class _Unmasker:
    """wsproto's masker, on the reader's ``unmask`` (websockets' C XOR when
    installed, not wsproto's pure-Python one): a frame split over many reads
    (a 16 MiB message) is unmasked piece by piece, the key turned by each
    piece's length."""

    __slots__ = ("_key", "_unmask")

    def __init__(self, key: bytes | bytearray, unmask: Unmask) -> None:
        self._key = bytes(key)
        self._unmask = unmask

    def process(self, data: bytearray) -> bytes:
        key = self._key
        turn = len(data) % 4
        self._key = key[turn:] + key[:turn]
        return self._unmask(bytes(data), key)


class _Decoder(FrameDecoder):
    """wsproto's frame decoder, handing every data frame's header to the
    reader, which judges it as the fast path does (fragment order, caps)."""

    def __init__(self, extensions: list[Extension], reader: FrameReader, *, client: bool) -> None:
        super().__init__(client=client, extensions=extensions)
        self._reader = reader

    def parse_header(self) -> bool:
        if not super().parse_header():
            return False
        header = self.header
        assert header is not None
        masker = self.masker
        if isinstance(masker, XorMaskerSimple):  # the reader's unmask, C when installed
            # The same interface as wsproto's masker (process), another XOR.
            self.masker = cast(
                XorMaskerSimple, _Unmasker(masker._masking_key, self._reader._unmask)
            )
        if not header.opcode.iscontrol():
            failure = self._reader._data_header(header.opcode, header.payload_len)
            if failure is not None:
                raise _Refused(failure)
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
        "_inflating",
        "_key_size",
        "_max_fragments",
        "_max_size",
        "_opcode",
        "_parts",
        "_size",
        "_text",
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
        # wsproto's decoder exists only while a frame needs it (see
        # _through_wsproto): an idle connection, or one whose frames all take
        # the fast path, holds none.
        self._extensions = extensions
        self._decoder: _Decoder | None = None
        self._max_size = config.max_message_size
        self._max_fragments = config.max_fragments
        # The message being assembled: its opcode (0: none open), its parts,
        # payload bytes and frames so far, and its UTF-8 decoder (text, made
        # when the message does not come whole in one piece).
        self._opcode = 0
        self._parts: list[str | bytes] = []
        self._size = 0
        self._fragments = 0
        self._text: codecs.IncrementalDecoder | None = None
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
        out: list[Inbound] = []
        while data and not self._done:
            if self._fast and self._decoder is None:
                data = self._whole_frames(data, out)
                if not data or self._done:
                    break
            data = self._through_wsproto(data, out)
        return out

    def lone_pong(self, data: bytes) -> bytes | None:
        """The unmasked payload when ``data`` is exactly one whole pong frame
        from a client and wsproto holds no half-read frame: the commonest
        read of all, taken without building a frame object (the same rules
        as :meth:`feed`'s; a control frame may come between fragments).
        None: :meth:`feed` it."""
        size = len(data) - 6
        if (
            0 <= size <= 125
            and data[0] == 0x8A  # FIN, no reserved bits, pong
            and data[1] == 0x80 | size  # masked, as a client's frames are
            and self._key_size  # a server's reader
            and self._fast
            and self._decoder is None
            and not self._done
        ):
            return self._unmask(data[6:], data[2:6])
        return None

    def _through_wsproto(self, data: bytes, out: list[Inbound]) -> bytes:
        """Give ``data`` to wsproto's decoder (made when first needed).
        Returns the bytes after the frame it finished, for the fast path
        (nothing while it waits for more, or without a fast path)."""
        decoder = self._decoder
        if decoder is None:
            self._decoder = decoder = _Decoder(self._extensions, self, client=self.client)
        decoder.receive_bytes(data)
        while True:
            try:
                frame = decoder.process_buffer()
            except _Refused as refused:
                out.append(refused.failure)
                return b""
            except ParseFailed as error:
                out.append(self._parse_failed(error))
                return b""
            if frame is None:
                return b""
            item = self._frame(frame)
            if item is not None:
                out.append(item)
                if isinstance(item, InboundClose | InboundFailure):
                    self._done = True
                    return b""
            if self._fast and decoder.header is None:
                # A frame ended here: what follows may be whole frames.
                self._decoder = None
                buffer = decoder.buffer
                return bytes(buffer.consume_at_most(len(buffer)))

    def _whole_frames(self, data: bytes, out: list[Inbound]) -> bytes:
        """Parse the whole, simple frames at the start of ``data`` (see the
        module docstring); return what is left for wsproto."""
        end = len(data)
        pos = 0
        key_size = self._key_size
        mask_bit = 0x80 if key_size else 0
        unmask = self._unmask
        while pos + 2 <= end:
            first, second = data[pos], data[pos + 1]
            if first & 0x70 or second & 0x80 != mask_bit:
                break  # reserved bits or the wrong masking: wsproto's call
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
                if opcode > 0xA or length > 125 or not first & 0x80:
                    break  # reserved, too long or fragmented: a protocol error
            elif opcode > 0x2:
                break  # a reserved data opcode: a protocol error
            stop = start + length
            if stop > end:
                break  # not all here yet
            if key_size:
                payload = unmask(data[start:stop], data[start - 4 : start])
            else:
                payload = data[start:stop]
            pos = stop
            if opcode < 0x8:
                item = self._data_header(opcode, length) or self._payload(payload, first & 0x80)
                if item is None:
                    continue  # a fragment, taken into the message
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
        return self._payload(payload, frame.frame_finished and frame.message_finished)

    def _data_header(self, opcode: int, length: int) -> InboundFailure | None:
        """Judge a data frame's header, before any of its payload; count the
        frame in its message (RFC 6455 §5.4; the caps)."""
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                return self._fail(1002, "continuation frame with no message to continue")
        elif self._opcode:
            return self._fail(1002, "new data frame inside a fragmented message")
        if self._fragments >= self._max_fragments:
            return self._fail(1009, f"message spans more than {self._max_fragments} frames")
        if self._size + length > self._max_size and not self._inflating:
            # Inflated frames are bounded while they inflate.
            return self._fail(1009, f"frame declares {length} bytes")
        self._fragments += 1
        if opcode:
            self._opcode = opcode
        return None

    def _payload(self, chunk: bytes, last: object) -> Inbound | None:
        """Take the next payload bytes of the message; ``last``: they end it.
        Returns the message once complete, a failure, or None."""
        size = self._size = self._size + len(chunk)
        if size > self._max_size:
            return self._fail(1009, f"message over {self._max_size} bytes")
        piece: str | bytes = chunk
        if self._opcode == OP_TEXT:
            decoder = self._text
            try:
                if decoder is not None:
                    piece = decoder.decode(chunk, bool(last))
                elif last:
                    piece = chunk.decode("utf-8")  # the whole message in one piece
                else:
                    self._text = decoder = _utf8_decoder()
                    piece = decoder.decode(chunk)
            except UnicodeDecodeError:
                return self._fail(1007, self._invalid_text())
        parts = self._parts
        if not last:
            if piece:
                parts.append(piece)
            return None
        if parts:
            parts.append(piece)
            if self._opcode == OP_TEXT:
                piece = "".join(cast("list[str]", parts))
            else:
                piece = b"".join(cast("list[bytes]", parts))
            self._parts = []
        self._opcode = self._size = self._fragments = 0
        self._text = None
        return InboundMessage(piece)

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

    def _invalid_text(self) -> str:
        # wsproto's and the codec's texts name a byte position, or say whether
        # inflating or decoding failed first; both depend on how the input
        # was chunked, and the close reason must not.
        return "invalid compressed text" if self._inflating else "invalid UTF-8 in text"

    def _parse_failed(self, error: ParseFailed) -> InboundFailure:
        code = int(error.code)
        if code not in _CAUSE_FOR_CODE:  # wsproto uses only 1002, 1007 and 1009
            code = int(CloseReason.PROTOCOL_ERROR)  # an extension may report others
        return self._fail(code, self._invalid_text() if code == 1007 else f"{error}")

    def _fail(self, code: int, reason: str) -> InboundFailure:
        """End the input with a failure; ``code`` is one of _CAUSE_FOR_CODE's."""
        self._done = True
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
