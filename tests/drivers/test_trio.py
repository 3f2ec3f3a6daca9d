"""The Trio driver on a virtual clock: ``trio.testing.MockClock`` (autojump)
over in-memory streams, with a wsproto client in a task as the peer. Every
time below is exact: the clock only moves when every task is blocked, so the
driver's one ticker fires at the very deadline the core asked for."""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from wslifecycle import Config, State, TerminationCause
from wslifecycle.drivers import trio as driver

INTERVAL = 30.0
MAX_MISSED = 2
BOUND = (MAX_MISSED + 1) * INTERVAL  # docs/theory.md; no timer slack on a mock clock


def config(**changes: object) -> Config:
    values: dict[str, object] = {
        "heartbeat_interval": INTERVAL,
        "max_missed_pongs": MAX_MISSED,
        "allow_no_origin": True,
        "close_timeout": 10.0,
        "drain_timeout": 20.0,
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


def exactly(expected: object) -> object:
    """Equal up to float rounding (times are sums of intervals)."""
    return pytest.approx(expected, rel=0, abs=1e-9)


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


# ------------------------------------------------------------------ streams


class TrackedStream(trio.abc.Stream):
    """The server's end of a connection; remembers when it was closed."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.closed_at: float | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()
        await self.inner.aclose()


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts in-memory connections, so the server's own nursery runs them."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self.accepted: list[TrackedStream] = []

    def connect(self, *, lockstep: bool = False) -> trio.abc.Stream:
        """A new connection; the client's end. ``lockstep``: a send blocks
        until the other side reads (a peer that stops reading stalls writes)."""
        pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        client, server = pair()
        tracked = TrackedStream(server)
        self.accepted.append(tracked)
        self._send.send_nowait(tracked)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()


# -------------------------------------------------------------------- peer


class Peer:
    """A wsproto client: answers pings (unless told not to) and close frames
    (unless told not to), and records when things happened."""

    def __init__(
        self, stream: trio.abc.Stream, *, answer_pings: bool = True, answer_close: bool = True
    ) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.answer_close = answer_close
        self.opened = trio.Event()
        self.ended = trio.Event()
        self.status: int | None = None  # 101, or the refusal's status
        self.pings: list[float] = []
        self.close_code: int | None = None
        self.close_at: float | None = None
        self.eof_at: float | None = None
        self._lock = trio.Lock()
        self._send_messages, self.messages = trio.open_memory_channel[str | bytes](math.inf)

    async def run(self) -> None:
        await self._send(self.ws.send(Request(host="example.com", target="/chat")))
        try:
            while True:
                data = await self.stream.receive_some()
                if not data:
                    break
                self.ws.receive_data(bytes(data))
                await self._handle_events()
        except trio.BrokenResourceError:
            pass  # reset
        finally:
            self.eof_at = trio.current_time()
            self.opened.set()
            self.ended.set()

    async def _handle_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.status = 101
                self.opened.set()
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
                self.opened.set()
            elif isinstance(event, Ping):
                self.pings.append(trio.current_time())
                if self.answer_pings:
                    await self._send(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                self.close_at = trio.current_time()
                if self.answer_close and self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send(self.ws.send(event.response()))
            elif isinstance(event, TextMessage | Message):
                self._send_messages.send_nowait(event.data)

    async def send(self, text: str) -> None:
        await self._send(self.ws.send(TextMessage(data=text)))

    async def close(self, code: int = 1000) -> None:
        await self._send(self.ws.send(CloseConnection(code=code)))

    async def _send(self, data: bytes) -> None:
        async with self._lock:
            await self.stream.send_all(data)


async def open_peer(
    nursery: trio.Nursery, listener: MemoryListener, **options: bool
) -> tuple[Peer, float]:
    """A peer whose upgrade is done; returns it and the time it opened."""
    peer = Peer(listener.connect(), **options)
    nursery.start_soon(peer.run)
    await peer.opened.wait()
    assert peer.status == 101
    return peer, trio.current_time()


async def start_server(
    nursery: trio.Nursery,
    cfg: Config,
    handler: driver.Handler = driver.echo_handler,
) -> tuple[driver.Server, MemoryListener, trio.Event]:
    """The server on a memory listener; the event is set when serve returns."""
    listener = MemoryListener()
    returned = trio.Event()

    async def serve(task_status: trio.TaskStatus[driver.Server]) -> None:
        await driver.serve_listeners(handler, [listener], config=cfg, task_status=task_status)
        returned.set()

    server: driver.Server = await nursery.start(serve)
    return server, listener, returned


# -------------------------------------------------------------- liveness


def test_a_peer_that_answers_pings_is_never_terminated() -> None:
    """Over 100 intervals a peer whose pongs come back is pinged every
    interval and never terminated; the echo still works at the end."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server, listener, _ = await start_server(nursery, config())
            peer, _ = await open_peer(nursery, listener)
            await trio.sleep(100 * INTERVAL)
            assert len(peer.pings) >= 99
            gaps = [b - a for a, b in itertools.pairwise(peer.pings)]
            assert gaps == exactly([INTERVAL] * len(gaps))  # one timer, no drift
            await peer.send("still here")
            assert await peer.messages.receive() == "still here"
            snapshot = server.hub.scheduler.metrics.snapshot()
            assert snapshot.pongs_received == len(peer.pings)
            assert not snapshot.terminations
            assert peer.close_code is None
            nursery.cancel_scope.cancel()

    run(main)


def test_a_silent_peer_is_terminated_within_the_bound_and_healthy_ones_stay() -> None:
    """A peer that stops answering at t0 is terminated (no close frame) by
    t0 + (max_missed+1) × interval, exactly max_missed intervals after the
    first unanswered ping; a healthy peer beside it is not."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server, listener, _ = await start_server(nursery, config())
            healthy, _ = await open_peer(nursery, listener)
            silent, t0 = await open_peer(nursery, listener, answer_pings=False)
            await silent.ended.wait()
            assert silent.eof_at is not None
            assert silent.close_code is None  # terminated: no closing handshake
            assert silent.eof_at - t0 <= BOUND
            assert silent.eof_at - silent.pings[0] == exactly(MAX_MISSED * INTERVAL)
            assert listener.accepted[1].closed_at == silent.eof_at
            snapshot = server.hub.scheduler.metrics.snapshot()
            assert snapshot.terminations == {TerminationCause.HEARTBEAT_TIMEOUT: 1}
            await trio.sleep(10 * INTERVAL)
            assert not healthy.ended.is_set()
            assert server.hub.scheduler.metrics.snapshot().terminations == {
                TerminationCause.HEARTBEAT_TIMEOUT: 1
            }
            nursery.cancel_scope.cancel()

    run(main)


def test_a_peer_that_stops_reading_stalls_only_its_own_writer() -> None:
    """A peer that stops reading blocks its connection's writer (a lockstep
    stream: a send waits for the reader); the ticker keeps pinging the
    healthy peer on time, and the stalled one is terminated within the
    bound, its blocked write cut short."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server, listener, _ = await start_server(nursery, config())
            healthy, _ = await open_peer(nursery, listener)
            stuck = listener.connect(lockstep=True)
            ws = WSConnection(ConnectionType.CLIENT)
            await stuck.send_all(ws.send(Request(host="example.com", target="/chat")))
            ws.receive_data(bytes(await stuck.receive_some()))
            assert any(isinstance(e, AcceptConnection) for e in ws.events())
            t0 = trio.current_time()  # from now on it reads nothing
            tracked = listener.accepted[1]
            while tracked.closed_at is None:
                await trio.sleep(1)
            assert tracked.closed_at - t0 <= BOUND
            assert server.hub.scheduler.metrics.snapshot().terminations == {
                TerminationCause.HEARTBEAT_TIMEOUT: 1
            }
            pings = [p for p in healthy.pings if p <= tracked.closed_at]
            assert len(pings) >= 2
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert gaps == exactly([INTERVAL] * len(gaps))
            nursery.cancel_scope.cancel()

    run(main)


# ---------------------------------------------------------------- closing


def test_the_close_timeout_ends_in_terminate() -> None:
    """The handler closes; a peer that never answers the close frame is
    terminated exactly close_timeout later (cause close_timeout)."""

    async def close_at_once(conn: driver.Connection) -> None:
        await conn.close(1000)
        assert conn.state is State.CLOSED

    async def main() -> None:
        cfg = config(close_timeout=7.0)
        async with trio.open_nursery() as nursery:
            server, listener, _ = await start_server(nursery, cfg, close_at_once)
            peer, _ = await open_peer(nursery, listener, answer_close=False)
            await peer.ended.wait()
            assert peer.close_code == 1000
            assert peer.close_at is not None
            assert peer.eof_at == exactly(peer.close_at + cfg.close_timeout)
            snapshot = server.hub.scheduler.metrics.snapshot()
            assert snapshot.terminations == {TerminationCause.CLOSE_TIMEOUT: 1}
            nursery.cancel_scope.cancel()

    run(main)


def test_drain_closes_with_1001_refuses_new_handshakes_and_cuts_stragglers() -> None:
    """begin_drain: peers get close 1001; a handshake during the drain gets
    503; a straggler that never answers is terminated at the drain deadline;
    then serve returns, and every stream is closed."""

    async def main() -> None:
        cfg = config(close_timeout=60.0, drain_timeout=20.0)
        async with trio.open_nursery() as nursery:
            server, listener, returned = await start_server(nursery, cfg)
            polite = [(await open_peer(nursery, listener))[0] for _ in range(2)]
            straggler, _ = await open_peer(nursery, listener, answer_close=False)
            started = trio.current_time()
            server.begin_drain()
            for peer in polite:
                await peer.ended.wait()
                assert peer.close_code == 1001
            late = Peer(listener.connect())
            nursery.start_soon(late.run)
            await late.opened.wait()
            assert late.status == 503
            await returned.wait()
            assert trio.current_time() == exactly(started + cfg.drain_timeout)
            assert straggler.close_code == 1001
            await straggler.ended.wait()
            assert straggler.eof_at == exactly(started + cfg.drain_timeout)
            assert all(stream.closed_at is not None for stream in listener.accepted)
            snapshot = server.hub.scheduler.metrics.snapshot()
            assert snapshot.terminations == {TerminationCause.DRAIN_DEADLINE: 1}
            assert snapshot.close_codes_sent == {1001: 3}
            assert snapshot.handshakes_rejected == {503: 1}

    run(main)


def test_cancelling_the_server_nursery_closes_every_connection() -> None:
    """Cancellation reaches CLOSED for every connection, whatever its state
    (one mid-handshake, two subscribed relay clients), releases their
    channels, and closes every stream."""

    async def main() -> None:
        cancelled_at = 0.0
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                server, listener, _ = await start_server(nursery, config(), driver.relay_handler)
                peers = [(await open_peer(nursery, listener))[0] for _ in range(2)]
                for peer in peers:
                    await peer.send('{"type":"subscribe","channel":"room"}')
                    assert "subscribed" in str(await peer.messages.receive())
                half_open = listener.connect()
                await half_open.send_all(b"GET /chat HTTP/1.1\r\n")
                while len(server.hub.scheduler) < 3:
                    await trio.sleep(0.1)
                assert server.hub.members("room")
                cancelled_at = trio.current_time()
                scope.cancel()
        assert len(server.hub.scheduler) == 0
        assert server.connections == []
        assert server.hub.channel_sizes() == {}
        assert [stream.closed_at for stream in listener.accepted] == [cancelled_at] * 3
        snapshot = server.hub.scheduler.metrics.snapshot()
        assert snapshot.connections[State.CLOSED] == 3
        assert sum(snapshot.connections[s] for s in (State.OPEN, State.ACTIVE)) == 0
        assert snapshot.closed_by_cause == {TerminationCause.SERVER_STOPPED: 3}

    run(main)


# ---------------------------------------------------------------- streams


def test_serve_stream_serves_any_stream() -> None:
    """serve_stream on a bare memory stream, with no listener at all."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server: driver.Server = await nursery.start(
                partial(driver.serve_listeners, driver.echo_handler, [], config=config())
            )
            client, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(driver.serve_stream, server, server_end)
            peer = Peer(client)
            nursery.start_soon(peer.run)
            await peer.opened.wait()
            await peer.send("hi")
            assert await peer.messages.receive() == "hi"
            await peer.close()
            await peer.ended.wait()
            assert peer.close_code == 1000
            server.begin_drain()

    run(main)
