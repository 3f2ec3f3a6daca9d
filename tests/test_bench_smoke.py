"""Smoke test of the side-by-side benchmark: ``--quick`` on the
asyncio driver alone (no competitors) produces the table with a row for
every scenario. The numbers are not checked: this proves the command runs,
stops by itself and cleans up, not how fast anything is."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_of_the_asyncio_driver(tmp_path: pathlib.Path) -> None:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("the benchmark's load generator needs a C compiler")
    out = tmp_path / "compare.md"
    command = [sys.executable, "-m", "tests.bench.compare", "--quick", "--servers", "wsl-asyncio"]
    run = subprocess.run(
        [*command, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert table in run.stdout
    assert "| scenario | server | result |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "wsl-asyncio" in line]
    for number in range(1, 8):
        assert any(row.startswith(f"| {number}. ") for row in rows), f"no row for scenario {number}"
    assert any(row.startswith("| overload") for row in rows)
    assert "FAILED" not in table
    assert "Versions: Python" in table
