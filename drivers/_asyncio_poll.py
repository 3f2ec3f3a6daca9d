"""The asyncio driver's one reader of every plain socket it accepted itself.

On asyncio's standard loop a transport per connection costs, per pong, a
selector event turned into a handle, ``_read_ready``, ``get_buffer``,
``recv_into`` and ``buffer_updated``: most of a heartbeat's CPU. Here one
``epoll`` of the server's own holds each plain socket (level-triggered
``EPOLLIN``), and the loop watches only that epoll's descriptor
(``loop.add_reader``). When it is readable, :meth:`Poller._drain` reads the
ready sockets inline, at most :data:`BATCH` per callback: what is left keeps
the epoll readable, so the loop runs its timers and accepts first and calls
us again.

A socket is in the epoll only while its wire wants it read: not while the
wire says ``reading_paused``, not after the peer's EOF, never once closed.
It leaves the epoll before its descriptor is closed, so a number the kernel
hands out again is never taken for the old connection.

Writes go straight to the socket (``_Polled.write`` in ``asyncio.py``); what
the kernel refuses is a backlog, sent from ``loop.add_writer`` until empty.
"""

from __future__ import annotations

import asyncio
import select
import socket
from typing import TYPE_CHECKING

from ._coroutine import answer_inline

if TYPE_CHECKING:
    from .asyncio import Server, _Polled

#: Ready sockets read per callback before the loop gets its turn.
BATCH = 256
#: Connections taken from a listening socket per callback, at most.
ACCEPT_BATCH = 64
#: Seconds a listening socket is left alone after accept failed (EMFILE):
#: not a busy loop of failures while no descriptor is free.
ACCEPT_RETRY = 0.1

#: Whether this system has what the poller needs (Linux); elsewhere every
#: connection keeps asyncio's transport.
AVAILABLE = hasattr(select, "epoll")

#: One receive buffer for every polled socket: each read is copied out
#: before the next one.
_RECEIVE = memoryview(bytearray(65536))


def can_poll(loop: asyncio.AbstractEventLoop) -> bool:
    """The standard selector loop on a system with epoll: uvloop's C
    transports are fast already and keep that path."""
    return AVAILABLE and type(loop).__module__.startswith("asyncio")


class Poller:
    """One epoll for the plain sockets of one server, read from one loop callback."""

    __slots__ = ("_by_fd", "_epoll", "_fd", "_loop", "_server")

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        #: Every socket now in the epoll, by descriptor.
        self._by_fd: dict[int, _Polled] = {}
        loop.add_reader(self._fd, self._drain)

    def close(self) -> None:
        """Out of the loop, then the epoll closed (its sockets left it already)."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._fd = -1
            self._by_fd.clear()
            self._epoll.close()

    @property
    def watched(self) -> int:
        """How many sockets are in the epoll now (tests)."""
        return len(self._by_fd)

    # ------------------------------------------------------------ membership

    def watch(self, polled: _Polled, want: bool) -> None:
        """Keep the socket in the epoll exactly while ``want`` (read it)."""
        if want == (polled.polled >= 0) or self._fd < 0:
            return
        if want:
            fd = polled.sock.fileno()
            if fd >= 0:
                self._epoll.register(fd, select.EPOLLIN)
                self._by_fd[fd] = polled
                polled.polled = fd
        else:
            fd = polled.polled
            polled.polled = -1
            del self._by_fd[fd]
            self._epoll.unregister(fd)

    def forget(self, polled: _Polled) -> None:
        """The socket is about to be closed: out of the epoll and the loop first."""
        self.watch(polled, False)
        if polled.writing:
            polled.writing = False
            self._loop.remove_writer(polled.sock.fileno())

    # ----------------------------------------------------------------- writes

    def send_later(self, polled: _Polled) -> None:
        """The kernel refused part of a write: send the backlog when it has room."""
        if not polled.writing:
            polled.writing = True
            self._loop.add_writer(polled.sock.fileno(), self._send_backlog, polled)

    def _send_backlog(self, polled: _Polled) -> None:
        out = polled.out
        try:
            sent = polled.sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            polled.fail(error)
            return
        del out[:sent]  # cheap: a bytearray drops its head in place
        polled.wire.write_buffer_size = len(out)
        if not out:
            polled.writing = False
            self._loop.remove_writer(polled.sock.fileno())
            if polled.closing:
                polled.shut(None)

    # ------------------------------------------------------------------ reads

    def _drain(self) -> None:
        """Read one batch of ready sockets; the rest wait for the next callback."""
        server = self._server
        answer = server._answer
        by_fd = self._by_fd
        flush = server.flush
        clock = server._clock
        for fd, _ in self._epoll.poll(0, BATCH):
            polled = by_fd.get(fd)
            if polled is None:  # it left the epoll earlier in this batch
                continue
            wire = polled.wire
            try:
                size = polled.sock.recv_into(_RECEIVE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                polled.fail(error)
                continue
            if size:
                if not wire.receive_data(_RECEIVE[:size].tobytes(), clock()):
                    continue  # a lone pong: nothing to write or act on
                if answer is not None and wire.messages_waiting:
                    answer_inline(polled.conn, answer)  # a built-in handler: flushes
                else:
                    flush(wire)
            else:
                polled.eof()


def listen_tcp(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address ``host`` resolves to,
    as ``loop.create_server`` binds them (SO_REUSEADDR; IPv6 sockets
    IPv6-only, so that both families can share the port)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
