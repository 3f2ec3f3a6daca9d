"""The load generator (``wsgen.c``): build it, start it, talk to it.

A :class:`GeneratorPool` is one or more ``wsgen`` processes, each holding at
most :data:`PER_PROCESS` connections (far below the 20,000-descriptor limit
of a process) and its own block of 127.x source addresses.
"""

from __future__ import annotations

import ipaddress
import json
import math
import pathlib
import queue
import shutil
import subprocess
import time
from typing import Any

from tests.bench._procs import GENERATOR_CPUS, Child, cpu_seconds

__all__ = ["PER_PROCESS", "Generator", "GeneratorPool", "build_generator"]

SOURCE = pathlib.Path(__file__).resolve().parent / "wsgen.c"
PER_PROCESS = 10_000
_SOURCES_PER_PROCESS = 8
_next_block = 0


def build_generator(directory: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Compile wsgen.c into ``directory``; returns the binary and gcc's version."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the load generator needs a C compiler (apt-get install gcc)")
    binary = directory / "wsgen"
    subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True, capture_output=True
    )
    version = subprocess.run(
        [gcc, "-dumpfullversion"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return binary, f"{pathlib.Path(gcc).name} {version}"


def _source_block() -> str:
    """A fresh block of loopback source addresses (127.1.0.1, 127.1.0.9, ...)."""
    global _next_block
    base = int(ipaddress.IPv4Address("127.1.0.1")) + _SOURCES_PER_PROCESS * _next_block
    _next_block += 1
    return str(ipaddress.IPv4Address(base))


class GeneratorError(RuntimeError):
    pass


class Generator:
    """One wsgen process: commands on stdin, one JSON event per stdout line."""

    def __init__(self, binary: pathlib.Path, port: int, workdir: pathlib.Path, name: str) -> None:
        self.name = name
        self.child = Child(
            name,
            [str(binary), "127.0.0.1", str(port), _source_block(), str(_SOURCES_PER_PROCESS)],
            stderr_path=workdir / f"{name}.stderr",
            stdin=True,
            cpus=GENERATOR_CPUS,
        )
        self._early: list[dict[str, Any]] = []
        self.wait("ready", 10)

    def send(self, command: str) -> None:
        self.child.write(command)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        for i, early in enumerate(self._early):
            if early.get("ev") == event:
                return self._early.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GeneratorError(f"{self.name}: no {event!r} event in {timeout:.0f} s")
            try:
                _, line = self.child.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if not self.child.alive():
                    raise GeneratorError(
                        f"{self.name} exited: {self.child.stderr_tail()}"
                    ) from None
                continue
            record: dict[str, Any] = json.loads(line)
            if record.get("ev") == event:
                return record
            self._early.append(record)

    def call(self, command: str, event: str, timeout: float = 15.0) -> dict[str, Any]:
        self.send(command)
        return self.wait(event, timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.child.pid)

    def close(self) -> None:
        if self.child.alive():
            try:
                self.send("quit")
                self.child.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.child.kill()


class GeneratorPool:
    """Enough wsgen processes for ``connections`` connections."""

    def __init__(
        self, binary: pathlib.Path, port: int, workdir: pathlib.Path, connections: int
    ) -> None:
        count = max(1, math.ceil(connections / PER_PROCESS))
        self.generators: list[Generator] = []
        try:
            for i in range(count):
                self.generators.append(Generator(binary, port, workdir, f"wsgen{i}"))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GeneratorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for generator in self.generators:
            generator.close()

    def split(self, total: int) -> list[int]:
        """``total`` spread over the processes, the first ones taking the remainder."""
        n = len(self.generators)
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    def connect(self, total: int, concurrency: int = 64, seconds: int = 90) -> dict[str, Any]:
        """Open ``total`` connections, starting none after ``seconds`` (a server
        that falls behind must not stretch the run); returns ok, failed,
        skipped (never started) and seconds (the slowest process)."""
        shares = self.split(total)
        for generator, share in zip(self.generators, shares, strict=True):
            generator.send(f"connect {share} {concurrency} {seconds}")
        results = [g.wait("connected", seconds + 45) for g in self.generators]
        return {
            key: (max if key == "seconds" else sum)(r[key] for r in results)
            for key in ("ok", "failed", "skipped", "seconds")
        }

    def stats(self) -> dict[str, int]:
        for generator in self.generators:
            generator.send("stats")
        total: dict[str, int] = {}
        for generator in self.generators:
            record = generator.wait("stats", 15)
            for key, value in record.items():
                if key not in ("ev", "t") and isinstance(value, int):
                    total[key] = total.get(key, 0) + value
        return total

    def cpu(self) -> float:
        return sum(g.cpu() for g in self.generators)

    def call_all(self, command: str, event: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        for generator in self.generators:
            generator.send(command)
        return [g.wait(event, timeout) for g in self.generators]
