"""serve()'s errors name the user's call and argument, on every driver: bad
arguments are refused before anything is bound (Trio would otherwise wrap
port 99999 to another port), and an address in use says which address."""

from __future__ import annotations

import errno
import os
import socket
import ssl
from typing import Any

import pytest

from tests.drivers.harness import SERVERS, open_fds
from tests.drivers.serve_once import serve_once

DRIVERS = sorted(SERVERS)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", ["port", "metrics_port"])
@pytest.mark.parametrize("bad", [99999, 65536, -1])
def test_a_port_out_of_range_is_a_value_error_naming_it(driver: str, name: str, bad: int) -> None:
    """Out of 0..65535: ValueError naming the argument, before any socket."""
    arguments: dict[str, Any] = {"host": "127.0.0.1", "port": 0, name: bad}
    before = open_fds()
    with pytest.raises(
        ValueError, match=rf"^serve\(\): {name} must be from 0 to 65535, got {bad}$"
    ):
        serve_once(driver, **arguments)
    assert open_fds() == before


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("bad", ["8765", 80.0, True])
def test_a_port_that_is_not_an_int_is_a_type_error_naming_it(driver: str, bad: object) -> None:
    with pytest.raises(TypeError, match=r"^serve\(\): port must be an int, got "):
        serve_once(driver, "127.0.0.1", bad)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "give host and port (TCP), or unix_path"),
        ({"host": "127.0.0.1"}, "give host and port (TCP), or unix_path"),
        ({"port": 0}, "give host and port (TCP), or unix_path"),
        ({"unix_path": "/tmp/x.sock", "port": 0}, "give port or unix_path, not both"),
        ({"unix_path": "/tmp/x.sock", "host": "127.0.0.1"}, "host is unused with unix_path"),
        ({"unix_path": "/tmp/x.sock", "metrics_port": 0}, "metrics_port needs host"),
        ({"unix_path": ""}, "unix_path must not be empty"),
    ],
)
def test_address_arguments_that_do_not_fit_together(
    driver: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"^serve\(\): ") as raised:
        serve_once(driver, **arguments)
    assert message in str(raised.value)


@pytest.mark.parametrize("driver", DRIVERS)
def test_ssl_must_be_a_context(driver: str) -> None:
    with pytest.raises(TypeError, match=r"^serve\(\): ssl must be an ssl.SSLContext"):
        serve_once(driver, "127.0.0.1", 0, ssl="cert.pem")


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", ["port", "metrics_port"])
def test_an_address_in_use_names_the_call_and_the_address(driver: str, name: str) -> None:
    """EADDRINUSE: the message starts with the call and the address (and says
    which argument unless it is ``port``); errno is kept; nothing is left
    listening (the other listener of the same call is closed)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        arguments: dict[str, Any] = {"host": "127.0.0.1", "port": 0, name: port}
        before = open_fds()
        with pytest.raises(OSError, match=r"^serve\(\): cannot listen on ") as raised:
            serve_once(driver, **arguments)
        suffix = "" if name == "port" else f" ({name})"
        assert str(raised.value) == (
            f"serve(): cannot listen on 127.0.0.1:{port}{suffix}:"
            f" [Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}"
        )
        assert raised.value.errno == errno.EADDRINUSE
        assert isinstance(raised.value.__cause__, OSError)
        assert open_fds() == before


# Not Trio: it resolves a name in a worker thread that its thread cache keeps
# for seconds after the test, moving a later test's thread baseline.
@pytest.mark.parametrize("driver", ["asyncio", "selector"])
def test_a_host_that_does_not_resolve_names_it(driver: str) -> None:
    with pytest.raises(OSError, match=r"^serve\(\): cannot listen on no-such-host\.invalid:0: "):
        serve_once(driver, "no-such-host.invalid", 0)


def test_the_tls_check_comes_before_binding() -> None:
    """A bad ssl argument leaves no socket behind (checked with the address)."""
    before = open_fds()
    for driver in DRIVERS:
        with pytest.raises(TypeError):
            serve_once(driver, "127.0.0.1", 0, ssl=ssl.Purpose.CLIENT_AUTH)
    assert open_fds() == before
