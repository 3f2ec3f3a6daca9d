"""The operator's page in a real browser: Debian's headless Chromium, driven
by the ``playwright-core`` npm package (tests/browser/page.js), loads
``/dashboard`` from ``wslifecycle serve --dashboard`` on each driver, and its
numbers follow clients that come and go, a stall of the server and a refused
origin. A screenshot of each run is kept (its path is printed)."""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.browser.chromium import Browser, launched
from tests.drivers.harness import cli_server

HERE = pathlib.Path(__file__).resolve().parent
#: Screenshots land here too (git-ignored), to look at after a run.
ARTIFACTS = HERE / "artifacts"
DRIVERS = ("asyncio", "selector", "trio")
INTERVAL = 0.5  # heartbeat interval: RTTs show up within a second
FOREIGN = Origin("https://evil.example")


#: Helpers for the conditions: what the operator reads on the page.
JS = """
const text = (selector) => document.querySelector(selector)?.textContent ?? null;
const number = (selector) => Number((text(selector) || "NaN").replaceAll(",", ""));
const live = () => document.querySelector("#status").classList.contains("live");
const members = (channel) => text(`#channels tr[data-channel="${channel}"] td.members`);
const legend = () => text("#legend") || "";
const alertRows = () => document.querySelectorAll("#alerts tbody tr").length;
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with launched(tmp_path_factory, JS) as driver:
        yield driver


@contextmanager
def served(driver: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``wslifecycle serve --dashboard`` on a free port; SIGTERM drains it."""
    flags = ("--dashboard", "--allow-no-origin", "--heartbeat-interval", str(INTERVAL))
    with cli_server(driver, *flags) as served_process:
        yield served_process


def stall(process: subprocess.Popen[str], seconds: float) -> None:
    """Hold the server stopped (SIGSTOP) for ``seconds``: its timer fires late."""
    stopped = time.monotonic()
    process.send_signal(signal.SIGSTOP)
    try:
        while time.monotonic() - stopped < seconds:
            time.sleep(seconds / 10)
    finally:
        process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_page_follows_clients_as_they_come_and_go(
    driver: str, browser: Browser, tmp_path: pathlib.Path
) -> None:
    """The page loads without a CSP complaint and goes live; three clients
    (one subscribed to "room") show as active connections and a channel
    with one member; a stall shows as an alert; when they leave, the numbers
    go back down and their closes are counted by cause."""
    started = time.monotonic()
    with served(driver) as (process, port), ExitStack() as clients:
        browser.console.clear()
        loaded = browser.do("goto", url=f"http://127.0.0.1:{port}/dashboard")
        assert loaded["status"] == 200
        browser.wait("live() && text('#active') === '1'")  # the page's own feed

        # A client that came and went, and one refused for its Origin.
        with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=5):
            pass
        with (
            pytest.raises(InvalidStatus) as refused,
            connect(f"ws://127.0.0.1:{port}/chat", origin=FOREIGN, open_timeout=5),
        ):
            pass
        assert refused.value.response.status_code == 403

        opened: list[ClientConnection] = [
            clients.enter_context(connect(f"ws://127.0.0.1:{port}/chat", open_timeout=5))
            for _ in range(3)
        ]
        opened[0].send(json.dumps({"type": "subscribe", "channel": "room"}))
        answer = json.loads(opened[0].recv(timeout=5))
        assert (answer["type"], answer["channel"], answer["seq"]) == ("subscribed", "room", 0)
        browser.wait("number('#active') >= 4 && members('room') === '1'")
        browser.wait("text('#rtt-median') !== '–' && number('#rtt-waiting') === 0", 5)
        stall(process, 3 * INTERVAL)
        browser.wait("live() && alertRows() >= 1 && text('#alerts').includes('loop stall')")
        browser.wait("legend().includes('peer close') && legend().includes('origin rejected')", 8)

        ARTIFACTS.mkdir(exist_ok=True)
        for scheme in ("light", "dark"):
            name = f"dashboard-{driver}-{scheme}.png"
            picture = browser.do("screenshot", path=str(tmp_path / name), scheme=scheme)
            kept = ARTIFACTS / ("dashboard.png" if name == "dashboard-asyncio-light.png" else name)
            shutil.copyfile(picture, kept)
            print(f"\n[{driver}] screenshot: {picture} (and {kept})")

        clients.close()  # the three leave
        browser.wait("text('#active') === '1' && members('room') === null", 5)
        assert browser.value("text('#channel-count')") == "0"
        # Checked while the server runs: once it stops, the page's feed
        # retrying a closed port is its own business, not a fault.
        assert not browser.console, browser.console
    assert time.monotonic() - started < 30
