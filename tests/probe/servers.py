"""The servers the probe is tried against, each a real process on a free
loopback port: ``wslifecycle serve``, the ``websockets`` server and the
Node ``ws`` seed pattern (tests/bench/), and the probe's own command line."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from tests.bench._procs import Child

ROOT = pathlib.Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"wss?://127\.0\.0\.1:(\d+)")
#: Where ``require("ws")`` finds ws for tests/bench/node/ws_server.js: its own
#: node_modules (``npm ci --prefix tests/bench/node``) or, as .ci/setup
#: installs it, the driver tests' peers'.
_NODE_MODULES = (ROOT / "tests/bench/node/node_modules", ROOT / "tests/peers/node/node_modules")


def wsl_serve(*flags: str) -> list[str]:
    return [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0", *flags]


def websockets_server(ping_interval: float, ping_timeout: float) -> list[str]:
    return [
        sys.executable, "-m", "tests.bench.peers.websockets_server", "--port", "0",
        "--ping-interval", str(ping_interval), "--ping-timeout", str(ping_timeout),
    ]  # fmt: skip


def node_ws_missing() -> str | None:
    """Why the Node ws server cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (bash .ci/setup installs it)"
    if not any((path / "ws").is_dir() for path in _NODE_MODULES):
        return "the ws package is not installed (bash .ci/setup installs it)"
    return None


def node_ws_server(interval_ms: int) -> tuple[list[str], dict[str, str]]:
    script = ROOT / "tests/bench/node/ws_server.js"
    argv = [shutil.which("node") or "node", str(script), "--port", "0"]
    modules = os.pathsep.join(str(path) for path in _NODE_MODULES if path.is_dir())
    return [*argv, "--interval-ms", str(interval_ms)], {**os.environ, "NODE_PATH": modules}


@contextlib.contextmanager
def running(
    argv: list[str], tmp_path: pathlib.Path, env: dict[str, str] | None = None
) -> Iterator[int]:
    """Start a server; yield its port once it says where it listens; kill it."""
    child = Child("server", argv, stderr_path=tmp_path / "server.stderr", cwd=ROOT, env=env)
    try:
        port = child.wait_for_port(_LISTENING, timeout=20.0)
        assert port is not None, f"the server did not start: {child.stderr_tail()}"
        yield port
    finally:
        child.kill()


def probe(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``wslifecycle probe`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "wslifecycle.drivers", "probe", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def probe_json(*argv: str) -> tuple[int, dict[str, Any]]:
    """The exit status and the one JSON object of ``probe ... --json``."""
    done = probe(*argv, "--json")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)
