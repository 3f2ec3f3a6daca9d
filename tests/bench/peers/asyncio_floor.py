"""A measuring stick, not a WebSocket server: the least CPU the plain
asyncio loop can spend to ping every connection once per interval.

    python -m tests.bench.peers.asyncio_floor --port 0 --interval 1

It answers the opening handshake (just enough for the load generator), then
does nothing but what every asyncio heartbeat must do: ONE timer, firing on
wslifecycle's default grid (every interval/20, at most 50 ms), writes an
8-byte ping to the connections whose phase falls in that slot (one
``transport.write`` each), and reads each pong into one shared buffer
(``BufferedProtocol``) without looking at it: no frame parsing, no
bookkeeping, no liveness decision, no handler task. Whatever a real server
spends above this row is its own; what this row spends is the loop's and the
kernel's. The lag probe of :mod:`tests.bench.peers.lagprobe` runs beside it,
as in every benchmarked server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib

from tests.bench.peers.lagprobe import asyncio_probe

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B3A"
PING = b"\x89\x08" + b"floor!!!"
_BUFFER = memoryview(bytearray(65536))


class Floor:
    def __init__(self, interval: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.step = min(interval / 20, 0.05)
        self.slots: list[set[asyncio.Transport]] = [
            set() for _ in range(max(1, round(interval / self.step)))
        ]
        self.joined = 0
        self.current = 0
        self.due = self.loop.time() + self.step
        self.loop.call_at(self.due, self.tick)

    def add(self, transport: asyncio.Transport) -> set[asyncio.Transport]:
        slot = self.slots[self.joined % len(self.slots)]
        self.joined += 1
        slot.add(transport)
        return slot

    def tick(self) -> None:
        self.current = (self.current + 1) % len(self.slots)
        for transport in self.slots[self.current]:
            transport.write(PING)
        self.due += self.step  # on a fixed grid: the ping rate stays nominal
        self.loop.call_at(self.due, self.tick)


class Protocol(asyncio.BufferedProtocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.head = b""
        self.transport: asyncio.Transport | None = None
        self.slot: set[asyncio.Transport] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        if self.slot is not None:
            return  # a pong (or anything else): the floor does not look
        self.head += _BUFFER[:nbytes].tobytes()
        if b"\r\n\r\n" not in self.head:
            return
        key = b""
        for line in self.head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.slot = self.floor.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None and self.transport is not None:
            self.slot.discard(self.transport)


async def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--port", type=int, default=0)
    options.add_argument("--interval", type=float, default=1.0)
    args = options.parse_args()
    loop = asyncio.get_running_loop()
    probe = loop.create_task(asyncio_probe())
    floor = Floor(args.interval)
    server = await loop.create_server(
        lambda: Protocol(floor), "127.0.0.1", args.port, backlog=1024, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"asyncio-floor: serving on ws://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()
    probe.cancel()


if __name__ == "__main__":
    asyncio.run(main())
