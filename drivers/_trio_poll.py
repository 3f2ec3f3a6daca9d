"""The Trio driver's one reader of every plain socket it accepted itself.

A task per connection that waits in ``trio.lowlevel.wait_readable`` costs,
per wake-up, a re-registration of its descriptor with Trio's epoll and a
trip through Trio's scheduler: at tens of thousands of pongs a second that
is most of a core. Here one task owns an ``epoll`` of its own, in which
each plain socket is registered once (level-triggered ``EPOLLIN``), waits
until that epoll is readable, then reads every ready socket inline, in
batches of at most :data:`BATCH` with a checkpoint between them so that
the ticker and the accept loops are not starved.

A socket is in the epoll only while its wire wants it read: not while the
wire says ``reading_paused`` (:meth:`Poller.sync`, from every flush), not
once the wire has ended, and never once closed. It leaves the epoll (and
:attr:`Poller._by_fd`) before its descriptor is closed, so a descriptor
number the kernel hands out again is never taken for the old connection.

A connection ends when its socket is closed (``_Transport._shut``, from
anywhere: the ticker, a handler, this reader) and no writer task is left
sending its backlog. Its last rites (the wire terminated if still open, a
last flush, out of the server's table) run in this task, never inside the
flush that closed it; another task asks for them through an eventfd in the
same epoll. When this task is cancelled (the server stops) every connection
it still holds is terminated (``server_stopped``) and closed, as a
connection's own task would do in its ``finally``.
"""

from __future__ import annotations

import os
import select
from typing import TYPE_CHECKING

import trio

from wslifecycle import TerminationCause

from ._coroutine import answer_inline

if TYPE_CHECKING:
    from .trio import Server, _Transport

#: Ready sockets read per turn before the poller lets other tasks run.
BATCH = 256
#: Bytes asked of a socket per read.
RECEIVE_SIZE = 65536

#: Whether this system has what the poller needs (Linux); elsewhere every
#: connection keeps a task of its own.
AVAILABLE = hasattr(select, "epoll") and hasattr(os, "eventfd")

#: One receive buffer for every polled socket: each read is copied out
#: before the next one.
_RECEIVE = memoryview(bytearray(RECEIVE_SIZE))


class Poller:
    """One epoll for the plain sockets of one server, and the task that reads them."""

    __slots__ = (
        "_by_fd",
        "_ending",
        "_epoll",
        "_running",
        "_server",
        "_wake_fd",
        "_woken",
        "stopped",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        #: Every socket now in the epoll, by descriptor.
        self._by_fd: dict[int, _Transport] = {}
        #: Closed sockets whose connection is still to be finished.
        self._ending: list[_Transport] = []
        self._running = False  # reading a batch: ends are finished after it, no wake-up
        self._woken = False  # the eventfd was written and not yet read
        #: The server stopped and every connection was ended: no more.
        self.stopped = False

    # ------------------------------------------------------------ membership

    def add(self, transport: _Transport) -> None:
        """A new connection's socket: read through this poller from now on
        (its handshake included)."""
        transport.poller = self
        self._register(transport)

    def sync(self, transport: _Transport, paused: bool) -> None:
        """Keep the socket in the epoll exactly while its wire wants it read."""
        want = not paused and not transport.wire.ended
        if want == (transport.polled >= 0):
            return
        if want:
            sock = transport.sock
            if sock is not None and sock.fileno() >= 0:
                self._register(transport)
        else:
            self._unregister(transport)

    def closing(self, transport: _Transport) -> None:
        """The socket is about to be closed: out of the epoll first, and
        the connection to be finished by this task."""
        self._unregister(transport)
        self.writer_ended(transport)

    def writer_ended(self, transport: _Transport) -> None:
        """The socket is closed, or its backlog's writer has ended: finish
        the connection once both hold."""
        if self.stopped:
            return  # the server stopped: everything was finished already
        self._ending.append(transport)
        if not self._running and not self._woken:
            self._woken = True
            os.eventfd_write(self._wake_fd, 1)

    def _register(self, transport: _Transport) -> None:
        sock = transport.sock
        assert sock is not None
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = transport
        transport.polled = fd

    def _unregister(self, transport: _Transport) -> None:
        fd = transport.polled
        if fd >= 0:
            transport.polled = -1
            del self._by_fd[fd]
            self._epoll.unregister(fd)

    # ------------------------------------------------------------------ task

    async def run(self) -> None:
        """Read ready sockets until cancelled, then end every connection left."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                while self._turn() == BATCH:
                    await trio.lowlevel.checkpoint()
        finally:
            self._stop()

    def _turn(self) -> int:
        """Read one batch of ready sockets, then finish the connections that
        ended; how many events there were."""
        server = self._server
        answer = server._answer
        by_fd = self._by_fd
        flush = server.flush
        now = trio.current_time
        self._running = True
        try:
            events = self._epoll.poll(0, BATCH)
            for fd, _ in events:
                transport = by_fd.get(fd)
                if transport is None:  # the eventfd, or a socket left earlier in this batch
                    if fd == self._wake_fd:
                        self._woken = False
                        os.eventfd_read(fd)
                    continue
                sock = transport.sock
                assert sock is not None
                wire = transport.wire
                try:
                    size = sock.recv_into(_RECEIVE)
                except BlockingIOError:
                    continue
                except OSError as error:
                    server._lost(transport, error)
                    continue
                if size:
                    if not wire.receive_data(_RECEIVE[:size].tobytes(), now()):
                        continue  # a lone pong: nothing to write or act on
                else:
                    wire.receive_eof(now())
                if answer is not None and wire.messages_waiting:
                    answer_inline(transport.conn, answer)  # flushes
                else:
                    flush(wire)
            self._finish_ended()
        finally:
            self._running = False
        return len(events)

    def _finish_ended(self) -> None:
        server = self._server
        finished = False
        ending = self._ending
        while ending:
            transport = ending.pop()
            sock = transport.sock
            assert sock is not None
            if transport.writing or sock.fileno() >= 0:
                continue  # not yet: the writer's end or the close asks again
            finished |= self._finish(transport)
        if finished:
            server._check_drained()

    def _finish(self, transport: _Transport) -> bool:
        """What a connection's own task did in its ``finally`` (once)."""
        server = self._server
        wire = transport.wire
        if server._transports.get(wire) is not transport:
            return False
        # Only a server that stops gets here with the wire still open.
        wire.terminate(trio.current_time(), TerminationCause.SERVER_STOPPED)
        server.flush(wire)
        transport._shut()
        del server._transports[wire]
        return True

    def _stop(self) -> None:
        """The server stopped: every connection left ends, then the epoll."""
        server = self._server
        self._running = True  # no wake-ups: nobody reads the eventfd any more
        try:
            left = [t for t in server._transports.values() if t.poller is self]
            for transport in left:
                self._finish(transport)
        finally:
            self.stopped = True
            self._ending.clear()
            self._epoll.close()
            os.close(self._wake_fd)
            server._check_drained()
