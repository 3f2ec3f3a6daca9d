"""The command line's own behaviour (serving is in test_conformance.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import io
import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

import pytest
import trustme
import websockets
from websockets.asyncio.client import unix_connect

import wslifecycle
from tests.drivers.harness import open_fds, reap
from wslifecycle import Config
from wslifecycle.drivers import _run_asyncio, cli

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


def test_a_bad_value_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration error is one line naming the flag and the reason
    (other flags it mentions spelled as flags too); exit 2."""
    assert cli.main(["serve", "--inbox-high-water", "4", "--inbox-low-water", "4"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "wslifecycle: configuration error: --inbox-low-water: must be below"
        " --inbox-high-water (4), got 4\n"
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
        "wslifecycle: configuration error: --heartbeat-interval: must stay below"
        " --proxy-idle-timeout (60.0 s) or the proxy reaps idle connections first, got 60.0\n"
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


def serve_cli(*argv: str) -> subprocess.Popen[str]:
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
        reap(process)


@pytest.mark.parametrize("driver", DRIVERS)
def test_serve_over_tls_with_a_metrics_port(
    driver: str, certificate: tuple[pathlib.Path, ssl.SSLContext]
) -> None:
    """--certfile: the banner says wss://, a wss client echoes; --metrics-port:
    a second line says where /metrics is, and it answers there."""
    path, client_context = certificate
    process = serve_cli(
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
        process = serve_cli("--driver", driver, "--unix", path)
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


# ------------------------------------------------------- one line, no traceback


def run_cli(*argv: str, prelude: str = "", timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``wslifecycle`` in a subprocess of its own. ``prelude`` runs first, in
    that interpreter (to make an optional dependency missing for real)."""
    code = f"{prelude}\nfrom wslifecycle.drivers.cli import main\nraise SystemExit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused argument must stop main() before any driver starts: reaching
    one fails the test instead of serving on a real port until killed."""

    def refuse(driver: str) -> object:
        raise AssertionError(f"main() went on to start the {driver} driver")

    monkeypatch.setattr(cli, "_runner", refuse)


def one_line(stderr: str) -> str:
    """The only line on stderr (and never a traceback)."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_port_out_of_range_is_one_line_and_exit_2(driver: str) -> None:
    """--port 99999 is refused before anything starts, on every driver
    (not a traceback, and not a port Trio picks modulo 65536)."""
    done = run_cli("serve", "--driver", driver, "--port", "99999")
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        "wslifecycle serve: error: argument --port: must be 0..65535, got 99999"
        " (see wslifecycle serve --help)"
    )
    assert done.stdout == ""


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_port_in_use_is_one_line_and_exit_1(driver: str) -> None:
    """Binding fails: one line naming the address and the OS error, exit 1,
    and the process ends (no thread or task left running)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli("serve", "--driver", driver, "--port", str(port))
    assert done.returncode == 1
    reason = f"[Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}"
    assert one_line(done.stderr) == f"wslifecycle: cannot listen on 127.0.0.1:{port}: {reason}"
    assert done.stdout == ""


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_failed_listen_leaves_nothing_behind(
    driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process, the same failure leaks no thread and no descriptor."""
    if driver == "asyncio" and UVLOOP:
        # uvloop's first loop in a process keeps two descriptors for the
        # process's life (libuv's own); they are not this server's.
        with asyncio.Runner(loop_factory=_run_asyncio.loop_factory("auto")) as runner:
            runner.run(asyncio.sleep(0))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        threads, fds = threading.active_count(), open_fds()
        assert cli.main(["serve", "--driver", driver, "--port", str(port)]) == 1
        assert (threading.active_count(), open_fds()) == (threads, fds)
    assert one_line(capsys.readouterr().err).startswith("wslifecycle: cannot listen on ")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--port", "-1"], "--port"),
        (["--port", "http"], "--port"),
        (["--workers", "0"], "--workers"),
        (["--workers", "-3"], "--workers"),
        (["--max-message-size", "1.5"], "--max-message-size"),
        (["--heartbeat-interval", "soon"], "--heartbeat-interval"),
        (["--log-level", "loud"], "--log-level"),
        (["--driver", "gevent"], "--driver"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
@pytest.mark.usefixtures("no_serving")
def test_a_malformed_argument_is_one_line_and_exit_2(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's refusals name the flag on one line (no usage block)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", *argv])
    assert exit_.value.code == 2
    assert flag in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--heartbeat-interval", "0"],
            "--heartbeat-interval: must be a finite number above 0, got 0.0",
        ),
        (["--max-missed-pongs", "0"], "--max-missed-pongs: must be at least 1, got 0"),
        (["--max-connections", "0"], "--max-connections: must be at least 1, got 0"),
        (["--drain-timeout", "nan"], "--drain-timeout: must be a finite number above 0, got nan"),
        (
            ["--heartbeat-interval", "1", "--stall-threshold", "2"],
            "--stall-threshold: must be below --heartbeat-interval (1.0 s), got 2.0",
        ),
        (
            ["--allow-origin", "example.com"],
            "--allow-origin: each origin must look like 'https://host[:port]', got 'example.com'",
        ),
    ],
)
@pytest.mark.usefixtures("no_serving")
def test_a_value_the_config_refuses_names_the_flag(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Config's checks say which flag to change, in the flag's own spelling."""
    assert cli.main(["serve", *argv]) == 2
    assert one_line(capsys.readouterr().err) == f"wslifecycle: configuration error: {expected}"


def test_the_log_level_is_case_insensitive() -> None:
    """--log-level DEBUG is what people type after reading Python's docs."""
    assert cli.parser().parse_args(["serve", "--log-level", "DEBUG"]).log_level == "debug"


# ------------------------------------------------------ help and defaults


def option_help(flag: str) -> str:
    """What ``wslifecycle serve --help`` says about ``flag``, whitespace
    folded (argparse wraps it)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    options = " ".join(text.getvalue().split()).partition(" options: ")[2]
    for entry in re.split(r" (?=--[a-z-]+ )", options):
        if entry.startswith(f"{flag} "):
            return entry
    raise AssertionError(f"{flag} is not in the help")


@pytest.mark.parametrize(
    ("flag", "effective"),
    [
        ("--timer-slack", "effective_timer_slack"),
        ("--stall-threshold", "effective_stall_threshold"),
    ],
)
def test_a_computed_default_in_the_help_is_the_configs(flag: str, effective: str) -> None:
    """The help's formula, evaluated, gives what Config computes when the
    flag is left out, for short and long intervals."""
    found = re.search(r"\(default: min\(interval/([\d.]+), ([\d.]+)\)\)", option_help(flag))
    assert found is not None, f"{flag}'s help names no default"
    divisor, cap = float(found[1]), float(found[2])
    for interval in (0.1, 0.4, 1.0, 30.0, 120.0):
        computed = getattr(Config(heartbeat_interval=interval), effective)
        assert min(interval / divisor, cap) == pytest.approx(computed), interval


def test_the_flags_defaults_are_the_configs() -> None:
    """Leaving every flag out gives Config(); each numeric flag's help
    shows the default it will get."""
    assert cli.build_config(cli.parser().parse_args(["serve"])) == Config()
    for flag, field in (
        ("--heartbeat-interval", "heartbeat_interval"),
        ("--max-missed-pongs", "max_missed_pongs"),
        ("--max-message-size", "max_message_size"),
        ("--handshake-timeout", "handshake_timeout"),
        ("--drain-timeout", "drain_timeout"),
    ):
        assert f"(default: {getattr(Config(), field)})" in option_help(flag)


# ------------------------------------------------ optional dependencies

NO_TRIO = "import sys; sys.modules['trio'] = None  # as if trio were not installed"
TRIO_HINT = "pip install 'wslifecycle[trio]'"


def test_driver_trio_without_trio_names_the_extra() -> None:
    """--driver trio with trio missing: the pip command, one line, exit 2."""
    done = run_cli("serve", "--driver", "trio", prelude=NO_TRIO)
    assert done.returncode == 2
    assert one_line(done.stderr) == f"wslifecycle: --driver trio needs trio: {TRIO_HINT}"


def test_importing_the_trio_driver_without_trio_names_the_extra() -> None:
    """The ImportError a library user sees says what to install."""
    code = f"{NO_TRIO}\nimport wslifecycle.drivers.trio"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("ImportError: ")
    assert TRIO_HINT in last


UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize("loop", ["auto", "asyncio", "uvloop"])
def test_the_asyncio_driver_logs_its_event_loop(loop: str) -> None:
    """--loop auto takes uvloop when it is installed; the log says which
    loop runs and who reads a plain socket; --loop uvloop without uvloop
    exits 2 saying how to get it."""
    if loop == "uvloop" and not UVLOOP:
        done = subprocess.run(
            [sys.executable, "-m", "wslifecycle.drivers", "serve", "--port", "0",
             "--loop", "uvloop"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert "pip install uvloop" in done.stderr
        return
    process = serve_cli("--port", "0", "--loop", loop, "--log-level", "info")
    assert process.stdout is not None
    assert "(driver asyncio)" in process.stdout.readline()
    process.terminate()
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0
    uses_uvloop = loop == "uvloop" or (loop == "auto" and UVLOOP)
    expected = "event loop: uvloop" if uses_uvloop else "event loop: asyncio's standard loop"
    assert expected in stderr
    # Who reads a plain socket: the poller on the standard loop, transports on uvloop.
    reader = "sockets read by asyncio transports" if uses_uvloop else "plain sockets read by one"
    assert reader in stderr
