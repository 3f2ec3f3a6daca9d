"""The servers the client drivers meet, each a process of its own (so a test
can SIGSTOP it, kill it, and start another on the same port):

* ``wslifecycle serve`` (the CLI: relay, TLS, Redis);
* the `websockets` server and the Node.js `ws` server of the benchmark
  (``tests/bench/peers/websockets_server.py``, ``tests/bench/node/ws_server.js``;
  the latter loads `ws` from the test peers' ``node_modules``);
* ``tests/client/refusing_server.py`` (1008 after the upgrade, or 503 with
  Retry-After) and ``refusing_server.js`` (Node ws: 1008).

Children are ``tests.bench._procs.Child``: killed with the test process,
stderr kept in a file and shown when a start fails.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import shutil
import signal
import sys
import tempfile
from typing import Self

import pytest

from tests.bench._procs import Child

__all__ = [
    "NODE_MODULES",
    "ServerProcess",
    "node_refusing_server",
    "node_server",
    "refusing_server",
    "websockets_server",
    "wsl_serve",
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_SERVER = ROOT / "tests" / "bench" / "node" / "ws_server.js"
#: The `ws` package .ci/setup installs for the test peers.
NODE_MODULES = ROOT / "tests" / "peers" / "node" / "node_modules"
_SERVING = re.compile(r"wss?://127\.0\.0\.1:(\d+)")
#: Most a server takes to print its serving line (a loaded 2-core machine).
START_TIMEOUT = 20.0


class ServerProcess:
    """One server process and the port it serves on."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self._dir = tempfile.TemporaryDirectory(prefix=f"wsl-client-{name}-")
        self.port = 0
        self.child = self._spawn(argv)

    def _spawn(self, argv: list[str]) -> Child:
        stderr = pathlib.Path(self._dir.name) / f"{len(os.listdir(self._dir.name))}.stderr"
        child = Child(self.name, argv, stderr_path=stderr, cwd=ROOT, env=self.env)
        port = child.wait_for_port(_SERVING, START_TIMEOUT)
        if port is None:
            tail = child.stderr_tail()
            _kill(child)
            raise RuntimeError(f"{self.name} did not start: {tail}")
        self.port = port
        return child

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        return self.child.pid

    def pause(self) -> None:
        """SIGSTOP: the kernel keeps its sockets (and accepts new ones into
        the backlog), nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap (a stopped process dies too): a crash."""
        _kill(self.child)

    def restart(self) -> Self:
        """Kill, then start the same server again on the same port."""
        self.kill()
        argv = list(self.argv)
        argv[argv.index("--port") + 1] = str(self.port)
        self.child = self._spawn(argv)
        return self

    def attempts(self) -> list[float]:
        """The ``attempt <time>`` lines printed so far (refusing_server)."""
        found: list[float] = []
        while True:
            try:
                _, line = self.child.lines.get_nowait()
            except queue.Empty:
                return found
            if line.startswith("attempt "):
                found.append(float(line.split()[1]))

    def close(self) -> None:
        _kill(self.child)
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill(child: Child) -> None:
    """Child.kill, and the stdout pipe its reader thread read to the end closed."""
    child.kill()
    if child.proc.stdout is not None:
        child.proc.stdout.close()


def wsl_serve(*flags: str, name: str = "wsl-serve") -> ServerProcess:
    """``wslifecycle serve`` on a free port (flags as on its command line)."""
    argv = [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0"]
    return ServerProcess(name, [*argv, "--log-level", "warning", *flags])


def websockets_server(*flags: str) -> ServerProcess:
    argv = [sys.executable, "-m", "tests.bench.peers.websockets_server", "--port", "0", *flags]
    return ServerProcess("websockets", argv)


def node_server(*flags: str) -> ServerProcess:
    """The Node.js `ws` server; skips the test where Node or `ws` is missing."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ws").is_dir():
        pytest.skip("node and tests/peers/node/node_modules/ws are needed (bash .ci/setup)")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    return ServerProcess("node-ws", [node, str(NODE_SERVER), "--port", "0", *flags], env)


def node_refusing_server() -> ServerProcess:
    """tests/client/refusing_server.js: Node ws, 1008 after the upgrade."""
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "ws").is_dir():
        pytest.skip("node and tests/peers/node/node_modules/ws are needed (bash .ci/setup)")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    script = ROOT / "tests" / "client" / "refusing_server.js"
    return ServerProcess("refusing-node", [node, str(script), "--port", "0"], env)


def refusing_server(mode: str, *flags: str) -> ServerProcess:
    argv = [sys.executable, "-m", "tests.client.refusing_server", "--port", "0", "--mode", mode]
    return ServerProcess(f"refusing-{mode}", [*argv, *flags])
