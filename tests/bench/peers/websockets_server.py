"""The ``websockets`` (asyncio implementation) server of the benchmark.

    python -m tests.bench.peers.websockets_server --port 0 --ping-interval 1 --ping-timeout 2

Liveness is websockets' own keepalive (one task per connection): a ping
every ``ping_interval`` seconds, the connection failed if its pong is not
back within ``ping_timeout``; ping_interval=I, ping_timeout=2·I is the same
nominal detection window as wslifecycle's interval I with 2 missed pongs.
Messages: the subset of wslifecycle's relay protocol the benchmark uses
(subscribe; publish fans out with ``websockets.broadcast``), anything else
is echoed. The lag probe of :mod:`tests.bench.peers.lagprobe` runs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from websockets.asyncio import messages
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from tests.bench.peers.lagprobe import asyncio_probe

_encode = json.JSONEncoder(separators=(",", ":")).encode
channels: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    joined: set[str] = set()
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("{"):
                try:
                    request = json.loads(message)
                except ValueError:
                    request = None
                if isinstance(request, dict) and isinstance(request.get("channel"), str):
                    channel: str = request["channel"]
                    if request.get("type") == "subscribe":
                        channels.setdefault(channel, set()).add(ws)
                        joined.add(channel)
                        await ws.send(_encode({"type": "subscribed", "channel": channel}))
                        continue
                    if request.get("type") == "publish":
                        members = channels.get(channel, set())
                        text = _encode(
                            {"type": "message", "channel": channel, "data": request.get("data")}
                        )
                        broadcast(members, text)
                        reply = {"type": "published", "channel": channel, "receivers": len(members)}
                        await ws.send(_encode(reply))
                        continue
            await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        for channel in joined:
            channels[channel].discard(ws)


async def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--port", type=int, default=0)
    options.add_argument("--ping-interval", type=float, default=20.0)
    options.add_argument("--ping-timeout", type=float, default=20.0)
    # websockets' own default (1 MiB) unless a scenario raises it (Autobahn's 16 MiB).
    options.add_argument("--max-size", type=int, default=2**20)
    # Frames per message: websockets reads its cap from the environment
    # (WEBSOCKETS_MAX_FRAGMENTS) when it is imported; a flag sets the same value.
    options.add_argument("--max-fragments", type=int, default=messages.MAX_FRAGMENTS)
    args = options.parse_args()
    messages.MAX_FRAGMENTS = args.max_fragments
    probe = asyncio.get_running_loop().create_task(asyncio_probe())
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        max_size=args.max_size,
        backlog=1024,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"websockets: serving on ws://127.0.0.1:{port}", flush=True)
        await server.serve_forever()
    probe.cancel()


if __name__ == "__main__":
    asyncio.run(main())
