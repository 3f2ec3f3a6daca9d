"""Regression alarm: the asyncio driver against websockets, short and generous.

    .venv/bin/python -m tests.bench.alarm      # ~1 minute; CI runs it after the tests

Two of tests.bench.compare's scenarios, small: CPU per ping/pong (2,000
connections pinged every 0.5 s, a 3 s window) and idle memory per connection
(2,500 connections), each on ``wsl-asyncio`` and then on ``websockets``, one
fresh server at a time. It exits 1 when the asyncio driver costs more than
half of websockets' in either. The bounds are far above today's figures
(docs/benchmarks.md): this catches a regression, it is not the target. A
measurement over its bound is tried again, up to :data:`TRIES` times in all,
and fails only if every try does; every try is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from tests.bench import compare
from tests.bench._gen import build_generator
from tests.bench._procs import kill_all
from tests.bench._servers import SERVERS, ServerKind

BOUND = 0.5  # the asyncio driver's figure over websockets', in both measures
TRIES = 3
CPU_CONNECTIONS = 2_000

PLAN = dataclasses.replace(
    compare.QUICK,
    name="alarm",
    memory_connections=2_500,
    settle=1.0,
    cpu_counts=(CPU_CONNECTIONS,),
    cpu_warmup=1.5,
    cpu_window=3.0,
    overload_window=3.0,
    interval=0.5,
)


@dataclasses.dataclass(frozen=True)
class Measure:
    name: str
    key: str  # the compare row it reads
    run: Callable[[compare.Context, ServerKind], list[compare.Row]]
    unit: Callable[[float], str]


MEASURES = (
    Measure(
        f"CPU per ping/pong, {CPU_CONNECTIONS:,} connections, {PLAN.interval:g} s interval",
        f"cpu-{CPU_CONNECTIONS}",
        lambda ctx, kind: compare.scenario_cpu(ctx, kind, PLAN.cpu_counts),
        compare.micro,
    ),
    Measure(
        f"idle memory per connection, {PLAN.memory_connections:,} connections",
        "memory",
        compare.scenario_memory,
        compare.kib,
    ),
)


def kind(key: str) -> ServerKind:
    return next(k for k in SERVERS if k.key == key)


def value(ctx: compare.Context, server: ServerKind, measure: Measure) -> float:
    rows = [row for row in measure.run(ctx, server) if row.key == measure.key]
    if not rows or rows[0].value is None:
        raise RuntimeError(f"{server.key}: no {measure.key} figure")
    return rows[0].value


def one_try(ctx: compare.Context, measure: Measure, bound: float) -> tuple[bool, str]:
    """(within the bound?, what this try measured)."""
    try:
        ours = value(ctx, kind("wsl-asyncio"), measure)
        theirs = value(ctx, kind("websockets"), measure)
    except Exception as error:  # a server that would not start, a generator that gave up
        return False, f"failed: {error}"
    ratio = ours / theirs if theirs else float("nan")
    within = ratio <= bound  # False for NaN (no pongs counted)
    return within, (
        f"wsl-asyncio {measure.unit(ours)} vs websockets {measure.unit(theirs)}: "
        f"{ratio:.2f}× ({'within' if within else 'OVER'} ≤ {bound:g}×)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(
        prog="python -m tests.bench.alarm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_argument("--tries", type=int, default=TRIES, help="per measure (default 3)")
    options.add_argument(
        "--bound", type=float, default=BOUND, help="the largest ratio allowed (default 0.5)"
    )
    args = options.parse_args(argv)
    for key in ("wsl-asyncio", "websockets"):
        reason = kind(key).missing()
        if reason is not None:
            print(f"benchmark alarm: cannot run: {key}: {reason}", flush=True)
            return 2
    failed = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wsl-alarm-") as tmp:
        workdir = pathlib.Path(tmp)
        binary, _ = build_generator(workdir)
        ctx = compare.Context(PLAN, binary, workdir, deadline=float("inf"))
        try:
            for measure in MEASURES:
                for attempt in range(1, args.tries + 1):
                    within, said = one_try(ctx, measure, args.bound)
                    print(f"{measure.name}, try {attempt}: {said}", flush=True)
                    if within:
                        break
                else:
                    failed.append(measure.name)
        finally:
            kill_all()
    took = f"{time.monotonic() - started:.0f} s"
    if failed:
        print(f"benchmark alarm: OVER the bound in every try: {'; '.join(failed)} ({took})")
        return 1
    print(f"benchmark alarm: both within {args.bound:g}× websockets ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
