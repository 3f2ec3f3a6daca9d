"""The aiohttp server of the benchmark.

    python -m tests.bench.peers.aiohttp_server --port 0 --heartbeat 1

Liveness is aiohttp's ``WebSocketResponse(heartbeat=H)``: a ping every H
seconds, and the connection closed if the pong is not back within H/2, so
its detection window is 1.5·H (the benchmark picks H per scenario: the same
interval as the others, or the same window). Messages: the subset of
wslifecycle's relay protocol the benchmark uses (subscribe; publish sends to
each member in turn), anything else is echoed. The access log is off (as the
other servers log nothing per connection). The lag probe of
:mod:`tests.bench.peers.lagprobe` runs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

from aiohttp import WSMsgType, web

from tests.bench.peers.lagprobe import asyncio_probe

_encode = json.JSONEncoder(separators=(",", ":")).encode
channels: dict[str, set[web.WebSocketResponse]] = {}
HEARTBEAT = web.AppKey("heartbeat", float)
MAX_MSG_SIZE = web.AppKey("max_msg_size", int)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        heartbeat=request.app[HEARTBEAT], max_msg_size=request.app[MAX_MSG_SIZE]
    )
    await ws.prepare(request)
    joined: set[str] = set()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
                continue
            if msg.type != WSMsgType.TEXT:
                continue
            text: str = msg.data
            request_body = None
            if text.startswith("{"):
                try:
                    request_body = json.loads(text)
                except ValueError:
                    request_body = None
            if isinstance(request_body, dict) and isinstance(request_body.get("channel"), str):
                channel: str = request_body["channel"]
                if request_body.get("type") == "subscribe":
                    channels.setdefault(channel, set()).add(ws)
                    joined.add(channel)
                    await ws.send_str(_encode({"type": "subscribed", "channel": channel}))
                    continue
                if request_body.get("type") == "publish":
                    members = list(channels.get(channel, ()))
                    message = _encode(
                        {"type": "message", "channel": channel, "data": request_body.get("data")}
                    )
                    for member in members:
                        if not member.closed:
                            with contextlib.suppress(ConnectionError):
                                await member.send_str(message)
                    reply = {"type": "published", "channel": channel, "receivers": len(members)}
                    await ws.send_str(_encode(reply))
                    continue
            await ws.send_str(text)
    finally:
        for channel in joined:
            channels[channel].discard(ws)
    return ws


async def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--port", type=int, default=0)
    options.add_argument("--heartbeat", type=float, default=30.0)
    # 1 MiB unless a scenario raises it (Autobahn's 16 MiB messages).
    options.add_argument("--max-msg-size", type=int, default=1024 * 1024)
    args = options.parse_args()
    app = web.Application()
    app[HEARTBEAT] = args.heartbeat
    app[MAX_MSG_SIZE] = args.max_msg_size
    app.router.add_get("/", websocket)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"aiohttp: serving on ws://127.0.0.1:{port}", flush=True)
    probe = asyncio.get_running_loop().create_task(asyncio_probe())
    try:
        await asyncio.Event().wait()
    finally:
        probe.cancel()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
