"""``wslifecycle.drivers.probe.run`` in this process: what the clients send
in the upgrade (--origin, --header, --subprotocol), and that a run leaves
no task, descriptor or thread behind, whether it completes or fails."""

from __future__ import annotations

import asyncio
import pathlib
import threading

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request
from websockets.typing import Subprotocol

from tests.drivers.harness import open_fds
from tests.probe.servers import running, wsl_serve
from wslifecycle.client import parse_url
from wslifecycle.drivers.probe import ProbeError, Settings, run


def test_the_upgrade_carries_origin_headers_and_subprotocols() -> None:
    seen: list[tuple[str | None, str | None, str | None]] = []
    negotiated: list[str | None] = []

    def record(connection: ServerConnection, request: Request) -> None:
        headers = request.headers
        seen.append((headers.get("Origin"), headers.get("X-Token"), headers.get("X-Empty")))

    async def handler(connection: ServerConnection) -> None:
        negotiated.append(connection.subprotocol)
        await connection.wait_closed()

    async def main() -> dict[str, object]:
        async with serve(
            handler, "127.0.0.1", 0, process_request=record, subprotocols=[Subprotocol("chat.v2")]
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            settings = Settings(
                target=parse_url(f"ws://127.0.0.1:{port}/feed?x=1"),
                healthy=3,
                silent=0,
                after=0.0,
                timeout=0.2,
                origin="https://app.example",
                headers=(("X-Token", "t0k"), ("X-Empty", "")),
                subprotocols=("chat.v1", "chat.v2"),
            )
            return await run(settings)

    report = asyncio.run(main())
    assert seen == [("https://app.example", "t0k", "")] * 3
    assert negotiated == ["chat.v2"] * 3
    assert report["closed_by_probe"] == {"clean": 3, "dropped": 0}


def test_a_run_leaves_nothing_behind(tmp_path: pathlib.Path) -> None:
    """After a completed run and after a refused one: no task but the
    caller's, the same descriptors and threads as before."""
    server = wsl_serve("--heartbeat-interval", "0.5", "--allow-origin", "https://app.example")
    with running(server, tmp_path) as port:
        target = parse_url(f"ws://127.0.0.1:{port}/")
        fds, threads = open_fds(), threading.active_count()

        async def main() -> dict[str, object]:
            settings = Settings(
                target=target,
                healthy=4,
                silent=4,
                after=0.2,
                timeout=3.0,
                origin="https://app.example",
                concurrency=3,
            )
            report = await run(settings)
            assert asyncio.all_tasks() == {asyncio.current_task()}
            with pytest.raises(ProbeError, match="HTTP 403"):
                await run(Settings(target=target, healthy=5, silent=0, after=0.0, timeout=1.0))
            assert asyncio.all_tasks() == {asyncio.current_task()}
            return report

        report = asyncio.run(main())
        assert (open_fds(), threading.active_count()) == (fds, threads)
    silent = report["silent"]
    assert isinstance(silent, dict)
    assert silent["terminated"] == 4


def test_a_server_that_closes_behaving_clients_fails_the_bound() -> None:
    """A server that closes every connection (1008) after 0.3 s: each
    healthy client, and each silent one still answering, is a false
    termination, with its code."""

    async def handler(connection: ServerConnection) -> None:
        await asyncio.sleep(0.3)
        await connection.close(1008, "policy")

    async def main() -> dict[str, object]:
        async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            settings = Settings(
                target=parse_url(f"ws://127.0.0.1:{port}/"),
                healthy=2,
                silent=2,
                after=0.6,
                timeout=1.5,
                expect_bound=1.0,
            )
            return await run(settings)

    report = asyncio.run(main())
    assert report["passed"] is False
    assert report["healthy"] == {"clients": 2, "closed": 2, "close_codes": {"1008": 2}}
    silent = report["silent"]
    assert isinstance(silent, dict)
    assert (silent["closed_before_silence"], silent["terminated"]) == (2, 0)
    assert silent["close_codes"] == {"1008": 2}
    failures = report["failures"]
    assert isinstance(failures, list)
    assert len(failures) == 4
    assert "healthy client #0 was closed by the server: 1008" in failures
