"""The core's cost per frame of a many-fragment message, in-process.

    .venv/bin/python -m tests.bench.fragments_bench [--size 4194304] [--fragment 64] [--read 65536]

One message (Autobahn 9.3.1 / 9.4.1 by default: 4 MiB in 64-byte
fragments, 65,536 masked frames), fed to a server's ``FrameReader`` in reads
of ``--read`` bytes, as a socket would hand them over: µs per frame, text
and binary, with the pure-Python unmasking and with websockets' C
``apply_mask`` (what the drivers pass when it is installed). The best of
five runs is printed; no socket, no event loop.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from wslifecycle import Config
from wslifecycle.wire.frames import FrameReader, InboundMessage
from wslifecycle.wire.mask import unmask as pure_unmask

Unmask = Callable[[bytes, bytes], bytes]


def fragments(opcode: int, message: bytes, size: int) -> bytes:
    """``message`` as masked frames of ``size`` payload bytes (size < 65536)."""
    out = bytearray()
    key = os.urandom(4)
    for i, at in enumerate(range(0, len(message), size)):
        chunk = message[at : at + size]
        first = (0x80 if at + size >= len(message) else 0) | (opcode if i == 0 else 0)
        if len(chunk) < 126:
            out += bytes((first, 0x80 | len(chunk)))
        else:
            out += bytes((first, 0x80 | 126)) + len(chunk).to_bytes(2, "big")
        out += key + pure_unmask(chunk, key)
    return bytes(out)


def per_frame(data: bytes, frames: int, read: int, unmask: Unmask, config: Config) -> float:
    best = float("inf")
    reads = [data[i : i + read] for i in range(0, len(data), read)]
    for _ in range(5):
        reader = FrameReader(config, [], unmask)
        started = time.perf_counter()
        out = []
        for chunk in reads:
            out += reader.feed(chunk)
        elapsed = time.perf_counter() - started
        (message,) = out
        assert isinstance(message, InboundMessage), message
        best = min(best, elapsed)
    return best / frames * 1e6


def main() -> None:
    options = argparse.ArgumentParser(prog="python -m tests.bench.fragments_bench")
    options.add_argument("--size", type=int, default=4 * 1024 * 1024)
    options.add_argument("--fragment", type=int, default=64)
    options.add_argument("--read", type=int, default=65536)
    args = options.parse_args()
    config = Config(max_message_size=args.size, max_fragments=args.size // args.fragment + 1)
    unmasks: dict[str, Unmask] = {"pure-Python unmask": pure_unmask}
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        pass
    else:
        unmasks["websockets' C apply_mask"] = apply_mask
    frames = -(-args.size // args.fragment)
    print(
        f"{args.size:,} bytes in {args.fragment}-byte fragments ({frames:,} frames), "
        f"reads of {args.read:,} bytes"
    )
    for opcode, kind in ((0x1, "text"), (0x2, "binary")):
        data = fragments(opcode, b"*" * args.size, args.fragment)
        for name, unmask in unmasks.items():
            us = per_frame(data, frames, args.read, unmask, config)
            print(f"  {kind:6} {name:26} {us:6.2f} µs per frame")


if __name__ == "__main__":
    main()
