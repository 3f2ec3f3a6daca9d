"""The Trio client: ``wslifecycle.drivers.trio.connect``.

    async with connect("wss://example.com/feed", heartbeat_interval=20) as client:
        await client.subscribe("news")
        async for message in client:        # across reconnects
            ...

``connect`` opens a nursery of its own, so the client's tasks live inside
the ``async with`` block and end with it: the session's task (dial with
``trio.open_tcp_stream`` and ``trio.SSLStream`` under the
``handshake_timeout``, run the connection, wait the backoff, dial again),
ONE ticker (it sleeps until the scheduler's next wake-up in a cancel scope
whose deadline is moved earlier, never per message), and per connection a
reader and a writer. An exception of the block's body leaves it as itself,
not inside an exception group. Everything driver-independent is
``_client.ClientCore``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Unpack

import trio

from wslifecycle.client import ClientConnection, Retry, Stop

from ._client import AsyncClient, ClientCore, ClientOptions, ClientStopped
from ._common import reset_socket

__all__ = ["Client", "ClientStopped", "connect"]

#: Bytes asked of the stream per read.
RECEIVE_SIZE = 65536


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


class _Connection:
    """One connection's stream and the transport operations on it."""

    def __init__(self, client: Client, wire: ClientConnection, stream: trio.abc.Stream) -> None:
        self.client = client
        self.wire = wire
        self.stream = stream
        self.out = bytearray()  # written by the wire, not yet sent
        self.in_flight = 0
        self.closing = False  # CloseTransport: close once ``out`` is sent
        self.writer_wakeup = trio.Event()
        self.reading = trio.Event()  # set when a paused reader may go on
        self.scope = trio.CancelScope()  # the reader and the writer

    # ClientOps
    def write(self, data: bytes) -> None:
        self.out += data
        self.writer_wakeup.set()

    def close(self) -> None:
        self.closing = True
        self.writer_wakeup.set()

    def abort(self) -> None:
        self.out.clear()
        reset_socket(_socket_of(self.stream))  # the close that follows is an RST
        self.scope.cancel()

    async def read(self) -> None:
        wire = self.wire
        client = self.client
        while not wire.ended:
            while wire.reading_paused:
                self.reading = trio.Event()
                await self.reading.wait()
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                cause = error.__cause__ or error
                wire.transport_lost(trio.current_time(), f"{type(cause).__name__}: {cause}")
                client._flush()
                return
            if data:
                wire.receive_data(bytes(data), trio.current_time())
            else:
                wire.receive_eof(trio.current_time())
            client._flush()

    async def write_all(self) -> None:
        close_timeout = self.client._core.config.close_timeout
        while True:
            if self.out:
                data = bytes(self.out)
                self.out.clear()
                self.in_flight = len(data)
                try:
                    # A server that stopped reading holds a close at most this long.
                    with trio.move_on_after(close_timeout if self.closing else math.inf):
                        await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    self.wire.transport_lost(trio.current_time(), f"{type(error).__name__}")
                    self.client._flush()
                    self.scope.cancel()
                    return
                finally:
                    self.in_flight = 0
            elif self.closing:
                self.scope.cancel()  # written: stop reading, close
                return
            else:
                self.writer_wakeup = trio.Event()
                await self.writer_wakeup.wait()


class Client(AsyncClient):
    """A client across its reconnects (see :func:`connect`)."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._connection: _Connection | None = None
        self._timer: trio.CancelScope | None = None
        self._dial_scope: trio.CancelScope | None = None
        self._changed = trio.Event()  # a message, a connection, the end
        self._closing = trio.Event()  # close() was called
        self._done = trio.Event()  # the session's task has ended
        self._finished = False
        self._failure: BaseException | None = None

    # -------------------------------------------------------- the application

    async def send(self, data: str | bytes) -> None:
        """Send a message on the current connection; raises
        :class:`~wslifecycle.ConnectionClosed` while not connected."""
        self._core.session.send(data, trio.current_time())
        self._flush()
        await trio.lowlevel.checkpoint()

    async def subscribe(self, channel: str, *, presence: bool = False) -> None:
        """Follow ``channel`` (relay protocol) on this and every later
        connection, resumed with ``since`` after a reconnect."""
        self._core.session.subscribe(channel, trio.current_time(), presence=presence)
        self._flush()
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, channel: str) -> None:
        self._core.session.unsubscribe(channel, trio.current_time())
        self._flush()
        await trio.lowlevel.checkpoint()

    async def publish(self, channel: str, data: object) -> None:
        """Publish JSON ``data`` on ``channel``; raises ConnectionClosed
        while not connected."""
        self._core.session.publish(channel, data, trio.current_time())
        self._flush()
        await trio.lowlevel.checkpoint()

    async def __anext__(self) -> str | bytes:
        while True:
            message = self._core.take(trio.current_time())
            if message is not None:
                self._flush()  # taking one may resume reading
                await trio.lowlevel.checkpoint()
                return message
            if self._finished:
                raise StopAsyncIteration
            self._changed = trio.Event()
            await self._changed.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (the closing handshake, bounded by ``close_timeout``) and
        stop reconnecting; returns once the socket is closed."""
        self._core.close(trio.current_time(), code, reason)
        self._closing.set()
        if self._dial_scope is not None:
            self._dial_scope.cancel()
        self._flush()
        await self._done.wait()

    # --------------------------------------------------------------- running

    async def _first(self) -> None:
        """Wait until the first connection is up; raise if the client stopped first."""
        while not self._core.session.connections:  # made one (it may be gone already)
            if self._finished:
                if self._failure is not None:
                    raise self._failure
                raise self._core.stop_error()
            self._changed = trio.Event()
            await self._changed.wait()

    async def _run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick_forever)
                try:
                    await self._reconnect_forever()
                finally:
                    nursery.cancel_scope.cancel()
        except Exception as error:  # a failure of the driver itself: told to the block
            self._failure = error
            raise
        finally:
            self._finished = True
            self._core.finished(self._failure)
            self._done.set()
            self._changed.set()

    async def _reconnect_forever(self) -> None:
        while True:
            step = await self._attempt()
            if isinstance(step, Stop):
                return
            with trio.move_on_after(step.delay) as backoff:
                await self._closing.wait()
            if not backoff.cancelled_caught:
                return  # closed while waiting

    async def _attempt(self) -> Retry | Stop:
        """One attempt: dial, run the connection to its end; what next."""
        core = self._core
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(core.config.handshake_timeout) as scope:
            self._dial_scope = scope
            try:
                stream = await trio.open_tcp_stream(core.host, core.port)
                if core.tls is not None:
                    stream = trio.SSLStream(
                        stream, core.tls, server_hostname=core.host, https_compatible=True
                    )
                    await stream.do_handshake()
            except (OSError, trio.BrokenResourceError) as error:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                return core.dial_failed(trio.current_time(), error)
            finally:
                self._dial_scope = None
        if scope.cancelled_caught or core.closing:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if core.closing:
                stop = core.stopped
                assert stop is not None
                return stop
            return core.dial_failed(trio.current_time(), TimeoutError())
        assert stream is not None
        return await self._run_connection(stream)

    async def _run_connection(self, stream: trio.abc.Stream) -> Retry | Stop:
        core = self._core
        wire = core.connect(trio.current_time())
        connection = self._connection = _Connection(self, wire, stream)
        try:
            self._flush()
            with connection.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connection.read)
                    nursery.start_soon(connection.write_all)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            self._connection = None
        now = trio.current_time()
        wire.transport_lost(now, "closed")  # no effect: the wire ended first
        step = core.ended(now)
        self._changed.set()
        return step

    def _flush(self) -> None:
        """Hand the wire's output to the writer; keep the ticker in step."""
        connection = self._connection
        wire = self._core.session.wire
        if connection is not None and connection.wire is wire:
            self._core.carry_out(wire, connection, trio.current_time())
            wire.write_buffer_size = len(connection.out) + connection.in_flight
            if not wire.reading_paused:
                connection.reading.set()
        self._changed.set()
        self._arm()

    def _arm(self) -> None:
        """Move the ticker's deadline earlier if the next wake-up moved earlier."""
        timer = self._timer
        if timer is None:
            return  # the ticker is ticking: it reads the wake-up next
        wakeup = self._core.session.scheduler.next_wakeup()
        if wakeup is not None and wakeup < timer.deadline:
            timer.deadline = wakeup

    async def _tick_forever(self) -> None:
        """The one timer of the session."""
        scheduler = self._core.session.scheduler
        while True:
            wakeup = scheduler.next_wakeup()
            with trio.CancelScope(deadline=math.inf if wakeup is None else wakeup) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            self._core.tick(trio.current_time())
            self._flush()


@contextlib.asynccontextmanager
async def _running(core: ClientCore) -> AsyncIterator[Client]:
    client = Client(core)
    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._run)
        try:
            await client._first()
            try:
                yield client
            except BaseException as error:  # raised again outside the nursery, as itself
                raised = error
        except BaseException as error:  # the first connection did not come
            raised = error
        finally:
            with trio.CancelScope(shield=True):
                await client.close()
    if raised is not None:
        raise raised


def connect(
    url: str, **options: Unpack[ClientOptions]
) -> contextlib.AbstractAsyncContextManager[Client]:
    """A WebSocket client of ``url`` (``ws://`` or ``wss://``) that
    reconnects by its ``policy`` and resumes its subscriptions.

    ``async with connect(url) as client:`` returns once the first
    connection is up (retrying by the policy meanwhile) and raises
    :class:`ClientStopped` if the policy stops first (an HTTP 403, a 1008,
    a certificate that does not verify). ``async for message in client``
    yields every message (str or bytes; relay frames as their JSON text)
    across reconnects, and ends once the client is closed or has stopped
    (``client.stopped`` says why). Leaving the block closes the client. A
    bad URL or option raises at the call."""
    return _running(ClientCore(url, options))  # checks everything now
