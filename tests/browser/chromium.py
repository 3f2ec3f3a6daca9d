"""Debian's headless Chromium for a test, driven by the ``playwright-core``
npm package through ``page.js``: one browser per test module, a fresh page
per ``goto``, commands and answers as JSON lines."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

__all__ = ["CHROMIUM", "Browser", "launched"]

HERE = pathlib.Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (bash .ci/setup)"
    return None


@contextmanager
def launched(tmp_path_factory: pytest.TempPathFactory, helpers: str = "") -> Iterator[Browser]:
    """A browser for a module-scoped fixture; skipped (failed under CI) when
    Chromium, node or playwright-core is missing."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI installs all of it: never skip there
        pytest.skip(missing)
    driver = Browser(tmp_path_factory.mktemp("chromium-profile"), helpers)
    try:
        yield driver
    finally:
        driver.close()


class Browser:
    """One Chromium; each ``goto`` opens a fresh page. ``helpers``: JavaScript
    declarations that ``wait`` and ``value`` expressions may use."""

    def __init__(self, user_data_dir: pathlib.Path, helpers: str = "") -> None:
        self.helpers = helpers
        self.process = subprocess.Popen(
            ["node", str(HERE / "page.js"), CHROMIUM, str(user_data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        self._answers: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        #: The page's console errors and warnings (a CSP violation among them).
        self.console: list[str] = []
        self._answer(30.0)  # Chromium is up

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _answer(self, timeout: float) -> Any:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the browser did not answer within {timeout} s") from None
        if answer is None:
            assert self.process.stderr is not None
            raise RuntimeError(f"the browser driver ended: {self.process.stderr.read()[-2000:]}")
        self.console.extend(answer["console"])
        if not answer["ok"]:
            raise AssertionError(f"browser: {answer['error']}")
        return answer.get("value")

    def do(self, op: str, within: float = 10.0, **fields: object) -> Any:
        """Run one command; its value (the answer must come ``within`` seconds)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self._answer(within)

    def wait(self, condition: str, timeout: float = 5.0) -> None:
        """Until ``condition`` (JavaScript, with the helpers) holds."""
        expression = f"(() => {{ {self.helpers} return {condition}; }})()"
        self.do("wait", timeout + 5, js=expression, timeout=int(timeout * 1000))

    def value(self, expression: str, within: float = 10.0) -> Any:
        """``expression``'s value (awaited if it is a promise)."""
        return self.do("eval", within, js=f"(() => {{ {self.helpers} return {expression}; }})()")

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.do("close", 15.0)
        finally:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self._reader.join(5)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
