"""The asyncio client: ``wslifecycle.drivers.asyncio.connect``.

    async with connect("wss://example.com/feed", heartbeat_interval=20) as client:
        await client.subscribe("news")
        async for message in client:        # across reconnects
            ...

One task runs the session: dial (``loop.create_connection``, TLS by asyncio
under the ``handshake_timeout``), feed the wire from protocol callbacks,
wait for the connection's end, ask the session what next, wait the
backoff, dial again. ONE ``loop.call_at`` timer follows the session's
scheduler (heartbeat, handshake and close deadlines), re-armed only when a
deadline moved. Everything driver-independent is ``_client.ClientCore``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any, Unpack, cast

from wslifecycle.client import ClientConnection, Retry, Stop

from ._client import AsyncClient, ClientCore, ClientOptions, ClientStopped
from ._common import reset_socket

__all__ = ["Client", "ClientStopped", "Connecting", "connect"]


class _Protocol(asyncio.Protocol):
    """One connection's socket; its bytes go to the client's wire."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.wire: ClientConnection | None = None
        self.early: list[bytes] = []  # read before the wire was attached
        self.early_eof = False
        self.paused = False  # reading is paused
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        wire = self.wire
        if wire is None:
            self.early.append(data)
            return
        wire.receive_data(data, self.client._now())
        self.client._flush()

    def eof_received(self) -> bool:
        wire = self.wire
        if wire is None:
            self.early_eof = True
        else:
            wire.receive_eof(self.client._now())
            self.client._flush()
        return False  # close: the wire says so too

    def connection_lost(self, exc: Exception | None) -> None:
        wire = self.wire
        if wire is not None:
            wire.transport_lost(self.client._now(), None if exc is None else repr(exc))
            self.client._flush()
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)

    # ClientOps
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():  # a server that stopped reading: bounded
                loop = asyncio.get_running_loop()
                loop.call_later(self.client._core.config.close_timeout, self.abort)

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            reset_socket(transport.get_extra_info("socket"))
            transport.abort()


class Client(AsyncClient):
    """A client across its reconnects (see :func:`connect`)."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._protocol: _Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._armed_changes = -1
        self._changed = asyncio.Event()  # a message, a connection, the end
        self._closing = asyncio.Event()  # close() was called: stop dialing or waiting
        self._finished = False

    # -------------------------------------------------------- the application

    async def send(self, data: str | bytes) -> None:
        """Send a message on the current connection; raises
        :class:`~wslifecycle.ConnectionClosed` while not connected."""
        self._core.session.send(data, self._now())
        self._flush()

    async def subscribe(self, channel: str, *, presence: bool = False) -> None:
        """Follow ``channel`` (relay protocol) on this and every later
        connection, resumed with ``since`` after a reconnect."""
        self._core.session.subscribe(channel, self._now(), presence=presence)
        self._flush()

    async def unsubscribe(self, channel: str) -> None:
        self._core.session.unsubscribe(channel, self._now())
        self._flush()

    async def publish(self, channel: str, data: object) -> None:
        """Publish JSON ``data`` on ``channel``; raises ConnectionClosed
        while not connected."""
        self._core.session.publish(channel, data, self._now())
        self._flush()

    async def __anext__(self) -> str | bytes:
        while True:
            message = self._core.take(self._now())
            if message is not None:
                self._flush()  # taking one may resume reading
                return message
            if self._finished:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (the closing handshake, bounded by ``close_timeout``) and
        stop reconnecting; returns once the socket is closed."""
        self._core.close(self._now(), code, reason)
        self._closing.set()
        self._flush()
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    # --------------------------------------------------------------- running

    def _now(self) -> float:
        return self._loop.time()

    def _start(self) -> None:
        self._task = self._loop.create_task(self._run())

    async def _first(self) -> None:
        """Wait until the first connection is up; raise if the client stopped first."""
        task = self._task
        assert task is not None
        while not self._core.session.connections:  # made one (it may be gone already)
            if task.done():
                task.result()  # a failure of the driver itself
                raise self._core.stop_error()
            self._changed.clear()
            await self._changed.wait()

    async def _run(self) -> None:
        core = self._core
        failure: BaseException | None = None
        try:
            while True:
                step = await self._connection()
                if isinstance(step, Stop):
                    return
                try:  # the backoff, unless close() comes first
                    await asyncio.wait_for(self._closing.wait(), step.delay)
                    return
                except TimeoutError:
                    pass
        except BaseException as error:  # a failure of the driver (or a cancellation)
            failure = error
            raise
        finally:
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            protocol = self._protocol
            if protocol is not None and protocol.transport is not None:
                protocol.abort()  # only a failure of this task leaves one open
            core.finished(failure)
            self._changed.set()

    async def _connection(self) -> Retry | Stop:
        """One attempt: dial, run the connection to its end; what next."""
        core = self._core
        try:
            async with asyncio.timeout(core.config.handshake_timeout):
                protocol = await self._dial()
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            return core.dial_failed(self._now(), error)
        if protocol is None:
            return self._stopped()
        now = self._now()
        wire = protocol.wire = core.connect(now)
        self._protocol = protocol
        for data in protocol.early:
            wire.receive_data(data, now)
        if protocol.early_eof:
            wire.receive_eof(now)
        if protocol.transport is None:  # lost before the wire was attached
            wire.transport_lost(now, "lost")
        self._flush()
        await protocol.lost
        self._protocol = None
        step = core.ended(self._now())
        self._changed.set()
        return step

    async def _dial(self) -> _Protocol | None:
        """TCP (and TLS) to the target; None if close() came first."""
        core = self._core
        tls = core.tls
        dial = asyncio.ensure_future(
            self._loop.create_connection(
                lambda: _Protocol(self),
                core.host,
                core.port,
                ssl=tls,
                server_hostname=core.host if tls is not None else None,
                ssl_handshake_timeout=core.config.handshake_timeout if tls is not None else None,
            )
        )
        closing = asyncio.ensure_future(self._closing.wait())
        waited = False
        try:
            await asyncio.wait((dial, closing), return_when=asyncio.FIRST_COMPLETED)
            waited = True
        finally:
            for job in (dial, closing):
                if not job.done():
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await job
            if not waited and _succeeded(dial):  # cancelled just as it connected
                dial.result()[1].abort()
        if not dial.done() or dial.cancelled():
            return None
        _, protocol = dial.result()  # raises the dial's error
        if core.closing:  # the dial won the race with close(): drop it
            protocol.abort()
            return None
        return protocol

    def _stopped(self) -> Stop:
        stop = self._core.stopped
        assert stop is not None
        return stop

    def _flush(self) -> None:
        """Carry out the wire's output; keep reading in step and the timer armed."""
        protocol = self._protocol
        wire = self._core.session.wire
        if protocol is None or wire is None or protocol.wire is not wire:
            return
        now = self._now()
        self._core.carry_out(wire, protocol, now)
        transport = protocol.transport
        if transport is not None:
            wire.write_buffer_size = transport.get_write_buffer_size()
            paused = wire.reading_paused
            if paused is not protocol.paused and not transport.is_closing():
                protocol.paused = paused
                if paused:
                    transport.pause_reading()
                else:
                    transport.resume_reading()
        self._changed.set()
        self._arm()

    def _arm(self) -> None:
        """Keep ONE timer at the scheduler's next wake-up."""
        scheduler = self._core.session.scheduler
        if scheduler.changes == self._armed_changes and self._timer is not None:
            return
        self._armed_changes = scheduler.changes
        wakeup = scheduler.next_wakeup()
        if wakeup is None or wakeup == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wakeup
        self._timer = self._loop.call_at(wakeup, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._core.tick(self._now())
        self._armed_changes = -1
        self._flush()
        self._arm()


def _succeeded(dial: asyncio.Future[tuple[asyncio.Transport, _Protocol]]) -> bool:
    return dial.done() and not dial.cancelled() and dial.exception() is None


class Connecting:
    """What :func:`connect` returns: ``async with`` it (the first
    connection made on entry, closed on exit), or ``await`` it for the
    connected :class:`Client` (then ``await client.close()``)."""

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._client: Client | None = None

    async def _open(self) -> Client:
        client = Client(self._core)
        client._start()
        try:
            await client._first()
        except BaseException:
            await client.close()
            raise
        return client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._client is not None
        await self._client.close()


def connect(url: str, **options: Unpack[ClientOptions]) -> Connecting:
    """A WebSocket client of ``url`` (``ws://`` or ``wss://``) that
    reconnects by its ``policy`` and resumes its subscriptions.

    ``async with connect(url) as client:`` returns once the first
    connection is up (retrying by the policy meanwhile) and raises
    :class:`ClientStopped` if the policy stops first (an HTTP 403, a 1008,
    a certificate that does not verify). ``async for message in client``
    yields every message (str or bytes; relay frames as their JSON text)
    across reconnects, and ends once the client is closed or has stopped
    (``client.stopped`` says why). A bad URL or option raises at the call."""
    return Connecting(ClientCore(url, options))  # checks everything now
