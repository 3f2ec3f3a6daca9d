"""Mutants of the core's lookup tables, which mutmut cannot make.

mutmut (3.x) mutates code inside functions only. The transition table, the
closing steps and the close-code causes are module-level dicts, and a wrong
entry there is exactly the bug a liveness library must not ship, so this
module makes those mutants itself, the way mutmut runs its own:

1. A clean run of the core's tests in a child process, with each table
   wrapped in a dict that records which keys every test reads, and how long
   each test takes. A red clean run stops everything.
2. For each mutant (an entry deleted, or its value replaced by every other
   member of the same enum) a forked child changes the table in place
   *before* any test module is imported (so a test parametrized from the
   table sees the mutated table, as it would if the source were edited) and
   runs, fastest first and stopping at the first failure, only the test
   functions that read that key in the clean run. The tests are
   deterministic here (the derandomized ``ci`` Hypothesis profile), so a test
   that never read the key behaves the same under the mutant.

Results use mutmut's exit codes: 1 killed, 0 survived, 33 no test reads the
entry, 36 timeout (a kill: the mutant made the code loop).
"""

from __future__ import annotations

import enum
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

#: (module, table name): the module-level dicts that are mutated.
TABLES: tuple[tuple[str, str], ...] = (
    ("wslifecycle.transitions", "TRANSITIONS"),
    ("wslifecycle.transitions", "CLOSING_STEPS"),
    ("wslifecycle.wire.frames", "_CAUSE_FOR_CODE"),
)

#: A child running one mutant's tests for longer than this is a timeout.
CHILD_TIMEOUT_S = 300

KILLED, SURVIVED, NO_TESTS, TIMEOUT = 1, 0, 33, 36


class RecordingDict(dict[Any, Any]):
    """A dict that notes every key read into ``reads`` while it is set."""

    reads: set[Any] | None = None

    def __getitem__(self, key: Any) -> Any:
        if self.reads is not None:
            self.reads.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if self.reads is not None:
            self.reads.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if self.reads is not None:
            self.reads.add(key)
        return super().__contains__(key)

    # A test that walks the table (a rule over every entry, or parameters
    # made from it) reads every key.
    def _read_all(self) -> None:
        if self.reads is not None:
            self.reads.update(super().keys())

    def __iter__(self) -> Iterator[Any]:
        self._read_all()
        return super().__iter__()

    def keys(self) -> Any:
        self._read_all()
        return super().keys()

    def values(self) -> Any:
        self._read_all()
        return super().values()

    def items(self) -> Any:
        self._read_all()
        return super().items()


@dataclass(frozen=True)
class Mutant:
    """One wrong entry: ``table[key]`` deleted (``value`` None) or changed."""

    module: str
    table: str
    key: Any
    value: Any | None

    @property
    def name(self) -> str:
        key = ",".join(map(_show, self.key)) if isinstance(self.key, tuple) else _show(self.key)
        what = "deleted" if self.value is None else f"->{_show(self.value)}"
        return f"{self.module}.{self.table}[{key}]{what}"

    def apply(self) -> None:
        table = getattr(importlib.import_module(self.module), self.table)
        if self.value is None:
            del table[self.key]
        else:
            table[self.key] = self.value


def _show(value: Any) -> str:
    return value.name if isinstance(value, enum.Enum) else repr(value)


def mutants(modules: set[str]) -> Iterator[Mutant]:
    """Every entry deleted; every enum value swapped for each other member."""
    for module, name in TABLES:
        if module not in modules:
            continue
        for key, value in getattr(importlib.import_module(module), name).items():
            yield Mutant(module, name, key, None)
            if isinstance(value, enum.Enum):
                for other in type(value):
                    if other is not value:
                        yield Mutant(module, name, key, other)


def module_of(name: str) -> str:
    """The module a table mutant's name belongs to."""
    return next(m for m, t in TABLES if name.startswith(f"{m}.{t}["))


class _Recorder:
    """The clean run's plugin: per test function, the keys read and the time.

    Keys read while a test module is imported (parameters made from a table)
    count as read by every test of that module: a mutant changes them."""

    def __init__(self, tables: dict[tuple[str, str], RecordingDict]) -> None:
        self.tables = tables
        self.reads: dict[str, dict[str, list[str]]] = {}
        self.duration: dict[str, float] = {}
        self.at_import: dict[str, dict[tuple[str, str], set[Any]]] = {}

    def _watch(self) -> dict[tuple[str, str], set[Any]]:
        seen: dict[tuple[str, str], set[Any]] = {where: set() for where in self.tables}
        for where, table in self.tables.items():
            table.reads = seen[where]
        return seen

    def _unwatch(self) -> None:
        for table in self.tables.values():
            table.reads = None

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Iterator[Any]:
        if not isinstance(collector, pytest.Module):
            return (yield)
        seen = self._watch()
        try:
            return (yield)
        finally:
            self._unwatch()
            self.at_import[collector.nodeid] = seen

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        seen = self._watch()
        t0 = time.perf_counter()
        try:
            return (yield)
        finally:
            self._unwatch()
            function = _function_id(item.nodeid)
            self.duration[function] = self.duration.get(function, 0.0) + time.perf_counter() - t0
            mine = self.reads.setdefault(function, {})
            imported = self.at_import.get(item.nodeid.split("::", 1)[0], {})
            for (module, name), keys in seen.items():
                keys = keys | imported.get((module, name), set())
                mine.setdefault(f"{module}.{name}", []).extend(repr(k) for k in keys)


def _function_id(nodeid: str) -> str:
    """A test function without its parameters: ids may change under a mutant."""
    return nodeid.split("[", 1)[0]


def _clean_run(tests: list[str], modules: set[str], out: str) -> int:
    """In a child: wrap the tables, run the tests, write reads and times to ``out``."""
    pid = os.fork()
    if pid == 0:  # the child
        tables = {}
        for module, name in TABLES:
            if module in modules:
                mod = importlib.import_module(module)
                tables[module, name] = wrapped = RecordingDict(getattr(mod, name))
                for other in list(sys.modules.values()):  # re-exports too
                    for attr, value in list(vars(other).items()):
                        if value is getattr(mod, name) and other is not mod:
                            setattr(other, attr, wrapped)
                setattr(mod, name, wrapped)
        recorder = _Recorder(tables)
        code = pytest.main(["-q", "-p", "no:cacheprovider", *tests], plugins=[recorder])
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"reads": recorder.reads, "duration": recorder.duration}, f)
        os._exit(int(code))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _run_mutant(mutant: Mutant, functions: list[str]) -> None:  # the child
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.alarm(CHILD_TIMEOUT_S)
    mutant.apply()
    code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *functions])
    # 1 a test failed, 2 collection broke, 3 internal error: the mutant is caught.
    os._exit(KILLED if code in (1, 2, 3) else SURVIVED if code == 0 else int(code))


def _check_a_no_op_survives(
    first: Mutant, reads: dict[str, Any], duration: dict[str, float]
) -> None:
    """The harness itself must not kill: an entry "changed" to its own value
    runs every test that reads it, and they must all pass (mutmut checks the
    other way round, that a forced failure is seen)."""
    table = getattr(importlib.import_module(first.module), first.table)
    no_op = Mutant(first.module, first.table, first.key, table[first.key])
    name, key = f"{first.module}.{first.table}", repr(first.key)
    functions = [f for f, seen in reads.items() if key in seen.get(name, ())]
    pid = os.fork()
    if pid == 0:
        _run_mutant(no_op, sorted(functions, key=duration.__getitem__))
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != SURVIVED:
        raise SystemExit(f"table mutants: an unchanged table fails {len(functions)} tests")


def run(tests: list[str], modules: set[str], workdir: str, workers: int) -> dict[str, int]:
    """Every table mutant of ``modules`` against ``tests``: {name: exit code}."""
    clean = os.path.join(workdir, "tables-clean.json")
    if _clean_run(tests, modules, clean) != 0:
        raise SystemExit("table mutants: the clean run failed; fix the tests first")
    with open(clean, encoding="utf-8") as f:
        recorded = json.load(f)
    reads, duration = recorded["reads"], recorded["duration"]
    results: dict[str, int] = {}
    running: dict[int, Mutant] = {}

    def reap() -> None:
        pid, status = os.wait()
        mutant = running.pop(pid)
        if os.WIFSIGNALED(status):
            # SIGALRM is the child's own timeout; any other signal is a crash
            # a test would have reported: a kill either way.
            sig = os.WTERMSIG(status)
            results[mutant.name] = TIMEOUT if sig == signal.SIGALRM else KILLED
        else:
            results[mutant.name] = os.WEXITSTATUS(status)

    todo = list(mutants(modules))
    _check_a_no_op_survives(todo[0], reads, duration)
    started = time.monotonic()
    for n, mutant in enumerate(todo):
        if n % 25 == 0:
            done = sum(c in (KILLED, TIMEOUT) for c in results.values())
            print(
                f"  {n}/{len(todo)} table mutants, {done} killed, "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
        table, key = f"{mutant.module}.{mutant.table}", repr(mutant.key)
        functions = sorted(
            (f for f, seen in reads.items() if key in seen.get(table, ())),
            key=duration.__getitem__,
        )
        if not functions:
            results[mutant.name] = NO_TESTS
            continue
        while len(running) >= workers:
            reap()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _run_mutant(mutant, functions)
        running[pid] = mutant
    while running:
        reap()
    return results
