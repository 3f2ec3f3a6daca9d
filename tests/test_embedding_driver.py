"""docs/embedding.md's examples are real: this test takes their code blocks
from the document and runs them: the selectors driver on a loopback socket,
against the websockets client, and the bare-core loop on its fake clock."""

from __future__ import annotations

import asyncio
import pathlib
import re
import socket
import threading
from collections.abc import Callable

import pytest
import websockets

from wslifecycle import Config
from wslifecycle.hub import Hub

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "embedding.md"

Serve = Callable[[Hub, socket.socket, Callable[[], bool]], None]


def code_block(heading: str) -> str:
    """The first Python block after ``heading`` in docs/embedding.md."""
    section = DOC.read_text(encoding="utf-8").split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, f"docs/embedding.md lost the code under {heading!r}"
    return code.group(1)


def documented_driver() -> tuple[Callable[[Config], Hub], Serve]:
    namespace: dict[str, object] = {}
    code = code_block("## A complete driver")
    exec(compile(code, "docs/embedding.md", "exec"), namespace)
    new_hub, serve = namespace["new_hub"], namespace["serve_echo"]
    assert callable(new_hub)
    assert callable(serve)
    return new_hub, serve


def test_the_documented_driver_echoes_pings_and_closes() -> None:
    """The documented driver accepts an upgrade, echoes, pings on the
    heartbeat (answered by the client), and closes cleanly with 1000."""
    new_hub, serve = documented_driver()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stopped = threading.Event()
    hub = new_hub(Config(allow_no_origin=True, heartbeat_interval=0.1))
    thread = threading.Thread(target=serve, args=(hub, listener, stopped.is_set))
    thread.start()
    metrics = hub.scheduler.metrics  # counters read across threads: ints, fine
    try:

        async def client() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00\x01")
                assert await ws.recv() == b"\x00\x01"
                big = "x" * 200_000
                await ws.send(big)
                assert await ws.recv() == big
                deadline = asyncio.get_running_loop().time() + 5
                while metrics.pongs_received < 2:  # pinged twice, answered twice
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)  # polling a counter, bounded above
            return ws.close_code

        assert asyncio.run(client()) == 1000
    finally:
        stopped.set()
        thread.join(5)
        listener.close()
    snapshot = metrics.snapshot()
    assert snapshot.pings_sent >= 2
    assert snapshot.pongs_received == snapshot.pings_sent
    assert snapshot.messages_received == 3


def test_the_documented_bare_core_loop_terminates_a_silent_peer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bare-core example runs as written: two pings, then a heartbeat
    timeout within the bound, on a fake clock."""
    exec(compile(code_block("## The bare core"), "docs/embedding.md", "exec"), {})
    assert "heartbeat_timeout" in capsys.readouterr().out


def test_the_documented_handshake_hook_refuses_without_a_token() -> None:
    """The handshake-hook example runs as written (its asserts are the test)."""
    exec(compile(code_block("### The handshake hook"), "docs/embedding.md", "exec"), {})
