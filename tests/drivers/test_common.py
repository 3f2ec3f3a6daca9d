"""What the drivers share that is not sans-IO (drivers/_common.py)."""

from __future__ import annotations

import logging
import socket
import sys

import pytest

from wslifecycle import Metrics, State, TerminationCause
from wslifecycle.actions import StateChanged
from wslifecycle.drivers._common import log_transition, prometheus_exporter, reset_socket


def test_without_prometheus_client_metrics_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/metrics without the optional package answers 501 with the pip command."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    status, content_type, body = prometheus_exporter()(Metrics().snapshot())
    assert status == 501
    assert b"pip install 'wslifecycle[prometheus]'" in body
    assert content_type.startswith("text/plain")


def test_a_reset_socket_closes_with_an_rst() -> None:
    """After reset_socket, closing one end makes the other end's read fail
    with a connection reset (not a clean EOF); a closed socket is ignored."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    reset_socket(server)
    server.close()
    reset_socket(server)  # closed already: nothing to do
    reset_socket(None)
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    client.close()
    listener.close()


def test_a_probe_transition_is_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    """A plain HTTP request's one transition is debug; a connection's is info."""
    probe = StateChanged("p", State.OPEN, State.CLOSED, TerminationCause.PLAIN_HTTP)
    connection = StateChanged("c", State.OPEN, State.CLOSED, TerminationCause.TRANSPORT_LOST)
    with caplog.at_level(logging.DEBUG, logger="wslifecycle"):
        log_transition(probe)
        log_transition(connection)
    assert [(r.levelno, r.getMessage().split()[1]) for r in caplog.records] == [
        (logging.DEBUG, "connection=p"),
        (logging.INFO, "connection=c"),
    ]
