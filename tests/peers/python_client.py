"""An independent peer for the driver tests: the `websockets` client, in its
own process so a test can pause it with SIGSTOP (a frozen laptop).

    python python_client.py URL CHANNEL

Connects (client-side keepalive off: the server's pings are answered by the
library itself), subscribes, publishes once, then prints every event as one
JSON line until the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import sys

import websockets


def say(**record: object) -> None:
    print(json.dumps(record), flush=True)


async def main(url: str, channel: str) -> None:
    async with websockets.connect(url, ping_interval=None, open_timeout=10) as ws:
        say(event="open", port=ws.local_address[1])
        await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        await ws.send(json.dumps({"type": "publish", "channel": channel, "data": "py"}))
        try:
            async for message in ws:
                say(event="message", data=message if isinstance(message, str) else message.hex())
        except websockets.ConnectionClosed:
            pass
        say(event="close", code=ws.close_code, reason=ws.close_reason)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
