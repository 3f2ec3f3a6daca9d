"""Benchmark of the sans-IO core (not a test; prints a table).

    .venv/bin/python -m tests.bench.core_bench [--connections 100000]

Measures, on this machine, with a fake clock and no I/O:
  * handling one pong (matching the last ping, and unsolicited);
  * one scheduler tick with N connections of which none are due, and 1% due;
  * the core state of one idle ACTIVE connection (tracemalloc), scheduler
    cell entry and live-set slot included;
  * one whole heartbeat interval of fake time in steady state, driven the
    way a driver drives it (wake at ``next_wakeup()``, ``tick(now, 256)``
    batches, every ping answered by a pong): the CPU it costs, the pings per
    second it sustains, and the longest single timer callback.
Targets: pong < 2 µs, idle tick < 20 µs at 100,000 connections,
< 1 KiB per connection.

    .venv/bin/python -m tests.bench.core_bench --scale 10000,100000,1000000

prints how those costs grow with the number of connections (the
core-only benchmark for scale beyond one process; ~3 minutes with
1,000,000).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

from wslifecycle import Config, ConnectionLifecycle, Scheduler
from wslifecycle.actions import SendPing
from wslifecycle.testing import seeded_entropy

INTERVAL = 30.0
TICK_BATCH = 256  # what the drivers pass (drivers/_common.py)
RTT = 0.005


def build(n: int) -> tuple[Scheduler, list[ConnectionLifecycle]]:
    scheduler = Scheduler(
        Config(heartbeat_interval=INTERVAL, allow_no_origin=True), seeded_entropy(7)
    )
    conns = []
    for _ in range(n):
        lifecycle = scheduler.open(0.0)
        lifecycle.request_upgrade(0.0, origin=None, host="localhost")
        lifecycle.take_actions()
        conns.append(lifecycle)
    return scheduler, conns


def best_per_call(fn: object, calls: int, repeats: int = 7) -> float:
    """Best-of-``repeats`` seconds per call of a loop of ``calls`` calls."""
    assert callable(fn)
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        results.append((time.perf_counter() - start) / calls)
    return min(results)


def bench_pong() -> tuple[float, float]:
    scheduler, (lifecycle,) = build(1)
    deadline = scheduler.next_deadline()
    assert deadline is not None
    scheduler.tick(deadline)  # one ping out, so a payload to match
    lifecycle.take_actions()
    calls = 200_000
    payload = lifecycle._ping_payload
    assert payload is not None
    pong = lifecycle.receive_pong

    def matching() -> None:
        for _ in range(calls):
            lifecycle._ping_payload = payload  # re-arm so every pong matches
            pong(deadline, payload)

    def unsolicited() -> None:
        for _ in range(calls):
            pong(deadline, b"x")

    return best_per_call(matching, calls), best_per_call(unsolicited, calls)


def bench_ticks(n: int) -> tuple[float, float, float, int]:
    scheduler, _ = build(n)
    first = scheduler.next_wakeup()
    assert first is not None
    # A wake-up one timer-slack step early: nothing can be due yet.
    before = first - Config(heartbeat_interval=INTERVAL).effective_timer_slack
    calls = 20_000

    def idle() -> None:
        for _ in range(calls):
            scheduler.tick(before)

    idle_tick = best_per_call(idle, calls)

    # 1% due: consecutive windows of 1% of the interval, as a real timer sees them.
    samples = []
    due_counts = []
    now = 0.0
    for window in range(1, 31):
        now = window * INTERVAL / 100
        gc.disable()
        start = time.perf_counter()
        ran = scheduler.tick(now)
        elapsed = time.perf_counter() - start
        gc.enable()
        for lifecycle in ran:
            lifecycle.take_actions()
        samples.append(elapsed)
        due_counts.append(len(ran))
    median = statistics.median(samples)
    due = int(statistics.median(due_counts))
    return idle_tick, median, median / max(due, 1), due


def bench_memory(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    scheduler, conns = build(n)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # The list we keep for the benchmark is not core state: subtract it.
    total -= conns.__sizeof__()
    del scheduler, conns
    return total / n


def run_interval(scheduler: Scheduler, start: float) -> tuple[float, int, int, float]:
    """Drive one interval of fake time from ``start`` as a driver would; every
    ping is answered RTT later. Returns (CPU seconds, pings, wake-ups, longest
    callback in seconds)."""
    cpu = longest = 0.0
    pings = wakeups = 0
    end = start + INTERVAL
    clock = time.process_time
    while (wakeup := scheduler.next_wakeup()) is not None and wakeup <= end:
        began = clock()
        wakeups += 1
        while True:  # a driver's timer callback: batches until nothing is due
            ran = scheduler.tick(wakeup, TICK_BATCH)
            for lifecycle in ran:
                for action in lifecycle.take_actions():
                    if type(action) is SendPing:
                        pings += 1
                        lifecycle.receive_pong(wakeup + RTT, action.payload)
            if len(ran) < TICK_BATCH:
                break
        spent = clock() - began
        cpu += spent
        longest = max(longest, spent)
    return cpu, pings, wakeups, longest


def bench_interval(n: int) -> tuple[float, int, int, float]:
    """A steady-state interval: the first (every connection's first slot)
    is run untimed, the second is measured."""
    scheduler, conns = build(n)
    gc.collect()
    gc.freeze()  # a long-running server's old objects are not rescanned
    run_interval(scheduler, 0.0)
    result = run_interval(scheduler, INTERVAL)
    gc.unfreeze()
    del scheduler, conns
    return result


def scale(sizes: list[int]) -> None:
    """How the core's costs grow with the number of connections."""
    print(f"core only, {INTERVAL:.0f} s interval, every ping answered, one thread")
    print()
    print(
        "| connections | core state / conn | idle tick | CPU per ping+pong | "
        "pings/s needed | pings/s one core sustains | core busy | wake-ups / interval "
        "| longest callback |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        memory = bench_memory(n)
        idle, _, _, _ = bench_ticks(n)
        cpu, pings, wakeups, longest = bench_interval(n)
        assert pings == n, (pings, n)  # every connection pinged once per interval
        print(
            f"| {n:,} | {memory:.0f} B | {idle * 1e6:.2f} µs | {cpu / pings * 1e6:.2f} µs | "
            f"{n / INTERVAL:,.0f} | {pings / cpu:,.0f} | {cpu / INTERVAL:.1%} | {wakeups} | "
            f"{longest * 1e3:.1f} ms |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--scale", help="comma-separated connection counts: the scaling table")
    args = parser.parse_args()
    if args.scale:
        scale([int(size) for size in args.scale.split(",")])
        return
    n = args.connections

    pong_match, pong_other = bench_pong()
    idle, tick_1pct, per_due, due = bench_ticks(n)
    memory = bench_memory(n)

    rows = [
        ("pong handled (matching payload, RTT recorded)", f"{pong_match * 1e6:.2f} µs", "< 2 µs"),
        ("pong handled (unsolicited payload)", f"{pong_other * 1e6:.2f} µs", "< 2 µs"),
        (f"tick, {n:,} connections, none due", f"{idle * 1e6:.2f} µs", "< 20 µs"),
        (
            f"tick, {n:,} connections, 1% due ({due:,} pinged)",
            f"{tick_1pct * 1e3:.2f} ms ({per_due * 1e6:.2f} µs each)",
            "grows with due, not n",
        ),
        ("core state per idle connection (tracemalloc)", f"{memory:.0f} B", "< 1024 B"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | result | target |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, value, target in rows:
        print(f"| {name:<{width}} | {value} | {target} |")


if __name__ == "__main__":
    main()
