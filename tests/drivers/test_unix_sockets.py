"""Unix domain sockets on every driver (``serve(handler, unix_path=...)``):
the websockets client echoes over one; the socket file is removed when the
server stops; a stale file of an earlier run is replaced, but never a file
that is not a socket, nor a live server's socket."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import tempfile
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import unix_connect

from tests.drivers.harness import SERVERS, LogWatch
from tests.drivers.serve_once import serve_once
from wslifecycle import Config

DRIVERS = sorted(SERVERS)


def config() -> Config:
    return Config(allow_no_origin=True, heartbeat_interval=30.0)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: a unix socket's path is at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="wsl-") as path:
        yield path


def is_socket(path: str) -> bool:
    return os.path.exists(path) and stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("driver", DRIVERS)
def test_echo_over_a_unix_socket_and_the_file_is_removed(driver: str, short_dir: str) -> None:
    """The websockets client echoes over the unix socket; a clean close is a
    peer close; once the server stops, its socket file is gone."""
    path = os.path.join(short_dir, "ws.sock")
    with LogWatch() as logs:
        with SERVERS[driver](config(), mode="echo", unix_path=path) as server:
            assert is_socket(path)

            async def client() -> None:
                async with unix_connect(path, "ws://localhost/chat") as ws:
                    for i in range(10):
                        await ws.send(f"message {i}")
                        assert await ws.recv() == f"message {i}"

            asyncio.run(client())
            logs.wait_for("to=closed cause=peer_close", 5)
            assert server.metrics().handshakes_accepted == 1
        assert not os.path.exists(path)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_stale_socket_file_is_replaced(driver: str, short_dir: str) -> None:
    """A socket file nobody listens on (an earlier run that crashed) is
    removed and bound again."""
    path = os.path.join(short_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX) as earlier:
        earlier.bind(path)
    assert is_socket(path)
    serve_once(driver, unix_path=path)
    assert not os.path.exists(path)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_file_that_is_not_a_socket_is_never_replaced(driver: str, short_dir: str) -> None:
    """A regular file at the path is left alone: the error names the call,
    the path and the reason."""
    path = os.path.join(short_dir, "data.txt")
    with open(path, "w") as file:
        file.write("precious")
    with pytest.raises(FileExistsError) as raised:
        serve_once(driver, unix_path=path)
    assert str(raised.value) == (
        f"serve(): cannot listen on unix socket {path} (it is not a socket): [Errno 17] File exists"
    )
    assert raised.value.errno == errno.EEXIST
    with open(path) as file:
        assert file.read() == "precious"


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_live_servers_socket_is_never_taken_over(driver: str, short_dir: str) -> None:
    """While another server listens on the path, a second serve() fails with
    EADDRINUSE; the first keeps its socket file."""
    path = os.path.join(short_dir, "live.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        with pytest.raises(OSError, match="another server listens there") as raised:
            serve_once(driver, unix_path=path)
        assert raised.value.errno == errno.EADDRINUSE
        assert is_socket(path)
