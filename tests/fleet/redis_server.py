"""A real ``redis-server`` of a test's own: loopback, a free port, no persistence.

It can be stopped, killed, restarted on the same port (empty) and paused
(SIGSTOP), so the fleet's Redis link meets the failures it must survive.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import redis

__all__ = ["RedisServer", "find_redis_server"]


def find_redis_server() -> str | None:
    """The redis-server binary (PATH, then Debian's place), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """``with RedisServer() as server: ... server.url ...``"""

    #: How long a start may take before it is a failure.
    START_TIMEOUT = 10.0

    def __init__(self, *extra: str, binary: str | None = None) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server is not installed (bash .ci/setup installs it)")
        self.binary = found
        self.extra = extra
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="wslifecycle-redis-")
        self.log = Path(self._dir.name) / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """A plain redis-py client of this server's (closed with it), for a
        test to publish, inspect or kill connections."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_timeout=5.0)
        return self._client

    def start(self) -> Self:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--logfile", str(self.log),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.START_TIMEOUT
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on {self.port}: {self._log_tail()}")
            time.sleep(0.005)  # polling for the server's start, not timing a test
        return self

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (after SIGCONT if paused) and wait; SIGKILL if it lingers."""
        if self.process is None:
            return
        self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL and reap: its sockets close at once, as in a crash."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self.process.wait(5.0)
        self.process = None
        self._paused = False

    def restart(self) -> Self:
        """The same port, empty (no persistence)."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: Redis hangs, its connections stay open."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Kill (nothing to save; SIGTERM's shutdown takes ~0.1 s) and clean up."""
        self.kill()
        if self._client is not None:
            self._client.close()
            self._client = None
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
