"""Unmasking client frames (RFC 6455 §5.3), in pure Python.

Every client frame is XORed with a 4-byte key. wsproto unmasks in pure
Python too; this is the same idea, tuned by size: a big integer XOR for short
payloads (pongs, chat messages), four ``bytes.translate`` passes over strided
slices for long ones. A driver can pass a C implementation instead (the
drivers use websockets' ``apply_mask`` when it is installed: the ``speedups``
extra): the core takes it as an argument, like its entropy, so it imports
nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Unmask", "unmask"]

#: ``unmask(payload, key) -> bytes``: XOR ``payload`` with the 4-byte ``key``.
Unmask = Callable[[bytes, bytes], bytes]

# _XOR[k] maps a byte b to b ^ k: one translate table per key byte (64 KiB).
_XOR = [bytes(b ^ k for b in range(256)) for k in range(256)]
_SHORT = 512  # below this, the integer XOR is the faster of the two


def unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key``."""
    size = len(payload)
    if size <= _SHORT:
        if not size:
            return b""
        keys = (key * (size // 4 + 1))[:size]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            size, "little"
        )
    out = bytearray(payload)
    a, b, c, d = (_XOR[k] for k in key)
    out[0::4] = out[0::4].translate(a)
    out[1::4] = out[1::4].translate(b)
    out[2::4] = out[2::4].translate(c)
    out[3::4] = out[3::4].translate(d)
    return bytes(out)
