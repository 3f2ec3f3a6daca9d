"""docs/production.md's hook examples are real: their code blocks are taken
from the document and served on the asyncio driver to the websockets client."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from wslifecycle import Config
from wslifecycle.drivers.asyncio import serve

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "production.md"
CONFIG = Config(allow_no_origin=True, heartbeat_interval=5.0)


def example(heading: str) -> dict[str, Any]:
    """The first Python block after ``heading``, executed; its namespace."""
    section = DOC.read_text(encoding="utf-8").split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, f"docs/production.md lost the code under {heading!r}"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "docs/production.md", "exec"), namespace)
    return namespace


async def refused_status(url: str, **options: Any) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, **options):
            pass
    response = refused.value.response
    return response.status_code, bytes(response.body or b"")


def test_the_token_check() -> None:
    ns = example("### A token check")

    async def main() -> None:
        async with serve(
            ns["greet"], "127.0.0.1", 0, process_request=ns["check_token"], config=CONFIG
        ) as server:
            base = f"ws://127.0.0.1:{server.port}"
            assert await refused_status(f"{base}/private") == (
                401,
                b"a bearer token is required\n",
            )
            wrong: dict[str, Any] = {"additional_headers": {"Authorization": "Bearer nope"}}
            assert (await refused_status(f"{base}/private/x", **wrong))[0] == 401
            good: dict[str, Any] = {"additional_headers": {"Authorization": "Bearer s3cret"}}
            async with websockets.connect(f"{base}/private", **good) as ws:
                assert await asyncio.wait_for(ws.recv(), 10) == "hello ann"
                await ws.send("echo me")
                assert await asyncio.wait_for(ws.recv(), 10) == "echo me"
            async with websockets.connect(f"{base}/lobby") as ws:
                assert await asyncio.wait_for(ws.recv(), 10) == "hello guest"

    asyncio.run(main())


def test_the_path_router() -> None:
    ns = example("### A path router")

    async def main() -> None:
        async with serve(
            ns["dispatch"], "127.0.0.1", 0, process_request=ns["route"], config=CONFIG
        ) as server:
            base = f"ws://127.0.0.1:{server.port}"
            assert await refused_status(f"{base}/nope") == (
                404,
                b"no WebSocket endpoint at /nope\n",
            )
            async with websockets.connect(f"{base}/chat") as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), 10) == "chat: hi"
            async with websockets.connect(f"{base}/feed") as ws:

                async def subscribed() -> None:
                    while not server.hub.members("feed"):
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(subscribed(), 10)
                assert server.publish("feed", {"n": 1}) == 1
                relayed = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert (relayed["channel"], relayed["data"]) == ("feed", {"n": 1})

    asyncio.run(main())
