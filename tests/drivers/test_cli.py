"""The command line's own behaviour (serving is in test_conformance.py)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import tempfile

import pytest
import trustme
import websockets
from websockets.asyncio.client import unix_connect

import wslifecycle
from wslifecycle.drivers import cli

DRIVERS = list(cli.DRIVERS)


def test_version_prints_the_package_version() -> None:
    """``wslifecycle --version`` names the version the package carries."""
    done = subprocess.run(
        [sys.executable, "-m", "wslifecycle.drivers", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"wslifecycle {wslifecycle.__version__}")


def test_every_config_flag_reaches_the_config() -> None:
    """Flags map onto Config fields, the inbox marks included."""
    args = cli.parser().parse_args(
        ["serve", "--inbox-high-water", "8", "--inbox-low-water", "2", "--max-connections", "5"]
    )
    config = cli.build_config(args)
    assert (config.inbox_high_water, config.inbox_low_water, config.max_connections) == (8, 2, 5)


def test_a_bad_value_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration error is one line naming the field and the reason; exit 2."""
    assert cli.main(["serve", "--inbox-high-water", "4", "--inbox-low-water", "4"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "wslifecycle: configuration error: inbox_low_water: must be below"
        " inbox_high_water (4), got 4\n"
    )


def test_a_heartbeat_the_proxy_would_outlast_refuses_to_start() -> None:
    """--proxy-idle-timeout: a heartbeat interval not below the proxy's idle
    timeout is refused before anything listens (one line naming the field and
    the reason; exit 2); an interval below it reaches the config."""
    done = subprocess.run(
        [sys.executable, "-m", "wslifecycle.drivers.cli", "serve", "--port", "0",
         "--heartbeat-interval", "60", "--proxy-idle-timeout", "60"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "wslifecycle: configuration error: heartbeat_interval: must stay below"
        " proxy_idle_timeout (60.0 s) or the proxy reaps idle connections first, got 60.0\n"
    )
    args = cli.parser().parse_args(
        ["serve", "--heartbeat-interval", "25", "--proxy-idle-timeout", "60"]
    )
    assert cli.build_config(args).proxy_idle_timeout == 60.0


def test_trust_proxy_alone_trusts_loopback_and_takes_networks() -> None:
    def trusted(*flags: str) -> frozenset[str]:
        return cli.build_config(cli.parser().parse_args(["serve", *flags])).trusted_proxies

    assert trusted() == frozenset()
    assert trusted("--trust-proxy") == {"loopback"}
    assert trusted("--trust-proxy", "10.0.0.0/8", "--trust-proxy", "unix") == {"10.0.0.0/8", "unix"}


# ------------------------------------------------------------ listeners


def test_keyfile_without_certfile_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--keyfile", "key.pem"]) == 2
    assert capsys.readouterr().err == "wslifecycle: --keyfile needs --certfile\n"


def test_a_missing_certificate_is_one_line_naming_the_flag_and_file(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    missing = tmp_path / "missing.pem"
    assert cli.main(["serve", "--certfile", str(missing)]) == 2
    assert capsys.readouterr().err == (
        "wslifecycle: cannot use the certificate:"
        f" --certfile {missing}: No such file or directory\n"
    )


def test_a_certificate_that_is_not_pem_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate\n")
    assert cli.main(["serve", "--certfile", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wslifecycle: cannot use the certificate: ")
    assert err.count("\n") == 1


def test_unix_and_port_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parser().parse_args(["serve", "--unix", "/tmp/x.sock", "--port", "1"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_listen_options_follow_the_flags() -> None:
    """--unix replaces --port; --host stays only for --metrics-port."""

    def options(*argv: str) -> dict[str, object]:
        args = cli.parser().parse_args(["serve", *argv])
        args.ssl = None
        return cli.listen_options(args)

    assert options() == {"ssl": None, "metrics_port": None, "host": "127.0.0.1", "port": 8765}
    assert options("--unix", "/run/a.sock") == {
        "ssl": None,
        "metrics_port": None,
        "unix_path": "/run/a.sock",
    }
    assert options("--unix", "/run/a.sock", "--metrics-port", "9100", "--host", "::1") == {
        "ssl": None,
        "metrics_port": 9100,
        "unix_path": "/run/a.sock",
        "host": "::1",
    }


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, ssl.SSLContext]:
    """A certificate chain file with its key (trustme), and a client
    context that trusts it."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    path = tmp_path_factory.mktemp("tls") / "server.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(path))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return path, client


def run_cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wslifecycle.drivers", "serve", "--mode", "echo",
         "--allow-no-origin", "--log-level", "warning", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def stop(process: subprocess.Popen[str]) -> int:
    """SIGTERM, the exit status; nothing left running or open."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_serve_over_tls_with_a_metrics_port(
    driver: str, certificate: tuple[pathlib.Path, ssl.SSLContext]
) -> None:
    """--certfile: the banner says wss://, a wss client echoes; --metrics-port:
    a second line says where /metrics is, and it answers there."""
    path, client_context = certificate
    process = run_cli(
        "--driver", driver, "--port", "0", "--metrics-port", "0", "--certfile", str(path)
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.fullmatch(
            rf"wslifecycle: serving echo on wss://127\.0\.0\.1:(\d+) \(driver {driver}\)\n", banner
        )
        assert match, banner
        metrics = process.stdout.readline()
        found = re.fullmatch(
            r"wslifecycle: metrics on http://127\.0\.0\.1:(\d+)/metrics\n", metrics
        )
        assert found, metrics

        async def client() -> None:
            url = f"wss://127.0.0.1:{match[1]}/"
            async with websockets.connect(url, ssl=client_context) as ws:
                await ws.send("secret")
                assert await ws.recv() == "secret"

        asyncio.run(client())
        with socket.create_connection(("127.0.0.1", int(found[1])), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        assert stop(process) == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_serve_on_a_unix_socket(driver: str) -> None:
    """--unix: the banner names the socket; a client echoes; the file is gone
    after the drain."""
    with tempfile.TemporaryDirectory(prefix="wsl-") as directory:
        path = os.path.join(directory, "cli.sock")
        process = run_cli("--driver", driver, "--unix", path)
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert banner == f"wslifecycle: serving echo on ws+unix:{path} (driver {driver})\n"

            async def client() -> None:
                async with unix_connect(path, "ws://localhost/") as ws:
                    await ws.send("local")
                    assert await ws.recv() == "local"

            asyncio.run(client())
        finally:
            assert stop(process) == 0
        assert not os.path.exists(path)
