"""The asyncio and selector drivers' TLS layer alone (drivers/_tls.py): a
server session and a real client (an ``ssl.SSLObject``) exchanging bytes in
memory, no socket."""

from __future__ import annotations

import ssl

import pytest
import trustme

from wslifecycle.drivers._tls import TlsSession, check_context


class Client:
    """A TLS client over memory buffers."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def handshake(self) -> bool:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def receive(self, data: bytes) -> bytes:
        self.incoming.write(data)
        chunks = []
        while True:
            try:
                chunks.append(self.tls.read(65536))
            except ssl.SSLWantReadError:
                return b"".join(chunks)


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def connect(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> tuple[TlsSession, Client]:
    """A finished handshake; the server's session tickets read by the client."""
    session, client = TlsSession(contexts[0]), Client(contexts[1])
    assert not client.handshake()
    assert session.receive(client.outgoing.read()) == (b"", False)
    established = [session.established]  # TLS 1.3: the client's Finished is to come
    client.incoming.write(session.data_to_send())
    assert client.handshake()
    assert session.receive(client.outgoing.read()) == (b"", False)
    established.append(session.established)
    assert established == [False, True]
    client.receive(session.data_to_send())
    return session, client


def test_plaintext_crosses_both_ways(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    session, client = connect(contexts)
    big = bytes(range(256)) * 1000  # several records
    assert client.receive(session.encrypt(big)) == big
    client.tls.write(b"GET / HTTP/1.1\r\n\r\n")
    assert session.receive(client.outgoing.read()) == (b"GET / HTTP/1.1\r\n\r\n", False)


def test_output_before_the_handshake_waits_for_it(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Plaintext written before the handshake is finished goes out once it is."""
    session, client = TlsSession(contexts[0]), Client(contexts[1])
    client.handshake()
    session.receive(client.outgoing.read())
    client.incoming.write(session.encrypt(b"early"))  # the server's flight; "early" waits
    assert client.handshake()
    assert client.receive(b"") == b""
    assert session.receive(client.outgoing.read()) == (b"", False)  # the client's Finished
    assert client.receive(session.data_to_send()) == b"early"


def test_close_notify_both_ways(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """close() makes the close_notify (once); the peer's ends the session."""
    session, client = connect(contexts)
    client.incoming.write(session.close())
    assert client.tls.read(1) == b""  # how the standard library reads a close_notify
    assert session.close() == b""
    assert session.encrypt(b"late") == b""

    other, peer = connect(contexts)
    peer.tls.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        peer.tls.unwrap()  # sends close_notify, waits for ours
    assert other.receive(peer.outgoing.read()) == (b"last words", True)
    assert other.receive(b"") == (b"", True)  # still ended
    peer.incoming.write(other.close())  # our close_notify answers it
    peer.tls.unwrap()  # the shutdown completes: no error


def test_a_failed_handshake_raises_once_then_ignores_input(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    session = TlsSession(contexts[0])
    with pytest.raises(ssl.SSLError):
        session.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert session.receive(b"more") == (b"", False)
    assert session.close() == b""  # no close_notify without a session


def test_nothing_before_the_handshake_means_no_close_notify(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    assert TlsSession(contexts[0]).close() == b""


def test_only_a_context_is_accepted() -> None:
    assert check_context(None) is None
    with pytest.raises(TypeError, match=r"ssl must be an ssl\.SSLContext"):
        check_context("cert.pem")
