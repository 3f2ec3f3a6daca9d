"""TLS for the drivers: ``serve(..., ssl=context)``.

* :func:`check_context` and :func:`server_context` (``wslifecycle serve
  --certfile --keyfile``);
* :class:`TlsSession`: TLS as bytes in, bytes out (``ssl.MemoryBIO``), for
  the drivers that move a socket's raw bytes themselves (asyncio, selector;
  Trio wraps its streams in ``trio.SSLStream``);
* :func:`feed_wire`: ciphertext read from a socket, through a session, into
  a wire.

The wire is opened when the TCP connection is accepted, before the TLS
handshake, on every driver: so the core's handshake timeout bounds the TLS
handshake and the HTTP upgrade together (a client that connects and stalls
in either is cut at ``handshake_timeout`` and counted as
``handshake_timeout``), and a TLS failure (a plain-HTTP client on the TLS
port, no shared cipher) is one log line and a lost transport
(``transport_lost``), counted like any other.
"""

from __future__ import annotations

import contextlib
import ssl

from wslifecycle.wire import ServerConnection

from ._common import log

__all__ = ["TlsSession", "check_context", "feed_wire", "server_context"]

#: Plaintext asked of the session per read (a TLS record holds at most 16 KiB).
READ_SIZE = 65536


def check_context(context: object) -> ssl.SSLContext | None:
    """``serve``'s ``ssl`` argument: None, or an :class:`ssl.SSLContext`."""
    if context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError(f"serve(): ssl must be an ssl.SSLContext, got {context!r}")
    return context


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server context with the standard library's defaults for clients'
    connections, and this certificate chain (its key in ``certfile`` unless
    ``keyfile``). Raises OSError (ssl.SSLError included) naming the file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for flag, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as error:
                raise type(error)(f"{flag} {path}: {error.strerror or error}") from error
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as error:
        raise ssl.SSLError(f"--certfile/--keyfile: {describe(error)}") from error
    return context


def describe(error: ssl.SSLError) -> str:
    """OpenSSL's reason (``WRONG_VERSION_NUMBER``), or the whole message."""
    reason = getattr(error, "reason", None)
    return str(reason) if reason else str(error)


class TlsSession:
    """One TLS session over memory buffers: no socket, no clock. Server-side,
    or client-side with ``server_hostname`` (the selector driver's client:
    :meth:`start` gives its first flight).

    ``receive(ciphertext)`` → plaintext; ``encrypt(plaintext)`` →
    ciphertext; ``data_to_send()``: the session's own records (handshake,
    session tickets, alerts). Plaintext written before the handshake is
    finished (or while a TLS 1.2 renegotiation needs the peer) waits here."""

    __slots__ = ("_done", "_incoming", "_object", "_outgoing", "_pending", "established")

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_hostname is None,
            server_hostname=server_hostname,
        )
        #: The handshake finished.
        self.established = False
        self._pending = bytearray()
        self._done = False  # failed, or closed by us: nothing more in or out

    def start(self) -> bytes:
        """A client's first flight (its ClientHello), to write at once."""
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:  # pragma: no cover - a handshake needs the server's answer
            self.established = True
        return self._outgoing.read()

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Ciphertext in; the plaintext it completes, and whether the peer
        ended the session (close_notify). Raises :class:`ssl.SSLError` if
        the handshake or a record fails."""
        if self._done:
            return b"", False
        self._incoming.write(data)
        try:
            if not self.established:
                self._object.do_handshake()
                self.established = True
            plaintext, ended = self._read()
        except ssl.SSLWantReadError:
            return b"", False  # the handshake needs more from the peer
        except ssl.SSLError:
            self._done = True
            raise
        if self._pending:
            self._write(b"")
        return plaintext, ended

    def _read(self) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        read = self._object.read
        while True:
            try:
                chunk = read(READ_SIZE)
            except ssl.SSLWantReadError:
                return b"".join(chunks), False
            except ssl.SSLZeroReturnError:  # close_notify, after ours
                chunk = b""
            if not chunk:  # close_notify: the standard library reads it as b""
                return b"".join(chunks), True  # ours still goes out on close()
            chunks.append(chunk)

    def encrypt(self, data: bytes) -> bytes:
        """Plaintext in; the ciphertext to write now (with any records of
        the session's own that came first)."""
        if not self._done:
            if self.established:
                self._write(data)
            else:
                self._pending += data
        return self._outgoing.read()

    def _write(self, data: bytes) -> None:
        if self._pending:
            data = bytes(self._pending) + data
            self._pending.clear()
        written = 0
        try:
            while written < len(data):
                written += self._object.write(data[written:] if written else data)
        except ssl.SSLWantReadError:  # a renegotiation waits for the peer
            self._pending += data[written:]
        except ssl.SSLError:  # the session can write no more: the rest is dropped
            self._done = True

    def data_to_send(self) -> bytes:
        """The session's own records waiting to be written."""
        return self._outgoing.read()

    def close(self) -> bytes:
        """End the session: the close_notify alert to write (best effort:
        nothing before the handshake finished, or after a failure)."""
        if self._done or not self.established:
            self._done = True
            return b""
        self._done = True
        # SSLWantReadError: the close_notify is made; the peer's is not awaited.
        with contextlib.suppress(ssl.SSLError):
            self._object.unwrap()
        return self._outgoing.read()


def feed_wire(session: TlsSession, wire: ServerConnection, data: bytes, now: float) -> bytes:
    """Ciphertext read from ``wire``'s socket, into the wire through
    ``session``; returns the session's records to write before the wire's
    own output. A TLS failure is logged and loses the transport."""
    try:
        plaintext, ended = session.receive(data)
    except ssl.SSLError as error:
        reason = describe(error)
        log.info("tls failed connection=%s error=%s", wire.id, reason)
        wire.transport_lost(now, f"TLS: {reason}")
        return session.data_to_send()  # the alert, if OpenSSL made one
    if plaintext:
        wire.receive_data(plaintext, now)
    if ended:
        wire.receive_eof(now)
    return session.data_to_send()
