"""The handshake hook and what a handler reads, on every driver, over real sockets.

The hook's rules are the wire's and are tested on a fake clock
(tests/wire/test_handshake_hook.py); here each driver runs real hooks (sync,
and async on asyncio and Trio), real clients reach them, and a hook that
sleeps past the handshake timeout is cut there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import websockets
from websockets.exceptions import InvalidStatus

from tests.drivers.harness import SERVERS, LogWatch, ServerThread
from tests.wire.helpers import upgrade_request
from wslifecycle import Config
from wslifecycle import ConnectionClosed as Closed
from wslifecycle.handshake import Accept, HandshakeRequest, Reject

TOKEN = "Bearer s3cret"
#: (driver, hook flavour): the selector runs sync hooks on its handler threads.
CASES = [("asyncio", "sync"), ("asyncio", "async"), ("trio", "sync"), ("trio", "async")]
CASES.append(("selector", "sync"))


def token_hook(request: HandshakeRequest) -> Accept | Reject | None:
    """/private needs the token; a client offering chat.v2 gets it."""
    if request.path == "/private" and request.headers.get("Authorization") != TOKEN:
        return Reject(401, "a bearer token is required\n", {"WWW-Authenticate": "Bearer"})
    if "chat.v2" in request.subprotocols:
        return Accept("chat.v2", [("X-Served-By", "hook")], context={"user": "ann"})
    return None


def flavoured(driver: str, flavour: str, hook: Callable[[HandshakeRequest], Any]) -> Any:
    """The hook as given, or wrapped in a coroutine of the driver's library."""
    if flavour == "sync":
        return hook

    async def asyncio_hook(request: HandshakeRequest) -> Any:
        await asyncio.sleep(0.01)
        return hook(request)

    async def trio_hook(request: HandshakeRequest) -> Any:
        await trio.sleep(0.01)
        return hook(request)

    return asyncio_hook if driver == "asyncio" else trio_hook


def describe(conn: Any) -> str:
    request = conn.request
    remote = conn.remote_address
    return json.dumps(
        {
            "path": request.path,
            "params": request.params,
            "subprotocol": conn.subprotocol,
            "context": conn.context,
            "remote": list(remote) if isinstance(remote, tuple) else remote,
        }
    )


def describing_handler(driver: str) -> Callable[..., Any]:
    """Answers every message with what the handler can read of its connection."""

    async def coroutine(conn: Any) -> None:
        async for _ in conn:
            conn.send(describe(conn))

    def threaded(conn: Any) -> None:
        for _ in conn:
            conn.send(describe(conn))

    return threaded if driver == "selector" else coroutine


def server(driver: str, handler: Any, hook: Any = None, **changes: object) -> ServerThread:
    values: dict[str, object] = {"heartbeat_interval": 5.0, "allow_no_origin": True}
    values.update(changes)
    options = {} if hook is None else {"process_request": hook}
    thread = SERVERS[driver](Config(**values), mode="echo", **options)  # type: ignore[arg-type]
    thread.custom_handler = handler  # type: ignore[attr-defined]
    return thread


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``request``, read until the server closes; (all bytes, seconds taken)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(request)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received, time.monotonic() - started


@pytest.mark.parametrize(("driver", "flavour"), CASES)
def test_a_hook_refuses_private_without_a_token_and_picks_the_subprotocol(
    driver: str, flavour: str
) -> None:
    """401 with the hook's body and headers, never an upgrade; with the token,
    chat.v2 is chosen from chat.v1, chat.v2 and the handler reads the request,
    the hook's context and the client's address."""
    hook = flavoured(driver, flavour, token_hook)
    with server(driver, describing_handler(driver), hook) as srv:
        reply, _ = raw_exchange(srv.port, upgrade_request("/private"))
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert b"\r\nWWW-Authenticate: Bearer" in head
        assert body == b"a bearer token is required\n"
        assert b"101" not in head

        async def client() -> tuple[str | None, str, Any, int]:
            async with websockets.connect(
                f"ws://127.0.0.1:{srv.port}/private?room=7",
                subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
                additional_headers={"Authorization": TOKEN},
            ) as ws:
                assert ws.response is not None
                served_by = ws.response.headers["X-Served-By"]
                await ws.send("who am I?")
                info = json.loads(await asyncio.wait_for(ws.recv(), 10))
                return ws.subprotocol, served_by, info, ws.local_address[1]

        subprotocol, served_by, info, local_port = asyncio.run(client())
        assert (subprotocol, served_by) == ("chat.v2", "hook")
        assert info == {
            "path": "/private",
            "params": {"room": ["7"]},
            "subprotocol": "chat.v2",
            "context": {"user": "ann"},
            "remote": ["127.0.0.1", local_port],
        }
        metrics = srv.metrics()
        assert metrics.handshakes_rejected == {401: 1}
        assert metrics.handshakes_accepted == 1


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a hook blocked


@pytest.mark.parametrize(("driver", "flavour"), [*CASES[1::2], ("selector", "sync")])
def test_a_hook_slower_than_the_handshake_timeout_is_cut_there(
    driver: str, flavour: str, release: threading.Event
) -> None:
    """The handshake timeout runs while the hook thinks: at 0.5 s the
    connection is dropped (cause handshake_timeout); an async hook is
    cancelled, a sync one's late answer is dropped."""
    cancelled = threading.Event()

    async def asyncio_sleeper(request: HandshakeRequest) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.set()

    async def trio_sleeper(request: HandshakeRequest) -> None:
        try:
            await trio.sleep(30)
        finally:
            cancelled.set()

    def blocking(request: HandshakeRequest) -> None:
        release.wait(30)

    hook = {"asyncio": asyncio_sleeper, "trio": trio_sleeper, "selector": blocking}[driver]
    with (
        LogWatch() as log,
        server(driver, describing_handler(driver), hook, handshake_timeout=0.5) as srv,
    ):
        reply, elapsed = raw_exchange(srv.port, upgrade_request("/"))
        assert reply == b""  # no answer at all: dropped
        assert 0.45 <= elapsed < 2.0, elapsed
        log.wait_for(r"terminated connection=\S+ cause=handshake_timeout", 5)
        if driver != "selector":
            assert cancelled.wait(5), "the hook was not cancelled"
        release.set()
        assert srv.metrics().handshakes_accepted == 0


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_a_hook_that_fails_gets_500_and_a_logged_reason(driver: str) -> None:
    """A hook that raises, or accepts a subprotocol nobody offered, is the
    server's fault: 500, the reason in the log, nothing upgraded."""

    def broken(request: HandshakeRequest) -> Accept:
        if request.path == "/raise":
            raise RuntimeError("token service down")
        return Accept(subprotocol="never.offered")

    with LogWatch() as log, server(driver, describing_handler(driver), broken) as srv:
        for path, reason in [
            ("/raise", "handshake hook failed"),
            ("/bad", "'never.offered' was not offered by the client"),
        ]:
            mark = log.mark()
            reply, _ = raw_exchange(srv.port, upgrade_request(path))
            assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            assert reply.endswith(b"internal error in the handshake hook\n")
            log.wait_for(reason, 5, since=mark)
        assert srv.metrics().handshakes_rejected == {500: 2}


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_the_default_policy_names_its_reason(driver: str) -> None:
    """No hook, no Origin, no allow_no_origin: 403 whose body says what to change."""
    with server(driver, describing_handler(driver), allow_no_origin=False) as srv:
        reply, _ = raw_exchange(srv.port, upgrade_request("/"))
        assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert reply.endswith(b"Origin missing: pass --allow-no-origin or allowed_origins\n")


@pytest.mark.parametrize("driver", sorted(SERVERS))
def test_trusted_proxies_name_the_client(driver: str) -> None:
    """From a trusted peer, X-Forwarded-For names the client; the headers of
    an untrusted peer are ignored."""
    for trusted, expected in [(frozenset({"loopback"}), "203.0.113.7"), (frozenset(), "127.0.0.1")]:
        with (
            LogWatch() as log,
            server(driver, describing_handler(driver), trusted_proxies=trusted) as srv,
        ):

            async def client() -> Any:
                async with websockets.connect(
                    f"ws://127.0.0.1:{srv.port}/",
                    additional_headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.1"},
                ) as ws:
                    await ws.send("?")
                    return json.loads(await asyncio.wait_for(ws.recv(), 10))

            assert asyncio.run(client())["remote"][0] == expected
            # The operator's log says who it was, too.
            log.wait_for(rf"accepted connection=\S+ remote={expected}:\d+ path=/ subprotocol=-", 5)


# ------------------------------------------------------- a websockets user's reflexes


@pytest.mark.parametrize("driver", ["asyncio", "trio"])
def test_websockets_reflexes_work(driver: str) -> None:
    """``await conn.send``, ``await conn.recv()``, and after the end
    ``close_code`` / ``close_reason``: as a websockets user writes them, and
    the peer sees its own close echoed, never a 1011."""
    seen: list[tuple[int | None, str | None, int | None]] = []
    done = threading.Event()

    async def reflexes(conn: Any) -> None:
        message = await conn.recv()
        await conn.send(message)
        before = conn.close_code
        with contextlib.suppress(Closed):
            await conn.recv()
        await conn.wait_closed()
        seen.append((conn.close_code, conn.close_reason, before))
        done.set()

    with server(driver, reflexes) as srv:

        async def client() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{srv.port}/") as ws:
                await ws.send("ping?")
                assert await asyncio.wait_for(ws.recv(), 10) == "ping?"
                await ws.close(4001, "bye")
                return ws.close_code

        assert asyncio.run(client()) == 4001
        assert done.wait(10)
        assert seen == [(4001, "bye", None)]


def test_async_with_serve_works_on_asyncio() -> None:
    from wslifecycle.drivers.asyncio import echo_handler, serve

    async def main() -> str:
        config = Config(allow_no_origin=True, heartbeat_interval=5.0)
        async with (
            serve(echo_handler, "127.0.0.1", 0, config=config) as srv,
            websockets.connect(f"ws://127.0.0.1:{srv.port}/") as ws,
        ):
            await ws.send("hello")
            reply = await asyncio.wait_for(ws.recv(), 10)
        assert srv.hub.drained  # leaving the block drained it
        return str(reply)

    assert asyncio.run(main()) == "hello"


def test_async_with_serve_works_on_trio() -> None:
    from wslifecycle.drivers.trio import echo_handler, serve

    def client(port: int) -> str:
        async def talk() -> str:
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("hello")
                return str(await asyncio.wait_for(ws.recv(), 10))

        return asyncio.run(talk())

    async def main() -> str:
        config = Config(allow_no_origin=True, heartbeat_interval=5.0)
        with trio.fail_after(20):
            async with serve(echo_handler, "127.0.0.1", 0, config=config) as srv:
                reply = await trio.to_thread.run_sync(client, srv.port)
            assert srv.hub.drained
        return reply

    assert trio.run(main) == "hello"


def test_a_refused_client_sees_the_status() -> None:
    """websockets' client reports the hook's status (a sanity check of the peer)."""
    with server("asyncio", describing_handler("asyncio"), token_hook) as srv:

        async def client() -> int:
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(f"ws://127.0.0.1:{srv.port}/private"):
                    pass
            return refused.value.response.status_code

        assert asyncio.run(client()) == 401


def test_a_handler_that_cannot_work_is_refused_at_serve() -> None:
    """Habits from other libraries fail at once, saying what to write, never
    as a 1011 for each peer: a plain function on a coroutine driver, a
    coroutine on the selector, the legacy ``handler(websocket, path)``."""
    from wslifecycle.drivers import asyncio as asyncio_driver
    from wslifecycle.drivers import selector as selector_driver
    from wslifecycle.drivers import trio as trio_driver

    def plain(conn: Any) -> None:
        pass

    async def legacy(websocket: Any, path: str) -> None:
        pass

    async def coroutine(conn: Any) -> None:
        pass

    with pytest.raises(
        TypeError, match=r"asyncio driver runs coroutine handlers: write `async def plain"
    ):
        asyncio_driver.serve(plain, "127.0.0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"trio driver runs coroutine handlers"):
        trio_driver.serve(plain, "127.0.0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes one argument, the connection, not 2"):
        asyncio_driver.serve(legacy, "127.0.0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"selector driver runs plain functions"):
        selector_driver.serve(coroutine, "127.0.0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"handler must be callable"):
        selector_driver.serve("echo", "127.0.0.1", 0)  # type: ignore[arg-type]


def test_websockets_server_close_and_wait_closed() -> None:
    """``server.close()`` then ``await server.wait_closed()``: websockets'
    words for a drain, and a lambda or a callable object is a fine handler."""
    from wslifecycle.drivers.asyncio import echo_handler, serve

    class Echo:
        async def __call__(self, conn: Any) -> None:
            await echo_handler(conn)

    async def main() -> tuple[str, str]:
        config = Config(allow_no_origin=True, heartbeat_interval=5.0)
        replies = []
        for handler in (Echo(), lambda conn: echo_handler(conn)):
            srv = await serve(handler, "127.0.0.1", 0, config=config)
            async with websockets.connect(f"ws://127.0.0.1:{srv.port}/") as ws:
                await ws.send("hello")
                replies.append(str(await asyncio.wait_for(ws.recv(), 10)))
            srv.close()
            await asyncio.wait_for(srv.wait_closed(), 10)
            assert srv.hub.drained
        return replies[0], replies[1]

    assert asyncio.run(main()) == ("hello", "hello")
