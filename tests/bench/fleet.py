"""Fleet benchmark: fan-out across two nodes on Redis, beside one node in memory.

    .venv/bin/python -m tests.bench.fleet                  # ~2 minutes
    .venv/bin/python -m tests.bench.fleet --quick          # tiny numbers, ~15 s
    .venv/bin/python -m tests.bench.fleet --driver selector --subscribers 5000

The shape (docs/fleet.md quotes a run):

* **fleet**: one ``redis-server``, node A and node B (``wslifecycle serve
  --redis``, each its own process); 10,000 subscribers on node B spread
  over 100 channels (100 each); 100 publishers on node A, one per channel.
  Every message crosses Redis: node A's publish script stores it and
  publishes it on the channel's pub/sub notice; node B fans it out.
* **one node**: the same subscribers and publishers on a single node with
  the in-memory broker (no ``--redis``).

Each shape runs three phases, every publish carrying its send time
(``CLOCK_MONOTONIC``, shared by every process here) so each delivery's
latency is measured where it arrives:

1. **throughput**: publishes at twice the goal; the deliveries per second
   that arrive while it lasts are what the fan-out node sustains (its
   backlog drains afterwards; the latencies of this phase are queueing);
2. **half of it**: a steady rate of half the deliveries per second measured
   in phase 1: delivery p50 / p99 with the node half busy;
3. **half the goal**: a steady ``--rate`` deliveries a second (default
   25,000, half the goal): delivery p50 / p99.

Clients are the C load generator (``tests/bench/wsgen.c``: epoll, raw
sockets, pings answered in C), subscribers split over processes of at most
5,000 connections each (a process may hold 20,000 descriptors here). On a
machine with two cores the node that fans out (node B, or the one node) is
pinned to core 0 and everything else (node A, Redis, the generators) to
core 1. Every node's ``/metrics`` is read before and after: false
terminations (``wslifecycle_terminations``), skipped sends, drift notices
and failed publishes over the run are in the table. The heartbeat runs
every ``--heartbeat-interval`` seconds (default 5) so that it is probing
throughout. The machine's busy time (``/proc/stat``) beyond the
benchmark's own processes is printed too ("everything else"): figures
taken while other programs ran are not this code's.

Prints a Markdown table; ``--out FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import pathlib
import platform
import queue
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence

from tests.bench._gen import Generator, GeneratorError, build_generator
from tests.bench._procs import GENERATOR_CPUS, SERVER_CPUS, Child, cpu_seconds, kill_all
from tests.fleet.redis_server import RedisServer, find_redis_server

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOAL_DELIVERIES = 50_000  # a second, across nodes
GOAL_P99 = 0.050  # seconds, at half the goal's rate
PER_GENERATOR = 5_000  # subscribers per wsgen process
_SERVING = re.compile(r"serving \S+ on ws://127\.0\.0\.1:(\d+)")


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    subscribers: int
    channels: int
    publishers: int
    rate: int  # deliveries a second in the "half the goal" phase
    saturate: int  # deliveries a second offered in the throughput phase
    warmup: float  # seconds of each phase whose latencies are not kept
    window: float  # seconds measured in each phase
    heartbeat: float


FULL = Plan("full", 10_000, 100, 100, 25_000, 2 * GOAL_DELIVERIES, 1.0, 8.0, 5.0)
QUICK = Plan("quick", 200, 10, 10, 2_000, 10_000, 0.3, 1.0, 1.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mark(met: bool) -> str:
    return "✅" if met else "❌"


def milli(seconds: float) -> str:
    return "–" if seconds != seconds else f"{seconds * 1e3:.1f} ms"


# -------------------------------------------------------------------- nodes


class Node:
    """One ``wslifecycle serve`` process (with the benchmark's lag probe)."""

    def __init__(
        self,
        name: str,
        driver: str,
        plan: Plan,
        workdir: pathlib.Path,
        cpus: frozenset[int] | None,
        redis_url: str | None,
    ) -> None:
        self.name = name
        argv = [sys.executable, "-m", "tests.bench.peers.wsl_serve", "serve"]
        argv += ["--driver", driver, "--port", "0", "--allow-no-origin", "--log-level", "warning"]
        argv += ["--heartbeat-interval", f"{plan.heartbeat:g}"]
        if redis_url is not None:
            argv += ["--redis", redis_url]
        self.child = Child(name, argv, stderr_path=workdir / f"{name}.stderr", cwd=ROOT, cpus=cpus)
        self._lag: list[tuple[float, list[int]]] = []
        self.port = self._wait_serving(20.0)

    def _wait_serving(self, timeout: float) -> int:
        port = self.child.wait_for_port(_SERVING, timeout)
        if port is not None:
            return port
        raise RuntimeError(f"{self.name} did not start: {self.child.stderr_tail()}")

    def cpu(self) -> float:
        return cpu_seconds(self.child.pid)

    def metrics(self) -> dict[str, float]:
        """Every sample of its /metrics, by name with labels."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body: str = response.read().decode()
        samples = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def lag(self, start: float, end: float) -> list[int]:
        """The lag probe's samples (µs) for [start, end] (lines arrive ~1 s late)."""
        while True:
            try:
                when, line = self.child.lines.get_nowait()
            except queue.Empty:
                break
            if line.startswith("LAG "):
                self._lag.append((when, [int(v) for v in line[4:].split(",") if v]))
        return [v for when, values in self._lag if start + 0.5 < when <= end + 1.5 for v in values]


def machine_busy() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat):
    what the benchmark's processes did not spend of it, others did."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(value for name, value in samples.items() if name.startswith(prefix))


COUNTERS = {
    "terminations": "wslifecycle_terminations_total",
    "skipped": "wslifecycle_sends_skipped_total",
    "drift": "wslifecycle_drift_notices_total",
    "publish failures": "wslifecycle_publish_failures_total",
}


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {
        key: round(total(after, prefix) - total(before, prefix)) for key, prefix in COUNTERS.items()
    }


# ------------------------------------------------------------------ clients


class Clients:
    """Subscribers on the fan-out node, publishers on the publishing node."""

    def __init__(
        self,
        binary: pathlib.Path,
        workdir: pathlib.Path,
        plan: Plan,
        subscribe_port: int,
        publish_port: int,
    ) -> None:
        self.plan = plan
        self.subscribers: list[Generator] = []
        self.shares: list[int] = []
        count = max(1, math.ceil(plan.subscribers / PER_GENERATOR))
        for i in range(count):
            self.shares.append(
                plan.subscribers // count + (1 if i < plan.subscribers % count else 0)
            )
            self.subscribers.append(Generator(binary, subscribe_port, workdir, f"subs{i}"))
        self.publisher = Generator(binary, publish_port, workdir, "pubs")

    def everyone(self) -> list[Generator]:
        return [*self.subscribers, self.publisher]

    def connect(self) -> None:
        for generator, share in zip(self.subscribers, self.shares, strict=True):
            generator.send(f"connect {share} 64 120")
        self.publisher.send(f"connect {self.plan.publishers} 16 60")
        for generator, share in zip(self.subscribers, self.shares, strict=True):
            done = generator.wait("connected", 180)
            if done["ok"] != share:
                raise GeneratorError(f"{generator.name}: {done['ok']}/{share} connected")
        done = self.publisher.wait("connected", 90)
        if done["ok"] != self.plan.publishers:
            raise GeneratorError(f"publishers: {done['ok']}/{self.plan.publishers} connected")
        for generator in self.subscribers:
            generator.call(f"spread bench {self.plan.channels}", "subscribing")
        deadline = time.monotonic() + 60 + self.plan.subscribers / 200
        while self.confirmed() < self.plan.subscribers:
            if time.monotonic() > deadline:
                raise GeneratorError(
                    f"{self.confirmed()}/{self.plan.subscribers} subscriptions confirmed"
                )
            time.sleep(0.2)

    def confirmed(self) -> int:
        return sum(g.call("stats", "stats")["subscribed"] for g in self.subscribers)

    def delivered(self) -> int:
        return sum(g.call("stats", "stats")["msgs"] for g in self.subscribers)

    def per_channel(self) -> list[int]:
        """Subscribers of each channel (``spread``: connection i takes channel i % K)."""
        counts = [0] * self.plan.channels
        for share in self.shares:
            for channel in range(self.plan.channels):
                counts[channel] += share // self.plan.channels + (
                    1 if channel < share % self.plan.channels else 0
                )
        return counts

    def latencies(self) -> list[float]:
        """The delivery latencies recorded since the last call (seconds)."""
        return [us / 1e6 for g in self.subscribers for us in g.call("lat", "lat", 60)["us"]]

    def cpu(self) -> float:
        return sum(g.cpu() for g in self.everyone())

    def close(self) -> None:
        for generator in self.everyone():
            generator.close()


# ------------------------------------------------------------------- phases


@dataclasses.dataclass
class Phase:
    setup: str
    name: str
    offered: float  # deliveries a second
    achieved: float  # deliveries a second that arrived in the window
    latencies: list[float]
    delivered: int
    expected: int
    fanout_cpu: float  # share of one core, the fan-out node over the window
    lag: list[int]
    others: float  # share of one core that other programs took over the window
    generator_cpu: float  # share of one core, every wsgen process over the window

    @property
    def p50(self) -> float:
        return quantile(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return quantile(self.latencies, 0.99)

    @property
    def lag_p99(self) -> float:
        return quantile(self.lag, 0.99) / 1e6 if self.lag else float("nan")


def run_phase(
    setup: str,
    name: str,
    deliveries: int,
    clients: Clients,
    fanout: Node,
    ours: Callable[[], float],
) -> Phase:
    """Publish at ``deliveries`` a second for warm-up + window; the latencies
    after the warm-up, and the arrival rate over the window. ``ours``: CPU
    seconds of every process of the benchmark so far."""
    plan = clients.plan
    per_channel = clients.per_channel()
    subscribers_per_publish = sum(per_channel) / plan.channels
    publishes = max(1, round(deliveries / subscribers_per_publish))
    seconds = plan.warmup + plan.window
    clients.latencies()  # drop what earlier phases left
    start_count = clients.delivered()
    clients.publisher.send(f"pubrate bench {plan.channels} {publishes} {seconds:.3f}")
    started = time.monotonic()
    time.sleep(plan.warmup)
    clients.latencies()
    c0, d0, t0 = fanout.cpu(), clients.delivered(), time.monotonic()
    b0, o0, g0 = machine_busy(), ours(), clients.cpu()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    c1, d1, t1 = fanout.cpu(), clients.delivered(), time.monotonic()
    g1 = clients.cpu()
    others = (machine_busy() - b0 - (ours() - o0)) / (t1 - t0)
    sent = clients.publisher.wait("pubrate", seconds + 30)["sent"]
    expected = sum(per_channel[n % plan.channels] for n in range(sent))
    # The backlog drains: wait until everything arrived or nothing more does.
    last, still = -1, time.monotonic()
    while True:
        now_count = clients.delivered() - start_count
        if now_count >= expected:
            break
        if now_count != last:
            last, still = now_count, time.monotonic()
        elif time.monotonic() - still > 5:
            break
        time.sleep(0.1)
    latencies = clients.latencies()
    return Phase(
        setup,
        name,
        publishes * subscribers_per_publish,
        (d1 - d0) / (t1 - t0),
        latencies,
        clients.delivered() - start_count,
        expected,
        (c1 - c0) / (t1 - t0),
        fanout.lag(t0, t1),
        max(0.0, others),
        (g1 - g0) / (t1 - t0),
    )


@dataclasses.dataclass
class Shape:
    setup: str
    phases: list[Phase]
    counters: dict[str, dict[str, int]]  # node → counter deltas over the run
    cpu: dict[str, float]  # process → share of one core over the run


def run_shape(
    setup: str, plan: Plan, driver: str, binary: pathlib.Path, workdir: pathlib.Path, fleet: bool
) -> Shape:
    other = GENERATOR_CPUS  # node A and Redis share the generators' core
    with contextlib.ExitStack() as stack:
        nodes: dict[str, Node] = {}
        redis_url = None
        redis: RedisServer | None = None
        if fleet:
            redis = stack.enter_context(RedisServer())
            assert redis.process is not None
            if other:
                os.sched_setaffinity(redis.process.pid, other)
            redis_url = redis.url
            nodes["node B"] = Node("nodeB", driver, plan, workdir, SERVER_CPUS, redis_url)
            nodes["node A"] = Node("nodeA", driver, plan, workdir, other, redis_url)
            fanout, publishing = nodes["node B"], nodes["node A"]
        else:
            fanout = publishing = nodes["one node"] = Node(
                "single", driver, plan, workdir, SERVER_CPUS, None
            )
        for node in nodes.values():
            stack.callback(node.child.kill)
        clients = Clients(binary, workdir, plan, fanout.port, publishing.port)
        stack.callback(clients.close)
        log(
            f"{setup}: connecting {plan.subscribers:,} subscribers and {plan.publishers} publishers"
        )
        clients.connect()
        before = {name: node.metrics() for name, node in nodes.items()}
        cpu0 = {name: node.cpu() for name, node in nodes.items()}
        cpu0["generators"] = clients.cpu()
        cpu0["this benchmark"] = cpu_seconds(os.getpid())
        redis_cpu0 = cpu_seconds(redis.process.pid) if redis and redis.process else 0.0
        busy0, started = machine_busy(), time.monotonic()

        def ours() -> float:
            total = clients.cpu() + cpu_seconds(os.getpid())
            total += sum(node.cpu() for node in nodes.values())
            if redis is not None and redis.process is not None:
                total += cpu_seconds(redis.process.pid)
            return total

        phases: list[Phase] = []
        for name in ("throughput", "half of it", "half the goal"):
            rate = {
                "throughput": plan.saturate,
                "half of it": round(phases[0].achieved / 2) if phases else 0,
                "half the goal": plan.rate,
            }[name]
            log(f"{setup}: {name}, {rate:,} deliveries/s offered")
            phase = run_phase(setup, name, rate, clients, fanout, ours)
            log(
                f"  {phase.achieved:,.0f} deliveries/s, p50 {milli(phase.p50)}"
                f", p99 {milli(phase.p99)}, {phase.delivered:,}/{phase.expected:,} delivered"
            )
            phases.append(phase)
        elapsed, busy = time.monotonic() - started, machine_busy() - busy0
        after = {name: node.metrics() for name, node in nodes.items()}
        cpu = {name: (node.cpu() - cpu0[name]) / elapsed for name, node in nodes.items()}
        cpu["generators"] = (clients.cpu() - cpu0["generators"]) / elapsed
        cpu["this benchmark"] = (cpu_seconds(os.getpid()) - cpu0["this benchmark"]) / elapsed
        if redis and redis.process:
            cpu["redis-server"] = (cpu_seconds(redis.process.pid) - redis_cpu0) / elapsed
        # Anything else on the machine (other programs, the kernel's own threads)
        # competed for the same cores: said beside the figures.
        cpu["everything else"] = max(0.0, busy / elapsed - sum(cpu.values()))
        counters = {name: counter_deltas(before[name], after[name]) for name in nodes}
    return Shape(setup, phases, counters, cpu)


SETUPS = (("fleet", True), ("one node", False))


def missing() -> str | None:
    """Why the fleet setup cannot run here, or None."""
    if find_redis_server() is None:
        return "redis-server is not installed (bash .ci/setup installs it)"
    return None


def run_setups(
    plan: Plan, driver: str, binary: pathlib.Path, workdir: pathlib.Path, only: str | None = None
) -> list[Shape]:
    """Both setups (or ``only`` "fleet" or "single"), each through its three
    phases: what this command's table and ``tests.bench.compare``'s fleet
    scenario both show."""
    return [
        run_shape(setup, plan, driver, binary, workdir, fleet)
        for setup, fleet in SETUPS
        if only is None or (only == "fleet") == fleet
    ]


def goals(shape: Shape) -> list[tuple[str, tuple[bool, str]]]:
    """The fleet's goals, each (the phase it is read from, (met?, what it says))."""
    throughput = next(p for p in shape.phases if p.name == "throughput")
    latency = next(p for p in shape.phases if p.name == "half the goal")
    terminated = sum(d["terminations"] for d in shape.counters.values())
    return [
        (
            throughput.name,
            (
                throughput.achieved >= GOAL_DELIVERIES,
                f"≥ {GOAL_DELIVERIES:,} deliveries/s across nodes: {throughput.achieved:,.0f}",
            ),
        ),
        (
            latency.name,
            (
                latency.p99 < GOAL_P99,
                f"p99 < {GOAL_P99 * 1e3:.0f} ms at {latency.offered:,.0f} deliveries/s: "
                f"{milli(latency.p99)}",
            ),
        ),
        (latency.name, (terminated == 0, f"0 false terminations: {terminated}")),
    ]


# -------------------------------------------------------------------- table


def render(shapes: list[Shape], plan: Plan, driver: str, seconds: float) -> str:
    lines = [
        f"## wslifecycle fleet benchmark ({plan.name} run, {time.strftime('%Y-%m-%d')}, "
        f"{seconds / 60:.1f} min)",
        "",
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, loopback. Driver "
        f"{driver}; {plan.subscribers:,} subscribers over {plan.channels} channels "
        f"({plan.subscribers // plan.channels} each), {plan.publishers} publishers; heartbeat "
        f"every {plan.heartbeat:g} s; each phase {plan.warmup:g} s warm-up + "
        f"{plan.window:g} s measured.",
        "",
        "| setup | phase | offered deliveries/s | arrived deliveries/s | delivery p50 "
        "| delivery p99 | delivered | fan-out node CPU | fan-out node lag p99 | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p.setup} | {p.name} | {p.offered:,.0f} | {p.achieved:,.0f} "
        f"| {milli(p.p50)} | {milli(p.p99)} "
        f"| {p.delivered:,}/{p.expected:,} | {100 * p.fanout_cpu:.0f} % "
        f"| {milli(p.lag_p99)} | {100 * p.others:.0f} % |"
        for shape in shapes
        for p in shape.phases
    ]
    lines += [
        "",
        "Arrived: deliveries per second counted at the subscribers over the measured "
        "window. Latency: publish stamp to arrival, every delivery after the warm-up, "
        "the backlog included. CPU: % of one core. Other load: the machine's busy time "
        "(/proc/stat) over the window beyond this benchmark's processes (other programs, "
        "and kernel work charged to no process); rows with much of it were measured on "
        "a shared machine.",
        "",
    ]
    lines += [f"- {shape.setup}, over the whole run: {summary(shape)}." for shape in shapes]
    fleet = next((s for s in shapes if s.setup == "fleet"), None)
    if fleet is not None and plan.name == "full":
        said = "; ".join(f"{what} {mark(met)}" for _, (met, what) in goals(fleet))
        lines += ["", f"Goals (fleet): {said}."]
    return "\n".join(lines) + "\n"


def summary(shape: Shape) -> str:
    """The counters of every node and the CPU of every process over a whole setup."""
    counters = "; ".join(
        f"{node}: " + ", ".join(f"{value:,} {key}" for key, value in deltas.items())
        for node, deltas in shape.counters.items()
    )
    cpu = ", ".join(f"{name} {100 * share:.0f} %" for name, share in shape.cpu.items())
    return f"{counters}. CPU (one core): {cpu}"


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    options = argparse.ArgumentParser(
        prog="python -m tests.bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run")
    options.add_argument(
        "--driver", choices=("asyncio", "selector", "trio"), default="asyncio", help="of both nodes"
    )
    options.add_argument("--subscribers", type=int, help="on the fan-out node (default 10,000)")
    options.add_argument(
        "--rate", type=int, help='deliveries/s of the "half the goal" phase (default 25,000)'
    )
    options.add_argument("--heartbeat-interval", type=float, help="of the nodes (default 5)")
    options.add_argument(
        "--only", choices=("fleet", "single"), help="run one setup (default: both)"
    )
    options.add_argument("--out", type=pathlib.Path, help="also write the table here")
    return options.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.subscribers:
        plan = dataclasses.replace(plan, subscribers=args.subscribers)
    if args.rate:
        plan = dataclasses.replace(plan, rate=args.rate)
    if args.heartbeat_interval:
        plan = dataclasses.replace(plan, heartbeat=args.heartbeat_interval)
    reason = missing()
    if reason is not None and args.only != "single":
        raise SystemExit(reason)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wsl-fleet-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        binary, _ = build_generator(workdir)
        try:
            shapes = run_setups(plan, args.driver, binary, workdir, args.only)
        finally:
            kill_all()
    table = render(shapes, plan, args.driver, time.monotonic() - started)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
