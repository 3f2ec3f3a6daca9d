"""Scenario 8 of the side-by-side benchmark: Autobahn|Testsuite category 9.

Category 9 is Autobahn's performance category: text and binary messages up
to 16 MiB (9.1, 9.2), a 4 MiB message in fragments of 64 bytes to 4 MiB
(9.3, 9.4), a 1 MiB message written in chops of 64 bytes to 64 KiB (9.5,
9.6), and 1,000 round trips of messages of 0 bytes to 16 KiB (9.7, 9.8).
The fuzzing client is the ``kosoku`` package (the one the conformance test
``tests/drivers/test_autobahn.py`` runs); it times each case itself and
writes ``index.json`` with every case's verdict and ``duration`` (ms), and
one report per case with the frames it sent (``txFrameStats``).

Each server starts fresh, in echo mode, with its message caps raised for
16 MiB messages; only this scenario raises them (the flags below), every
server's default stays its own. The heartbeat is hourly: Autobahn counts a
ping inside a case as an unexpected frame. Every run is repeated
``runs`` times, each on a fresh server, and each case's median duration is
what the rows add up.

Rows: one per case group (9.1-9.8) with its time and every verdict other
than OK, the total of all 54 cases (its ratio to websockets' total is the
asyncio driver's target, ≤ 0.8×), and the cost per frame of the
many-fragment messages: duration / data frames sent, for the text and the
binary case with the most frames (9.3.1 and 9.4.1: 4 MiB in 64-byte
fragments, 65,536 frames), against an absolute 10 µs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import resource
import statistics
import sys
import time
from typing import Any, NamedTuple

from tests.bench._procs import GENERATOR_CPUS, Child
from tests.bench._servers import Heartbeat, RunningServer, ServerKind

__all__ = ["FRAME_TARGET_US", "AutobahnRow", "autobahn_rows"]

KOSOKU = pathlib.Path(sys.executable).parent / "kosoku"
MiB = 1024 * 1024
FRAME_TARGET_US = 10.0
# The most frames any category 9 case sends in one message (9.3.1, 9.4.1).
MOST_FRAMES = 65_536
TIMEOUT = 600.0  # one kosoku run over 9.*: ~10 s on wslifecycle here

GROUPS = {
    "9.1": "text messages, 64 KiB to 16 MiB",
    "9.2": "binary messages, 64 KiB to 16 MiB",
    "9.3": "4 MiB text in 64 B to 4 MiB fragments",
    "9.4": "4 MiB binary in 64 B to 4 MiB fragments",
    "9.5": "1 MiB text written in 64 B to 64 KiB chops",
    "9.6": "1 MiB binary written in 64 B to 64 KiB chops",
    "9.7": "1,000 text round trips, 0 B to 16 KiB",
    "9.8": "1,000 binary round trips, 0 B to 16 KiB",
}


class AutobahnRow(NamedTuple):
    """The fields of the benchmark's table row, in its order."""

    key: str
    scenario: str
    server: str
    result: str
    server_cpu: str = "–"
    generator_cpu: str = "–"
    value: float | None = None
    check: tuple[bool, str] | None = None


@dataclasses.dataclass
class Case:
    durations: list[float]  # ms, one per run
    verdicts: list[str]  # "OK", or "behavior/behaviorClose", one per run
    frames: int  # data frames the client sent in the message

    @property
    def ms(self) -> float:
        return statistics.median(self.durations)


def _caps(kind: ServerKind, hb: Heartbeat) -> tuple[list[str], str]:
    """The server's own command line, with the caps raised for 16 MiB messages."""
    argv, settings = kind.build(hb)
    if kind.key.startswith("wsl-"):
        argv += ["--mode", "echo", "--max-message-size", str(16 * MiB)]
        argv += ["--max-fragments", str(MOST_FRAMES)]
    elif kind.key == "websockets":
        argv += ["--max-size", str(16 * MiB), "--max-fragments", str(MOST_FRAMES)]
    elif kind.key == "aiohttp":
        argv += ["--max-msg-size", str(16 * MiB + 1)]  # its cap is exclusive
    elif kind.key == "node-ws":
        argv += ["--max-payload", str(16 * MiB), "--max-fragments", str(MOST_FRAMES)]
    return argv, settings + ", caps 16 MiB"


def _run_once(
    kind: ServerKind, workdir: pathlib.Path, run: int
) -> tuple[dict[str, dict[str, Any]], float, float, float]:
    """One fresh server, one kosoku run over 9.*: (index of the reports,
    wall seconds, server CPU seconds, kosoku CPU seconds)."""
    capped = dataclasses.replace(kind, build=lambda hb: _caps(kind, hb))
    server = RunningServer(capped, Heartbeat(3600.0), workdir, f"autobahn{run}")
    outdir = workdir / f"autobahn-{kind.key}-{run}"
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        c0, t0 = server.cpu(), time.monotonic()
        client = Child(
            "kosoku",
            [str(KOSOKU), f"127.0.0.1:{server.port}", "-i", "9.*", "-p", "1", "-o", str(outdir)],
            stderr_path=workdir / f"kosoku-{kind.key}-{run}.stderr",
            cpus=GENERATOR_CPUS,
        )
        try:
            client.proc.wait(TIMEOUT)
        finally:
            c1, t1 = server.cpu(), time.monotonic()
            client.kill()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        server.stop()
    index = json.loads((outdir / "index.json").read_text())
    (reports,) = index.values()
    for case in reports.values():
        sent = json.loads((outdir / case["reportfile"]).read_text()).get("txFrameStats") or {}
        case["frames"] = sum(n for opcode, n in sent.items() if int(opcode) < 8)
    kosoku_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return reports, t1 - t0, c1 - c0, kosoku_cpu


def _number(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def autobahn_rows(kind: ServerKind, workdir: pathlib.Path, runs: int = 3) -> list[AutobahnRow]:
    """Scenario 8 on one server (see the module docstring)."""
    title = "8. Autobahn category 9"
    if not KOSOKU.exists():
        return [AutobahnRow("autobahn-0", title, kind.key, "not measured: kosoku is not installed")]
    cases: dict[str, Case] = {}
    wall = server_cpu = client_cpu = 0.0
    for run in range(runs):
        reports, seconds, cpu, kosoku_cpu = _run_once(kind, workdir, run)
        wall, server_cpu, client_cpu = wall + seconds, server_cpu + cpu, client_cpu + kosoku_cpu
        for name, report in reports.items():
            case = cases.setdefault(name, Case([], [], report["frames"]))
            case.durations.append(float(report["duration"]))
            verdict = f"{report['behavior']}/{report['behaviorClose']}"
            case.verdicts.append("OK" if verdict == "OK/OK" else verdict)
    cpu_cells = (f"{100 * server_cpu / wall:.0f} %", f"{100 * client_cpu / wall:.0f} %")
    ordered = sorted(cases, key=_number)
    runs_note = f"median of {runs} runs" if runs > 1 else "one run"

    def not_ok(names: list[str]) -> list[str]:
        return [
            f"{name} {'/'.join(sorted({v for v in cases[name].verdicts if v != 'OK'}))}"
            for name in names
            if any(v != "OK" for v in cases[name].verdicts)
        ]

    rows = []
    bad = not_ok(ordered)
    total = sum(cases[name].ms for name in ordered)
    rows.append(
        AutobahnRow(
            "autobahn-0",
            f"{title}: all cases, total time ({runs_note} each)",
            kind.key,
            f"{total / 1000:.2f} s for {len(ordered)} cases; "
            + (f"NOT OK: {', '.join(bad)}" if bad else f"{len(ordered)} OK"),
            *cpu_cells,
            total,
            (not bad and len(ordered) == 54, "every case OK"),
        )
    )
    for group, what in GROUPS.items():
        names = [name for name in ordered if name.startswith(group + ".")]
        if not names:
            continue
        ms = sum(cases[name].ms for name in names)
        slowest = max(names, key=lambda name: cases[name].ms)
        bad = not_ok(names)
        rows.append(
            AutobahnRow(
                f"autobahn-{group[2:]}",
                f"8. Autobahn {group}: {what}",
                kind.key,
                f"{ms / 1000:.2f} s ({len(names)} cases, slowest {slowest} "
                f"{cases[slowest].ms / 1000:.2f} s)"
                + (f"; NOT OK: {', '.join(bad)}" if bad else ""),
                value=ms,
            )
        )
    picked = []
    for group in ("9.3.", "9.4."):  # text, binary: the case with the most frames
        names = [name for name in ordered if name.startswith(group) and cases[name].frames]
        if names:
            picked.append(max(names, key=lambda name: cases[name].frames))
    if picked:
        per_frame = {name: 1000 * cases[name].ms / cases[name].frames for name in picked}
        worst = max(per_frame.values())
        rows.append(
            AutobahnRow(
                "autobahn-9",
                "8. Autobahn 9.3/9.4: one many-fragment message, time per frame",
                kind.key,
                "; ".join(
                    f"{name}: {per_frame[name]:.1f} µs/frame "
                    f"({cases[name].frames:,} frames in {cases[name].ms:.0f} ms)"
                    for name in picked
                ),
                value=worst,
                check=(worst <= FRAME_TARGET_US, f"≤ {FRAME_TARGET_US:g} µs per frame"),
            )
        )
    return rows
