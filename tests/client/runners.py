"""One face for the three client drivers, so a scenario is written once.

A :class:`Runner` runs a driver's ``connect(url, ...)`` the way an
application would (asyncio and Trio in a thread of their own with their
event loop, ``async for message in client``; the selector client from the
test's thread with ``for message in client`` on a reader thread), and gives
the test a blocking view of it: ``recv(timeout)``, ``call(fn)`` (run
``fn(client)`` where the client lives, awaiting what it returns) and the
callbacks as they were called, each with the time (:class:`Recorder`).
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Self, TypeVar

import trio

from wslifecycle.client import Retry, Stop
from wslifecycle.drivers import asyncio as asyncio_driver
from wslifecycle.drivers import selector as selector_driver
from wslifecycle.drivers import trio as trio_driver

__all__ = ["DRIVERS", "Ended", "Recorder", "Runner", "runner"]

T = TypeVar("T")
DRIVERS = ("asyncio", "trio", "selector")
#: Most a call into the client's thread may take.
CALL_TIMEOUT = 10.0
#: Most a client may take to end once closed (close_timeout is shorter in the tests).
END_TIMEOUT = 15.0


class Ended(Exception):
    """The client's iteration ended (it stopped or was closed)."""


class _End:
    pass


_END = _End()


class Recorder:
    """The callbacks' calls, with ``time.monotonic()`` at each; thread-safe."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.connects: list[float] = []
        self.retries: list[tuple[float, Retry]] = []
        self.drifts: list[tuple[float, dict[str, object]]] = []

    def options(self) -> dict[str, Any]:
        return {
            "on_connect": self._connected,
            "on_reconnect": self._retrying,
            "on_drift": self._drifted,
        }

    def _connected(self) -> None:
        with self._changed:
            self.connects.append(time.monotonic())
            self._changed.notify_all()

    def _retrying(self, retry: Retry) -> None:
        with self._changed:
            self.retries.append((time.monotonic(), retry))
            self._changed.notify_all()

    def _drifted(self, body: dict[str, object]) -> None:
        with self._changed:
            self.drifts.append((time.monotonic(), body))
            self._changed.notify_all()

    def wait(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait (bounded) until ``check()`` is truthy; its answer."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (found := check()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{what}: not within {timeout} s")
                self._changed.wait(remaining)
            return found


class Runner:
    """A client of one driver, run as an application runs it."""

    driver = "abstract"

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.record = Recorder()
        self.options = {**self.record.options(), **options}
        self.inbox: queue.Queue[str | bytes | _End] = queue.Queue()
        self.error: BaseException | None = None  # what connect() or the iteration raised
        self.stopped: Stop | None = None  # client.stopped once it ended
        self._client: Any = None
        self._started = threading.Event()
        self._done = threading.Event()  # the iteration has ended
        self._thread: threading.Thread | None = None

    # What a test uses.

    def start(self, timeout: float = 20.0) -> Self:
        """Connect; raises what ``connect`` raised (ClientStopped)."""
        self._thread = threading.Thread(target=self._run, name=f"client-{self.driver}")
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"{self.driver} client: no first connection in {timeout} s")
        if self._client is None:
            assert self.error is not None
            self._thread.join(END_TIMEOUT)
            raise self.error
        return self

    def recv(self, timeout: float = 5.0) -> str | bytes:
        try:
            message = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.driver} client: no message in {timeout} s") from None
        if isinstance(message, _End):
            self.inbox.put(message)  # every later recv ends too
            raise Ended(f"the client ended: {self.error!r}")
        return message

    def wait_ended(self, timeout: float = END_TIMEOUT) -> list[str | bytes]:
        """Wait until the iteration ends; the messages read until then."""
        messages = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                messages.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Ended:
                return messages

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(client)`` where the client lives (its result awaited if need be)."""
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        return bool(self.call(lambda client: client.connected))

    def send(self, data: str | bytes) -> None:
        self.call(lambda client: client.send(data))

    def subscribe(self, channel: str) -> None:
        self.call(lambda client: client.subscribe(channel))

    def publish(self, channel: str, data: object) -> None:
        self.call(lambda client: client.publish(channel, data))

    def close(self) -> None:
        """Close the client and wait for its thread (bounded)."""
        if self._client is not None and not self._done.is_set():
            try:
                self._close()
            except Exception:  # it ended meanwhile: its loop took no more calls
                if not self._done.wait(END_TIMEOUT):
                    raise
        if self._thread is not None:
            self._thread.join(END_TIMEOUT)
            assert not self._thread.is_alive(), f"{self.driver} client did not end"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # What a driver supplies.

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        self.call(lambda client: client.close())

    def _ended(self, error: BaseException | None) -> None:
        if error is not None:
            self.error = error
        if self._client is not None:
            self.stopped = self._client.stopped
        self.inbox.put(_END)
        self._done.set()
        self._started.set()


class AsyncioRunner(Runner):
    driver = "asyncio"
    _loop: asyncio.AbstractEventLoop

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        error: BaseException | None = None
        try:
            async with asyncio_driver.connect(self.url, **self.options) as client:
                self._client = client
                self._started.set()
                async for message in client:
                    self.inbox.put(message)
        except Exception as failed:  # ClientStopped, or a failure: the test sees it
            error = failed
        finally:
            self._ended(error)

    def call(self, fn: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            result = fn(self._client)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT)


class TrioRunner(Runner):
    driver = "trio"
    _token: trio.lowlevel.TrioToken

    def _run(self) -> None:
        trio.run(self._main)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        error: BaseException | None = None
        try:
            async with trio_driver.connect(self.url, **self.options) as client:
                self._client = client
                self._started.set()
                async for message in client:
                    self.inbox.put(message)
        except Exception as failed:  # ClientStopped, or a failure: the test sees it
            error = failed
        finally:
            self._ended(error)

    def call(self, fn: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            result = fn(self._client)
            return await result if inspect.isawaitable(result) else result

        return trio.from_thread.run(run, trio_token=self._token)


class SelectorRunner(Runner):
    driver = "selector"

    def start(self, timeout: float = 20.0) -> Self:
        # connect() blocks until the first connection: from the test's thread.
        self._client = selector_driver.connect(self.url, **self.options)
        self._thread = threading.Thread(target=self._run, name="client-selector-reader")
        self._thread.start()
        return self

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for message in self._client:
                self.inbox.put(message)
        except Exception as failed:
            error = failed
        finally:
            self._ended(error)

    def call(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self._client)

    def _close(self) -> None:
        self._client.close()


RUNNERS: dict[str, type[Runner]] = {
    runner.driver: runner for runner in (AsyncioRunner, TrioRunner, SelectorRunner)
}


def runner(driver: str, url: str, **options: Any) -> Runner:
    return RUNNERS[driver](url, **options)
