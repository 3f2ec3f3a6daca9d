"""permessage-deflate (RFC 7692) with inflation bounded by the message cap.

wsproto's ``PerMessageDeflate`` inflates each frame in full, so a few KiB
of deflated zeros can become gigabytes in memory (a decompression bomb). This
subclass never asks zlib for more than the bytes the current message may
still grow by, plus one to notice the overflow, and fails the connection
with 1009 (message too big) when a message would pass the cap.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol

__all__ = ["BoundedPerMessageDeflate"]

# RFC 7692 §7.2.2: the sender strips this tail; the receiver appends it back.
_TAIL = b"\x00\x00\xff\xff"


class BoundedPerMessageDeflate(PerMessageDeflate):
    """PerMessageDeflate whose inflated output per message is capped."""

    def __init__(self, max_message_size: int) -> None:
        super().__init__()
        self.max_message_size = max_message_size
        self._inflated = 0

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin:
            return None
        if not self._inbound_is_compressible or not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        result = self._inflate(_TAIL)
        self._inflated = 0
        self._inbound_compressed = None
        if self.client_no_context_takeover:
            self._decompressor = None  # a server inflates what the client compressed
        return result

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        decompressor = self._decompressor
        assert decompressor is not None  # set by frame_inbound_header
        room = self.max_message_size - self._inflated
        try:
            output = decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(output)
        if self._inflated > self.max_message_size or decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return output
