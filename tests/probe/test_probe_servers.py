"""``wslifecycle probe`` against real servers, each in a process of its
own: wslifecycle's, websockets' and the Node ws seed pattern. Each run is
a few seconds: interval 0.5 s, silent after 1 s."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.probe.servers import (
    node_ws_missing,
    node_ws_server,
    probe_json,
    running,
    websockets_server,
    wsl_serve,
)
from wslifecycle import Config

INTERVAL = 0.5
#: The server's nominal bound, (max_missed + 1) × interval, plus 1 s for
#: the timer slack and the loops' lag on both sides.
BOUND = Config(heartbeat_interval=INTERVAL, max_missed_pongs=2).detection_bound + 1.0
CLIENTS = ("--healthy", "20", "--silent", "10", "--after", "1")


def near_interval(spread: dict[str, float] | None) -> None:
    """Pings every 0.5 s, as the healthy clients saw them (a loaded machine
    may delay one, never make them all early)."""
    assert spread is not None, "the healthy clients saw no ping"
    assert spread["median"] == pytest.approx(INTERVAL, abs=0.06)
    assert spread["min"] > 0.3


def test_wslifecycle_serve_meets_its_bound(tmp_path: pathlib.Path) -> None:
    """Every silent client is terminated within the bound of its last pong
    (the server drops them: RST); no healthy client is closed; the probe
    closes the healthy ones with 1000 at the end."""
    server = wsl_serve(
        "--heartbeat-interval", str(INTERVAL), "--max-missed-pongs", "2", "--allow-no-origin"
    )
    with running(server, tmp_path) as port:
        status, report = probe_json(
            f"ws://127.0.0.1:{port}/", *CLIENTS, "--expect-bound", str(BOUND)
        )
    assert (status, report["passed"], report["failures"]) == (0, True, [])
    near_interval(report["pings"]["interval"])
    assert report["heartbeats"]["seen"] == 0
    silent = report["silent"]
    assert (silent["clients"], silent["terminated"], silent["still_open"]) == (10, 10, 0)
    assert silent["close_codes"] == {"RST": 10}
    # Not before the server could know (two probes missed), not after the bound.
    assert 2 * INTERVAL < silent["detection"]["p50"] <= silent["detection"]["max"] <= BOUND
    assert report["healthy"] == {"clients": 20, "closed": 0, "close_codes": {}}
    assert report["closed_by_probe"] == {"clean": 20, "dropped": 0}


def test_a_server_that_never_pings_fails_the_bound(tmp_path: pathlib.Path) -> None:
    """A heartbeat interval far beyond the run: no ping, no termination,
    so the silent clients outlive the bound: exit 1."""
    server = wsl_serve("--heartbeat-interval", "3600", "--allow-no-origin")
    with running(server, tmp_path) as port:
        status, report = probe_json(
            f"ws://127.0.0.1:{port}/",
            *("--healthy", "3", "--silent", "3", "--after", "0.2", "--expect-bound", "1"),
        )
    assert (status, report["passed"]) == (1, False)
    assert report["pings"] == {"seen": 0, "interval": None}
    silent = report["silent"]
    assert (silent["terminated"], silent["still_open"], silent["detection"]) == (0, 3, None)
    assert silent["still_open_since_last_answer"] > 1
    assert report["failures"] == [
        f"3 silent client(s) still open {silent['still_open_since_last_answer']:.3f} s after"
        " their last answer (bound 1 s)"
    ]
    assert report["closed_by_probe"] == {"clean": 6, "dropped": 0}


def test_a_reader_that_leaves_early_gets_the_exit_status_and_no_traceback(
    tmp_path: pathlib.Path,
) -> None:
    """``probe ... --json | head -1``: the pipe closes before the report is
    written; the probe still exits with its verdict, quietly."""
    server = wsl_serve("--heartbeat-interval", "3600", "--allow-no-origin")
    with running(server, tmp_path) as port:
        read, write = os.pipe()
        os.close(read)  # nobody will read the report
        url = f"ws://127.0.0.1:{port}/"
        flags = ["--healthy", "1", "--silent", "1", "--after", "0.1", "--expect-bound", "0.5"]
        done = subprocess.run(
            [sys.executable, "-m", "wslifecycle.drivers", "probe", url, *flags],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
        os.close(write)
    assert done.returncode == 1
    assert done.stderr == ""


def test_application_heartbeats_are_echoed_and_counted(tmp_path: pathlib.Path) -> None:
    """--heartbeat-mode application: no ping, a JSON heartbeat every 0.5 s
    that healthy clients echo and silent ones do not."""
    server = wsl_serve(
        "--heartbeat-interval", str(INTERVAL), "--heartbeat-mode", "application",
        "--allow-no-origin",
    )  # fmt: skip
    with running(server, tmp_path) as port:
        status, report = probe_json(
            f"ws://127.0.0.1:{port}/",
            *("--healthy", "4", "--silent", "4", "--after", "1", "--expect-bound", str(BOUND)),
        )
    assert (status, report["pings"]["interval"]) == (0, None)
    near_interval(report["heartbeats"]["interval"])
    assert (report["silent"]["terminated"], report["healthy"]["closed"]) == (4, 0)


def test_the_websockets_server(tmp_path: pathlib.Path) -> None:
    """websockets' keepalive (ping_interval 0.5, ping_timeout 1: the same
    nominal window) closes each silent client with 1011."""
    with running(websockets_server(INTERVAL, 2 * INTERVAL), tmp_path) as port:
        status, report = probe_json(
            f"ws://127.0.0.1:{port}/", *CLIENTS, "--expect-bound", str(BOUND)
        )
    assert (status, report["failures"]) == (0, [])
    near_interval(report["pings"]["interval"])
    silent = report["silent"]
    assert (silent["terminated"], silent["close_codes"]) == (10, {"1011": 10})
    assert report["healthy"]["closed"] == 0


def test_the_node_ws_seed_pattern(tmp_path: pathlib.Path) -> None:
    """The ws README's pattern (one shared setInterval; a socket whose pong
    from the previous round did not come is terminated): a FIN, no close
    frame, after two rounds."""
    missing = node_ws_missing()
    if missing is not None:
        pytest.skip(missing)
    argv, env = node_ws_server(round(INTERVAL * 1000))
    with running(argv, tmp_path, env) as port:
        status, report = probe_json(f"ws://127.0.0.1:{port}/", *CLIENTS)
    assert (status, report["passed"]) == (0, None)  # no --expect-bound: a report only
    near_interval(report["pings"]["interval"])
    silent = report["silent"]
    assert (silent["terminated"], silent["close_codes"]) == (10, {"EOF": 10})
    assert silent["detection"]["max"] < 3 * INTERVAL + 0.5
    assert report["healthy"]["closed"] == 0
