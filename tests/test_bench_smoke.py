"""Smoke tests of the benchmarks: the side-by-side one's ``--quick`` on the
asyncio driver alone (no competitors) produces the table with a row for
every scenario; the fleet one's ``--quick`` produces its table. The numbers
are not checked: this proves the commands run, stop by themselves and clean
up, not how fast anything is."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.fleet.redis_server import find_redis_server

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
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert table in run.stdout
    assert "| scenario | server | result |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "wsl-asyncio" in line]
    for number in range(1, 9):
        assert any(row.startswith(f"| {number}. ") for row in rows), f"no row for scenario {number}"
    assert any(row.startswith("| overload") for row in rows)
    assert "FAILED" not in table
    assert "Versions: Python" in table


@pytest.mark.slow
def test_quick_fleet_benchmark(tmp_path: pathlib.Path) -> None:
    """``tests.bench.fleet --quick``: two nodes on a redis-server and one node
    in memory, each through its three phases, into a table. No number is checked."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("the benchmark's load generator needs a C compiler")
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (bash .ci/setup installs it)")
    out = tmp_path / "fleet.md"
    run = subprocess.run(
        [sys.executable, "-m", "tests.bench.fleet", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert table in run.stdout
    assert "| setup | phase | offered deliveries/s |" in table
    for setup in ("fleet", "one node"):
        for phase in ("throughput", "half of it", "half the goal"):
            assert any(line.startswith(f"| {setup} | {phase} | ") for line in table.splitlines())
    assert "terminations" in table
