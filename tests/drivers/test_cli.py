"""The command line's own behaviour (serving is in test_conformance.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import wslifecycle
from wslifecycle.drivers import cli


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
