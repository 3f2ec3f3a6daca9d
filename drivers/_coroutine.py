"""What the coroutine drivers (asyncio, Trio) share: a handler that is a
coroutine living as long as its connection.

* :class:`AsyncConnection`: ``async for message in conn``, ``await
  conn.recv()``, ``await conn.close()``; each driver supplies only how to
  wait (a future, an event);
* :func:`call_hook` and :func:`await_hook`: a handshake hook that is sync or
  async (its answer, or the exception it raised);
* :func:`run_handler`: the end of a handler is an input of the wire (it
  raised: 1011, with the traceback logged; it returned: 1000);
* :func:`relay_handler` and :func:`echo_handler`: the handlers of
  ``wslifecycle serve``, which a driver runs inline where it reads
  (:data:`BUILT_IN`, :func:`answer_inline`): no task per connection.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TypeVar

from wslifecycle import ConnectionClosed, State
from wslifecycle.handshake import Accept, HandshakeRequest, Reject

from ._common import ConnectionBase, log

__all__ = [
    "BUILT_IN",
    "AsyncConnection",
    "AsyncProcessRequest",
    "InlineAnswer",
    "Sent",
    "answer_inline",
    "await_hook",
    "call_hook",
    "echo_handler",
    "relay_handler",
    "run_handler",
]

C = TypeVar("C", bound="AsyncConnection")

Answer = Accept | Reject | None
#: The handshake hook of a coroutine driver: a function or a coroutine function.
AsyncProcessRequest = Callable[[HandshakeRequest], Answer | Awaitable[Answer]]


def call_hook(
    hook: AsyncProcessRequest, request: HandshakeRequest
) -> tuple[object, Awaitable[Answer] | None]:
    """Call the hook: (its answer or the exception it raised, None), or
    (None, the awaitable to await) for an async hook."""
    try:
        result = hook(request)
    except Exception as error:
        return error, None
    if inspect.isawaitable(result):
        return None, result
    return result, None


async def await_hook(pending: Awaitable[Answer]) -> object:
    """An async hook's answer, or the exception it raised (cancellation, at
    the handshake timeout, goes through)."""
    try:
        return await pending
    except Exception as error:
        return error


class Sent(int):
    """A sent message's sequence number, which may also be awaited: ``await
    conn.send(x)``, as with websockets, works (the message is queued at once;
    there is nothing to wait for)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, int]:
        yield from ()  # nothing to wait for: the message is queued
        return int(self)


class AsyncConnection(ConnectionBase):
    """A connection whose handler is a coroutine (asyncio, Trio): it lives as
    long as the connection, and ``async for message in conn`` ends when the
    connection stops being ACTIVE and the queue is empty."""

    __slots__ = ()

    async def _arrival(self) -> None:
        """Wait until a message is queued or the connection closes."""
        raise NotImplementedError

    async def wait_closed(self) -> None:
        """Wait until the connection is CLOSED."""
        raise NotImplementedError

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and wait until the connection is CLOSED."""
        if self.state is not State.CLOSED:
            self.wire.close(self._server.now(), code, reason)
            self._server.flush(self.wire)
        await self.wait_closed()

    def send(self, data: str | bytes, *, critical: bool = False) -> Sent | None:
        """Send a message; its sequence number (which ``await`` also
        accepts), or None if skipped (slow peer). Never blocks."""
        seq = super().send(data, critical=critical)
        return None if seq is None else Sent(seq)

    async def recv(self) -> str | bytes:
        """The next message; :class:`~wslifecycle.ConnectionClosed` once the
        connection has left ACTIVE and nothing is left to read."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise ConnectionClosed(
                f"connection {self.id} is {self.state.value}; no message left"
            ) from None

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self

    async def __anext__(self) -> str | bytes:
        while True:
            message = self._take()
            if message is not None:
                return message
            if self.state is not State.ACTIVE:
                raise StopAsyncIteration
            await self._arrival()


async def run_handler(handler: Callable[[C], Awaitable[None]], conn: C) -> None:
    """Run an async handler for its connection's life. If it raises, log the
    traceback and close with 1011; if it returns, close with 1000 (both no
    effect once the connection is closing)."""
    wire = conn.wire
    server = conn._server
    try:
        await handler(conn)
    except ConnectionClosed:
        return  # the connection ended under the handler: nothing to report
    except Exception as error:
        log.exception("handler failed connection=%s", wire.id)
        wire.handler_failed(server.now(), f"{type(error).__name__}: {error}")
    else:
        wire.handler_returned(server.now())
    server.flush(wire)


async def relay_handler(conn: AsyncConnection) -> None:
    """The handler of ``wslifecycle serve``: the JSON pub/sub relay."""
    async for message in conn:
        conn.relay(message)


async def echo_handler(conn: AsyncConnection) -> None:
    """Echo every message back (the mode the Autobahn cases run against)."""
    async for message in conn:
        conn.send(message, critical=True)


# -------------------------------------------------- built-in handlers, inline

#: A built-in handler's answer to one message, run where the message was read.
InlineAnswer = Callable[[AsyncConnection, str | bytes], None]


def _relay(conn: AsyncConnection, message: str | bytes) -> None:
    conn.relay(message)


def _echo(conn: AsyncConnection, message: str | bytes) -> None:
    conn.wire.send(message, conn._server.now(), critical=True)  # answer_inline flushes


#: The handlers of ``wslifecycle serve`` and what each does per message. A
#: driver runs them where it reads, with no task per connection: their
#: ``async for`` would only ever wait for what the reader has just queued.
BUILT_IN: dict[object, InlineAnswer] = {relay_handler: _relay, echo_handler: _echo}


def answer_inline(conn: AsyncConnection, answer: InlineAnswer) -> None:
    """What :func:`run_handler` does with a built-in handler, without its
    task: answer every queued message, then flush once. A failure closes
    with 1011 and is logged, as a handler's would be."""
    wire = conn.wire
    server = conn._server
    try:
        while (message := conn._take()) is not None:
            answer(conn, message)
    except ConnectionClosed:
        pass  # the connection ended under it: nothing to report
    except Exception as error:
        log.exception("handler failed connection=%s", wire.id)
        wire.handler_failed(server.now(), f"{type(error).__name__}: {error}")
    server.flush(wire)
