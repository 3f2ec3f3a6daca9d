"""A server that turns clients away, for the client drivers' stop and
Retry-After tests (the `websockets` library, in a process of its own).

    python -m tests.client.refusing_server --mode policy --port 0
    python -m tests.client.refusing_server --mode busy --retry-after 1 --port 0

* ``policy``: accept the upgrade, then close at once with 1008 (policy
  violation): a client must not come back;
* ``busy``: answer the first ``--busy`` upgrades with HTTP 503 and
  ``Retry-After``, then accept and echo.

Prints the serving line, then ``attempt <monotonic seconds>`` for every
upgrade request, so a test counts and times the attempts on the server.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


async def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--port", type=int, default=0)
    options.add_argument("--mode", choices=("policy", "busy"), required=True)
    options.add_argument("--busy", type=int, default=1, help="503s before accepting")
    options.add_argument("--retry-after", default="1")
    args = options.parse_args()
    attempts = 0

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal attempts
        attempts += 1
        print(f"attempt {time.monotonic():.6f}", flush=True)
        if args.mode == "busy" and attempts <= args.busy:
            response = connection.respond(503, "busy, come back later\n")
            response.headers["Retry-After"] = args.retry_after
            return response
        return None

    async def handler(ws: ServerConnection) -> None:
        if args.mode == "policy":
            await ws.close(1008, "not welcome")
            return
        async for message in ws:
            await ws.send(message)

    async with serve(handler, "127.0.0.1", args.port, process_request=process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"refusing: serving on ws://127.0.0.1:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
