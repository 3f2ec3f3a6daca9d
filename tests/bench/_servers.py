"""The servers the benchmark compares, how each is configured, and a running one.

Heartbeat settings are derived from one description (interval I, missed
pongs M): wslifecycle and websockets take both directly (ping_interval=I,
ping_timeout=M·I: the same nominal detection window (M+1)·I). aiohttp
(pong timeout H/2, window 1.5·H) and the ws README pattern (one missed pong,
window 2·I) cannot match interval and window at once: a scenario says which
it matches, ``interval`` (load scenarios: the same ping rate) or ``window``
(detection: the same nominal window).
"""

from __future__ import annotations

import importlib
import json
import pathlib
import queue
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from tests.bench._procs import SERVER_CPUS, Child, cpu_seconds, rss_bytes

__all__ = ["SERVERS", "Heartbeat", "RunningServer", "ServerKind"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE_DIR = pathlib.Path(__file__).resolve().parent / "node"
_LISTENING = re.compile(r"ws://127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Heartbeat:
    interval: float
    max_missed: int = 2
    match: str = "interval"  # or "window"

    @property
    def window(self) -> float:
        """wslifecycle's nominal detection window, (M+1)·I."""
        return (self.max_missed + 1) * self.interval


def _fmt(x: float) -> str:
    return f"{x:g}"


def _wsl(
    driver: str, uvloop: bool = False, compiled: bool = False
) -> Callable[[Heartbeat], tuple[list[str], str]]:
    def build(hb: Heartbeat) -> tuple[list[str], str]:
        argv = [sys.executable, "-m", "tests.bench.peers.wsl_serve"]
        if compiled:  # the same command, importing wslifecycle from the compiled build
            from tests.bench.compiled import build as build_compiled

            argv = ["env", f"PYTHONPATH={build_compiled()}", *argv]
        argv += ["serve", "--driver", driver, "--port", "0", "--allow-no-origin"]
        argv += ["--heartbeat-interval", _fmt(hb.interval)]
        argv += ["--max-missed-pongs", str(hb.max_missed), "--log-level", "warning"]
        if driver == "asyncio":  # named: serve would pick uvloop by itself when installed
            argv += ["--loop", "uvloop" if uvloop else "asyncio"]
        return argv, f"interval {_fmt(hb.interval)} s, max missed {hb.max_missed}"

    return build


def _websockets(hb: Heartbeat) -> tuple[list[str], str]:
    timeout = hb.max_missed * hb.interval
    argv = [sys.executable, "-m", "tests.bench.peers.websockets_server", "--port", "0"]
    argv += ["--ping-interval", _fmt(hb.interval), "--ping-timeout", _fmt(timeout)]
    return argv, f"ping_interval={_fmt(hb.interval)}, ping_timeout={_fmt(timeout)}"


def _aiohttp(hb: Heartbeat) -> tuple[list[str], str]:
    heartbeat = hb.interval if hb.match == "interval" else hb.window / 1.5
    argv = [sys.executable, "-m", "tests.bench.peers.aiohttp_server", "--port", "0"]
    argv += ["--heartbeat", _fmt(heartbeat)]
    return argv, f"heartbeat={_fmt(heartbeat)} (window {_fmt(1.5 * heartbeat)} s)"


def _asyncio_floor(hb: Heartbeat) -> tuple[list[str], str]:
    argv = [sys.executable, "-m", "tests.bench.peers.asyncio_floor", "--port", "0"]
    argv += ["--interval", _fmt(hb.interval)]
    return argv, f"a ping every {_fmt(hb.interval)} s, pongs unread"


def _node_ws(hb: Heartbeat) -> tuple[list[str], str]:
    interval = hb.interval if hb.match == "interval" else hb.window / 2
    argv = [shutil.which("node") or "node", str(NODE_DIR / "ws_server.js"), "--port", "0"]
    argv += ["--interval-ms", str(round(interval * 1000))]
    return argv, f"setInterval {_fmt(interval)} s (window {_fmt(2 * interval)} s)"


@dataclass(frozen=True)
class ServerKind:
    key: str
    label: str
    build: Callable[[Heartbeat], tuple[list[str], str]]
    needs: str  # a Python module, or "node" for the Node.js server
    only: tuple[str, ...] = ()  # the scenarios it takes part in (empty: all)

    def missing(self) -> str | None:
        """Why this server cannot run here, or None."""
        if self.needs == "node":
            if shutil.which("node") is None:
                return "node is not installed"
            if not (NODE_DIR / "node_modules" / "ws").is_dir():
                return "run: npm ci --prefix tests/bench/node"
            return None
        try:
            importlib.import_module(self.needs)
        except ImportError:
            return f"{self.needs} is not installed"
        return None


SERVERS: tuple[ServerKind, ...] = (
    ServerKind("wsl-asyncio", "wslifecycle (asyncio)", _wsl("asyncio"), "wslifecycle"),
    ServerKind("wsl-selector", "wslifecycle (selector)", _wsl("selector"), "wslifecycle"),
    ServerKind("wsl-trio", "wslifecycle (trio)", _wsl("trio"), "trio"),
    ServerKind("wsl-uvloop", "wslifecycle (asyncio + uvloop)", _wsl("asyncio", True), "uvloop"),
    # The asyncio driver on the standard loop, its hot path compiled (setup.py):
    # the heartbeat's scenarios only.
    ServerKind(
        "wsl-compiled",
        "wslifecycle (asyncio, compiled core)",
        _wsl("asyncio", compiled=True),
        "mypyc",
        only=("cpu", "overload"),
    ),
    ServerKind("websockets", "websockets (asyncio)", _websockets, "websockets"),
    ServerKind("aiohttp", "aiohttp", _aiohttp, "aiohttp"),
    ServerKind("node-ws", "Node.js ws", _node_ws, "node"),
    # The plain asyncio loop's floor for a heartbeat (tests/bench/peers/asyncio_floor.py).
    ServerKind("asyncio-floor", "asyncio floor", _asyncio_floor, "asyncio", only=("cpu",)),
)


class ServerStartError(RuntimeError):
    pass


class RunningServer:
    """One server process: its port, CPU, RSS and lag-probe samples."""

    def __init__(self, kind: ServerKind, hb: Heartbeat, workdir: pathlib.Path, tag: str) -> None:
        self.kind = kind
        argv, self.settings = kind.build(hb)
        self.child = Child(
            kind.key,
            argv,
            stderr_path=workdir / f"{kind.key}-{tag}.stderr",
            cwd=ROOT,
            cpus=SERVER_CPUS,
        )
        self._lag: list[tuple[float, list[int]]] = []
        self.port = self._wait_listening(20.0)

    def _wait_listening(self, timeout: float) -> int:
        port = self.child.wait_for_port(_LISTENING, timeout)
        if port is not None:
            return port
        tail = self.child.stderr_tail()
        self.child.kill()
        raise ServerStartError(f"{self.kind.key} did not start: {tail}")

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def _collect(self) -> None:
        while True:
            try:
                when, line = self.child.lines.get_nowait()
            except queue.Empty:
                return
            if line.startswith("LAG "):
                values = [int(v) for v in line[4:].split(",") if v]
                self._lag.append((when, values))

    def lag_samples(self, start: float, end: float) -> list[int]:
        """Probe lateness samples (µs) reported for the interval [start, end]:
        lines are read about a second after their samples were taken."""
        self._collect()
        return [v for when, values in self._lag if start + 0.5 < when <= end + 0.5 for v in values]

    def stop(self) -> None:
        self.child.kill()


def versions(kinds: tuple[ServerKind, ...], generator: str) -> dict[str, str]:
    """Versions of every server library, of Python and of Node.js."""
    found: dict[str, str] = {"Python": sys.version.split()[0]}
    for package in ("wslifecycle", "wsproto", "h11", "trio", "uvloop", "websockets", "aiohttp"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    node = shutil.which("node")
    if node:
        found["Node.js"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        ws_package = NODE_DIR / "node_modules" / "ws" / "package.json"
        if ws_package.is_file():
            found["ws"] = json.loads(ws_package.read_text())["version"]
    found["load generator"] = f"wsgen (C, {generator})"
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "core", "drivers"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        found["wslifecycle"] += f" (commit {head.stdout.strip()}" + (
            ", with uncommitted changes in core/ or drivers/)" if dirty else ")"
        )
    return found
