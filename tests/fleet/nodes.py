"""A fleet on real processes: ``wslifecycle serve --redis`` nodes, relay
clients (the `websockets` sync client) and a reader of what a subscriber saw.

Every wait here is bounded and waits on something that happens (a frame,
an HTTP answer); the polls of /healthz and ``members`` are how a test
watches a node change its mind, at a short interval, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import itertools
import json
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.drivers.harness import reap

__all__ = [
    "Client",
    "Frame",
    "Node",
    "Sequence",
    "fleet",
    "learn_id",
    "read_sequence",
    "wait_each",
    "wait_until",
]

T = TypeVar("T")
Frame = dict[str, Any]

#: How often a poll (/healthz, members) asks again.
POLL = 0.02

_BANNER = re.compile(r"serving relay on ws://127\.0\.0\.1:(\d+) \(driver (\w+)\)")


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Ask ``check`` every POLL seconds until it answers something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(POLL)  # a poll interval, not a timing assumption


def wait_each(
    things: Iterable[T],
    check: Callable[[T], object],
    timeout: float,
    what: str,
    since: float | None = None,
) -> dict[T, float]:
    """Ask ``check`` of each thing every POLL seconds until it has answered
    truthy for all; how long each took (from ``since``, a ``time.monotonic()``,
    else from this call), polled together so one slow thing does not delay
    the others' measure."""
    start = time.monotonic() if since is None else since
    waiting = list(things)
    took: dict[T, float] = {}
    while True:
        for thing in list(waiting):
            if check(thing):
                took[thing] = time.monotonic() - start
                waiting.remove(thing)
        if not waiting:
            return took
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s for {waiting}")
        time.sleep(POLL)  # a poll interval, not a timing assumption


# -------------------------------------------------------------------- nodes


class Node:
    """One ``wslifecycle serve --redis URL`` process on a free port (a
    ``--port`` among ``flags`` picks it; ``redis_url`` None: one node, channels
    in memory).

    Its log (stderr) goes to a file, read back when a test fails."""

    #: Most a node takes to print its serving line.
    START_TIMEOUT = 15.0

    def __init__(self, driver: str, redis_url: str | None, *flags: str) -> None:
        self.driver = driver
        self._log_dir = tempfile.TemporaryDirectory(prefix=f"wslifecycle-node-{driver}-")
        self.log_path = Path(self._log_dir.name) / "node.log"
        self._log = self.log_path.open("w")
        redis = () if redis_url is None else ("--redis", redis_url)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0",
             "--driver", driver, *redis, "--allow-no-origin",
             "--log-level", "warning", *flags],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            self.port = self._read_port()
        except BaseException:
            self.close()
            raise

    def _read_port(self) -> int:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], self.START_TIMEOUT)
        banner = stdout.readline() if ready else ""
        found = _BANNER.search(banner)
        if found is None or found[2] != self.driver:
            raise RuntimeError(f"node {self.driver} did not start: {banner!r} {self.log()}")
        return int(found[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def __repr__(self) -> str:
        return f"<Node {self.driver} :{self.port}>"

    def log(self) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return "(no log)"

    # HTTP on the main port: the hub answers /healthz and /metrics there.

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def health(self) -> tuple[int, str]:
        return self.get("/healthz")

    def degraded(self) -> bool:
        status, body = self.health()
        assert status == 200, (status, body)  # degraded still serves: 200, never 503
        return body.startswith("degraded")

    def healthy(self) -> bool:
        status, body = self.health()
        return status == 200 and not body.startswith("degraded")

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample of /metrics (``name`` as exposed)."""
        status, text = self.get("/metrics")
        assert status == 200, (status, text)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(f"{name} not in /metrics:\n{text}")

    # The process.

    def kill(self) -> None:
        """SIGKILL: a crash; its sockets close, its leases are left to expire."""
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        """SIGTERM: drain and exit; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(20)

    def close(self) -> None:
        reap(self.process)
        self._log.close()
        self._log_dir.cleanup()


@contextlib.contextmanager
def fleet(redis_url: str, drivers: Iterable[str], *flags: str) -> Iterator[list[Node]]:
    """Nodes of these drivers on one Redis, each connected to it; leaving
    drains those still running (exit 0 asserted) and reaps all."""
    nodes: list[Node] = []
    try:
        for driver in drivers:  # one by one: a node that fails is still closed
            nodes.append(Node(driver, redis_url, *flags))  # noqa: PERF401
        for node in nodes:
            wait_until(node.healthy, 15, f"{node} connected to redis")
        yield nodes
        for node in nodes:
            if node.process.poll() is None:
                assert node.stop() == 0, node.log()
    except BaseException:
        for node in nodes:  # shown by pytest with the failure
            print(f"--- log of {node} ---\n{node.log()}")
        raise
    finally:
        for node in nodes:
            node.close()


# ------------------------------------------------------------------ clients

_names = itertools.count(1)


class Client:
    """A relay client: every JSON frame it received, in order, readable while
    it arrives; a reader thread of its own keeps it reading (and answering
    pings) whatever the test does."""

    def __init__(self, node: Node, name: str | None = None) -> None:
        self.node = node
        self.name = name or f"client{next(_names)}"
        self.id: str | None = None  # the server's connection id, once learned
        # Entered as the context manager websockets wants; close() leaves it.
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(node.url, open_timeout=10, close_timeout=10, max_size=None)
        )
        self.frames: list[Frame] = []
        self.closed = threading.Event()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=self.name, daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Client {self.name} on {self.node}>"

    def _read(self) -> None:
        try:
            for message in self.ws:
                frame = json.loads(message)
                with self._changed:
                    self.frames.append(frame)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            with self._changed:
                self._changed.notify_all()

    def send(self, request: Frame) -> None:
        self.ws.send(json.dumps(request))

    def mark(self) -> int:
        with self._changed:
            return len(self.frames)

    def wait_for(
        self, predicate: Callable[[Frame], bool], timeout: float = 10.0, since: int = 0
    ) -> Frame:
        """The first frame from index ``since`` that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for frame in self.frames[since:]:
                    if predicate(frame):
                        return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    raise TimeoutError(
                        f"{self}: no such frame in {timeout} s (closed: {self.closed.is_set()});"
                        f" last frames: {self.frames[-8:]}"
                    )
                self._changed.wait(remaining)

    def wait_count(
        self, predicate: Callable[[Frame], bool], count: int, timeout: float = 10.0
    ) -> list[Frame]:
        """Wait until ``count`` frames satisfy ``predicate``; those frames."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [frame for frame in self.frames if predicate(frame)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    raise TimeoutError(
                        f"{self}: {len(found)}/{count} frames in {timeout} s;"
                        f" last frames: {self.frames[-8:]}"
                    )
                self._changed.wait(remaining)

    def ask(self, request: Frame, answer: Callable[[Frame], bool], timeout: float = 10.0) -> Frame:
        """Send ``request`` and wait for the first frame after it that ``answer`` accepts."""
        since = self.mark()
        self.send(request)
        return self.wait_for(answer, timeout, since)

    def subscribe(self, channel: str, timeout: float = 10.0, **options: Any) -> Frame:
        """Subscribe (``since``, ``epoch``, ``presence``); the ``subscribed`` answer."""
        return self.ask(
            {"type": "subscribe", "channel": channel, **options},
            lambda f: f.get("type") in ("subscribed", "error") and f.get("channel") == channel,
            timeout,
        )

    def members(self, channel: str, timeout: float = 10.0) -> Frame:
        return self.ask(
            {"type": "members", "channel": channel},
            lambda f: f.get("type") == "members" and f.get("channel") == channel,
            timeout,
        )

    def member_ids(self, channel: str) -> set[str]:
        """The fleet's members of ``channel`` (asserted complete: Redis is up)."""
        answer = self.members(channel)
        assert not answer.get("partial"), answer
        return set(answer["ids"])

    def of(self, channel: str, *kinds: str) -> list[Frame]:
        """Frames of these types on ``channel``, in arrival order."""
        with self._changed:
            return [f for f in self.frames if f.get("channel") == channel and f["type"] in kinds]

    def close(self) -> None:
        self._stack.close()
        self._reader.join(10)


def learn_id(
    client: Client, observer: Client, channel: str, known: set[str], **options: Any
) -> str:
    """``client`` subscribes to ``channel`` (with ``options``); its connection
    id is the one member ``observer`` sees that is not in ``known`` (which it
    joins)."""
    subscribed = client.subscribe(channel, **options)
    assert subscribed["type"] == "subscribed", subscribed
    new = observer.member_ids(channel) - known
    assert len(new) == 1, (new, known)
    client.id = new.pop()
    known.add(client.id)
    return client.id


# ---------------------------------------------------- what a subscriber saw


@dataclasses.dataclass
class Sequence:
    """What a subscriber was delivered, read as one sequence."""

    #: (epoch, seq) of each message, in order.
    delivered: list[tuple[str, int]]
    #: Each hole a drift announced: (epoch, since, oldest, epoch after it).
    holes: list[tuple[str, int, int, str]]

    def accounts_for(self, epoch: str, seq: int) -> bool:
        """Message ``seq`` of ``epoch`` was delivered, or a drift said it would not be."""
        if (epoch, seq) in self.delivered:
            return True
        return any(
            before == epoch and since < seq and (after != epoch or seq < oldest)
            for before, since, oldest, after in self.holes
        )


def read_sequence(frames: Iterable[Frame], start: int, epoch: str) -> Sequence:
    """Check that ``message`` and ``drift`` frames read as one sequence from
    seq ``start`` of ``epoch`` (the client's ``subscribed`` position): each
    message is the next one, unless a drift just said what was lost
    (``since`` == the last seen, ``oldest`` == the next message; a new epoch
    restarts the count). Unsequenced (``"local"``) messages are skipped."""
    last, current = start, epoch
    seen = Sequence([], [])
    for frame in frames:
        if frame["type"] == "drift":
            assert frame["since"] == last, (frame, current, last)
            assert frame["oldest"] > frame["since"] or frame["epoch"] != current, frame
            seen.holes.append((current, frame["since"], frame["oldest"], frame["epoch"]))
            current, last = frame["epoch"], frame["oldest"] - 1
        elif frame["type"] == "message" and not frame.get("local"):
            seq = frame["seq"]
            assert seq == last + 1, f"seq {seq} after {last} of {current} (holes: {seen.holes})"
            last = seq
            seen.delivered.append((current, seq))
    return seen
