"""What the coroutine drivers (asyncio, Trio) share: a handler that is a
coroutine living as long as its connection.

* :class:`AsyncConnection`: ``async for message in conn``, ``await
  conn.close()``; each driver supplies only how to wait (a future, an event);
* :func:`run_handler`: the end of a handler is an input of the wire (it
  raised: 1011, with the traceback logged; it returned: 1000);
* :func:`relay_handler` and :func:`echo_handler`: the handlers of
  ``wslifecycle serve``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from wslifecycle import ConnectionClosed, State

from ._common import ConnectionBase, log

__all__ = ["AsyncConnection", "echo_handler", "relay_handler", "run_handler"]

C = TypeVar("C", bound="AsyncConnection")


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
