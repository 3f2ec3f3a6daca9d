"""Child processes of the benchmark and what /proc says about them.

Every child is started with a parent-death signal (SIGKILL), kept in a
registry and killed by :func:`kill_all` (called from ``finally`` and at
exit), so an interrupted benchmark leaves no server or generator behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pathlib
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

__all__ = [
    "GENERATOR_CPUS",
    "SERVER_CPUS",
    "Child",
    "cpu_seconds",
    "kernel_memory",
    "kill_all",
    "rss_bytes",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1
_children: list[Child] = []

# On a machine with two cores or more the server gets core 0 and the load
# generators core 1: the server always has a whole core, and what the
# generators spend never competes with it.
SERVER_CPUS: frozenset[int] | None = frozenset({0}) if (os.cpu_count() or 1) >= 2 else None
GENERATOR_CPUS: frozenset[int] | None = frozenset({1}) if (os.cpu_count() or 1) >= 2 else None
_libc = ctypes.CDLL(None, use_errno=True)


def _preexec(cpus: frozenset[int] | None) -> Callable[[], None]:
    def run() -> None:  # in the child between fork and exec: nothing that takes a lock
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by every thread the program starts

    return run


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); utime, stime are 14, 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def kernel_memory() -> tuple[int, int]:
    """(slab bytes from /proc/meminfo, TCP buffer bytes from /proc/net/sockstat):
    machine-wide, so the benchmark takes deltas."""
    slab = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                slab = int(line.split()[1]) * 1024
    tcp = 0
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                tcp = int(parts[parts.index("mem") + 1]) * _PAGE
    return slab, tcp


class Child:
    """A child process whose stdout lines are read by a thread (each with the
    monotonic time it arrived) and whose stderr goes to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stderr_path: pathlib.Path,
        cwd: pathlib.Path | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.name = name
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in kill()
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd,
            env=env,
            text=True,
            bufsize=1,
            preexec_fn=_preexec(cpus),
        )
        _children.append(self)
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def write(self, line: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def wait_for_port(self, pattern: re.Pattern[str], timeout: float) -> int | None:
        """The port (``pattern``'s group 1) of the first stdout line that
        matches, within ``timeout``; None if the process exited first or
        the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if not self.alive():
                    return None
                continue
            match = pattern.search(line)
            if match:
                return int(match.group(1))
        return None

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL (nothing here measures shutdown) and reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._reader.join(timeout=2)  # it stops at EOF on stdout
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()  # else a ResourceWarning when it is collected
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._stderr.close()
        if self in _children:
            _children.remove(self)


def kill_all() -> None:
    while _children:
        _children.pop().kill()


atexit.register(kill_all)
