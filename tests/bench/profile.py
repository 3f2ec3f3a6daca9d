"""Where a server's CPU goes under the cpu scenario's load: py-spy on its process.

    .venv/bin/pip install -e '.[bench]'      # py-spy (and uvloop)
    .venv/bin/python -m tests.bench.profile --server wsl-asyncio --connections 10000 \\
        --seconds 10 --out /tmp/profile

Starts the server as ``tests.bench.compare``'s cpu scenario does (pinned to
core 0, a 1 s heartbeat, the C load generator on core 1 answering every
ping), lets it warm up, then runs ``py-spy record --pid`` on it twice, each
for ``--seconds``: once ``--format raw`` (collapsed stacks, one line per
stack and its sample count) and once ``--format speedscope`` (open it at
speedscope.app). From the collapsed stacks it prints two tables: the 25
functions with the most self time (the innermost Python frame of a sample;
a C call such as ``socket.send`` is charged to the Python function that
made it), and self time by area, grouped by the function's file. py-spy
runs on core 1 beside the generators, so its sampling takes no time from
the server's core; py-spy pauses the process for each sample (100 a second),
which slows the server a little but not what each function's share is.

py-spy reads another process's memory: it needs ptrace permission over the
server (root, or the same user with kernel.yama.ptrace_scope 0, or
CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence

from tests.bench._gen import GeneratorPool, build_generator
from tests.bench._procs import GENERATOR_CPUS, Child, kill_all
from tests.bench._servers import SERVERS, Heartbeat, RunningServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOP = 25
# A raw frame, with --function and --full-filenames: "name (/path/file.py:12)".
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::\d+)?\)$")


def area(filename: str) -> str:
    """Which part of the stack a file belongs to."""
    path = pathlib.Path(filename)
    try:
        inside = path.resolve().relative_to(ROOT).parts
    except ValueError:
        inside = ()
    if inside[:1] == ("core",) or ("/wslifecycle/" in filename and "/drivers/" not in filename):
        return "wslifecycle core"
    if inside[:1] == ("drivers",) or "/wslifecycle/drivers/" in filename:
        return "wslifecycle drivers"
    if "/asyncio/" in filename or path.name in ("selectors.py", "socket.py", "ssl.py"):
        return "asyncio, selectors, sockets (the loop and its system calls)"
    return "other"


def self_time(lines: Iterable[str]) -> tuple[collections.Counter[tuple[str, str]], int]:
    """Samples by innermost frame (function, file), and the total."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        match = _FRAME.match(leaf)
        name, file = (match["name"], match["file"]) if match else (leaf, "?")
        counts[name, file] += int(count)
        total += int(count)
    return counts, total


def short(filename: str) -> str:
    path = pathlib.Path(filename)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        pass
    for marker in ("site-packages/", "/lib/python"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python" and "/" in tail else tail
    return filename


def tables(counts: collections.Counter[tuple[str, str]], total: int) -> str:
    lines = [
        f"Self time by function (top {TOP} of {len(counts)}; {total:,} samples):",
        "",
        "| % | function | file |",
        "|---:|---|---|",
    ]
    lines += [
        f"| {100 * n / total:.1f} | `{name}` | {short(file)} |"
        for (name, file), n in counts.most_common(TOP)
    ]
    by_area: collections.Counter[str] = collections.Counter()
    for (_, file), n in counts.items():
        by_area[area(file)] += n
    lines += ["", "Self time by area:", "", "| % | area |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | {name} |" for name, n in by_area.most_common()]
    return "\n".join(lines) + "\n"


def py_spy() -> str:
    beside = pathlib.Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    return found


def record(pid: int, seconds: float, fmt: str, out: pathlib.Path, workdir: pathlib.Path) -> None:
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}"]
    argv += ["--format", fmt, "--function", "--full-filenames", "--output", str(out)]
    # On core 1 with the generators: on core 0 it would take the server's time.
    child = Child(
        f"py-spy-{fmt}", argv, stderr_path=workdir / f"py-spy-{fmt}.stderr", cpus=GENERATOR_CPUS
    )
    child.proc.wait(timeout=seconds + 60)
    returncode = child.proc.returncode
    tail = child.stderr_tail()
    child.kill()
    if returncode != 0 or not out.exists():
        raise SystemExit(f"py-spy record failed ({returncode}): {tail}")


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(
        prog="python -m tests.bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys = [kind.key for kind in SERVERS if kind.needs != "node"]
    options.add_argument("--server", choices=keys, default="wsl-asyncio")
    options.add_argument("--connections", type=int, default=10_000)
    options.add_argument("--seconds", type=float, default=10.0, help="of each recording")
    options.add_argument("--interval", type=float, default=1.0, help="heartbeat (default 1 s)")
    options.add_argument("--warmup", type=float, default=3.0, help="before recording")
    options.add_argument("--out", type=pathlib.Path, required=True, help="directory")
    args = options.parse_args(argv)
    kind = next(k for k in SERVERS if k.key == args.server)
    reason = kind.missing()
    if reason is not None:
        raise SystemExit(f"{kind.key}: {reason}")
    py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{kind.key}-{args.connections}"
    raw, speedscope = args.out / f"{stem}.txt", args.out / f"{stem}.speedscope.json"
    with tempfile.TemporaryDirectory(prefix="wsl-profile-") as tmp:
        workdir = pathlib.Path(tmp)
        binary, _ = build_generator(workdir)
        server = RunningServer(kind, Heartbeat(args.interval), workdir, "profile")
        try:
            with GeneratorPool(binary, server.port, workdir, args.connections) as pool:
                connected = pool.connect(args.connections)
                print(
                    f"{kind.key}: {connected['ok']:,}/{args.connections:,} connected in "
                    f"{connected['seconds']:.1f} s; warming up {args.warmup:g} s",
                    file=sys.stderr,
                )
                time.sleep(args.warmup)
                c0, t0 = server.cpu(), time.monotonic()
                record(server.pid, args.seconds, "raw", raw, workdir)
                c1, t1 = server.cpu(), time.monotonic()
                record(server.pid, args.seconds, "speedscope", speedscope, workdir)
                alive = server.alive()
        finally:
            server.stop()
            kill_all()
    counts, total = self_time(raw.read_text().splitlines())
    if not total:
        raise SystemExit(f"py-spy recorded no samples in {raw}")
    report = (
        f"## py-spy profile of {kind.key}, {connected['ok']:,} connections, "
        f"{args.interval:g} s heartbeat\n\n"
        f"Server CPU while the collapsed stacks were recorded: "
        f"{100 * (c1 - c0) / (t1 - t0):.0f} % of one core over {t1 - t0:.1f} s"
        + ("" if alive else " (the server EXITED during the profile)")
        + f". Collapsed stacks: {raw}; speedscope: {speedscope}.\n\n"
        + tables(counts, total)
    )
    print(report)
    (args.out / f"{stem}.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
