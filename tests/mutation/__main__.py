"""Mutation testing of the core: ``python -m tests.mutation [MODULE ...]``.

Runs mutmut (configured in ``[tool.mutmut]`` of pyproject.toml) over the core,
then the table mutants mutmut cannot make (``tests/mutation/tables.py``), and
prints the score of each module: killed mutants over all mutants. A surviving
mutant listed in docs/mutation.md as equivalent is shown as such; any other
is printed with its diff (``mutmut show``) so a test can be written for it.

    python -m tests.mutation                       # the whole core (2-3 h here)
    python -m tests.mutation heartbeat wire/frames # some modules
    python -m tests.mutation --changed             # modules changed since HEAD
    python -m tests.mutation heartbeat transitions --floor 90   # what CI runs

mutmut remembers results in the work directory (``build/mutation/<modules>/``
by default, one per selection of modules: mutmut keeps state only for the
modules it was last asked to mutate): a second run of the same selection
re-tests only the mutants of functions whose code changed.
The core is staged there as ``wslifecycle/`` (symlinks), the name the tests
import, because mutmut derives mutant names from file paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.mutation import judged, tables

ROOT = Path(__file__).resolve().parents[2]
#: Modules held to the 90 % floor by the issue that introduced this run.
SIX = ("heartbeat", "transitions", "lifecycle", "scheduler", "close_codes", "wire.frames")
KILLED = {1, 3, 36, 24, 152, 255, -24}  # failed, pytest internal error, timeouts
ROW = "{:<22} {:>8} {:>7} {:>12} {:>11} {:>7}"


def module_name(arg: str) -> str:
    """``heartbeat``, ``wire/frames``, ``core/wire/frames.py`` → ``wire.frames``."""
    name = arg.removeprefix("core/").removeprefix("wslifecycle.").removesuffix(".py")
    name = name.replace("/", ".")
    if not (ROOT / "core" / (name.replace(".", "/") + ".py")).is_file():
        raise SystemExit(f"no module core/{name.replace('.', '/')}.py (argument {arg!r})")
    return name


def all_modules() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT / "core").with_suffix("")).replace("/", ".")
        for p in (ROOT / "core").rglob("*.py")
    )


def changed_modules(ref: str) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "--name-only", ref, "--", "core/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "--", "core/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [module_name(p) for p in out + untracked if p.endswith(".py") and (ROOT / p).exists()]


def default_workdir(modules: list[str]) -> Path:
    """build/mutation/core for the whole core, else one named by the modules."""
    if sorted(modules) == sorted(all_modules()):
        name = "core"
    else:
        name = "+".join(sorted(modules))
        if len(name) > 80:
            name = "some-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return ROOT / "build" / "mutation" / name


def stage(workdir: Path, modules: list[str], tests: list[str] | None) -> list[str]:
    """The work directory: wslifecycle/ → core/, tests/ → tests/, and a copy of
    pyproject.toml whose [tool.mutmut] mutates only ``modules`` (mutmut would
    otherwise parse the whole core first) and, if given, runs ``tests``.
    Returns the test selection."""
    workdir.mkdir(parents=True, exist_ok=True)
    # mutmut keeps state only for the modules it was last told to mutate: a
    # run over fewer modules turns the others' mutated copies back into plain
    # ones and drops their test map (their mutants then read "no tests"). So a
    # work directory serves one selection of modules.
    marker = workdir / "modules.json"
    chosen = json.dumps(sorted(modules))
    if marker.exists() and marker.read_text(encoding="utf-8") != chosen:
        held = ", ".join(json.loads(marker.read_text(encoding="utf-8")))
        raise SystemExit(f"{workdir} holds a run of other modules ({held}): use another --workdir")
    marker.write_text(chosen, encoding="utf-8")
    for link, target in (("wslifecycle", "core"), ("tests", "tests")):
        path = workdir / link
        if not path.is_symlink():
            path.symlink_to(ROOT / target)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    selection_line = re.search(r"^pytest_add_cli_args_test_selection = (.*)$", text, re.M)
    assert selection_line, "pyproject.toml: [tool.mutmut] has no test selection"
    if tests:
        text = text.replace(
            selection_line.group(0),
            selection_line.group(0).split("=")[0] + "= " + json.dumps(tests),
        )
    only = [f"wslifecycle/{m.replace('.', '/')}.py" for m in modules]
    text = text.replace(
        'source_paths = ["wslifecycle"]',
        'source_paths = ["wslifecycle"]\nonly_mutate = ' + json.dumps(only),
        1,
    )
    staged = workdir / "pyproject.toml"
    if staged.is_symlink():
        staged.unlink()
    staged.write_text(text, encoding="utf-8")
    return tests or json.loads(selection_line.group(1))


def run_mutmut(workdir: Path, patterns: list[str], workers: int) -> None:
    """mutmut over the staged modules: with no patterns, only the mutants it has
    no result for (new, or in changed functions); else those matching."""
    log = workdir / "mutmut.log"
    print(f"mutmut run ({len(patterns) or 'no'} pattern(s)); progress in {log}", flush=True)
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers), *patterns],
            cwd=workdir,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=os.environ,
        ).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed (exit {code}); the end of {log}:\n{tail}")


def mutmut_results(workdir: Path, modules: list[str]) -> dict[str, dict[str, int | None]]:
    by_module: dict[str, dict[str, int | None]] = {}
    for m in modules:
        meta = workdir / "mutants" / "wslifecycle" / (m.replace(".", "/") + ".py.meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        by_module[m] = codes
    return by_module


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("modules", nargs="*", help="core modules (default: the whole core)")
    parser.add_argument(
        "--changed",
        nargs="?",
        const="HEAD",
        metavar="REF",
        help="only the core modules changed since REF (default HEAD)",
    )
    parser.add_argument("--floor", type=float, help="fail if a module scores below this %%")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where mutmut keeps its state (default: build/mutation/<modules>, one per selection)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-show", action="store_true", help="do not print survivors' diffs")
    parser.add_argument(
        "--tests",
        nargs="+",
        metavar="PATH",
        help="run these tests instead of [tool.mutmut]'s selection",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--survivors",
        action="store_true",
        help="re-test only the last run's survivors (after adding tests)",
    )
    again.add_argument(
        "--rerun", action="store_true", help="re-test every mutant, not only those without a result"
    )
    parser.add_argument(
        "--examples-scale",
        type=float,
        default=0.2,
        help="Hypothesis examples, as a fraction of the suite's (default 0.2)",
    )
    parser.add_argument(
        "--no-tables", action="store_true", help="mutmut only: skip the table mutants"
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="skip mutmut; only the table mutants (and mutmut's last results)",
    )
    args = parser.parse_args()
    # The derandomized Hypothesis profile (tests/conftest.py): a mutant is
    # killed or not the same way on every run. A fifth of the examples: each
    # surviving mutant reruns every test that reaches its function.
    os.environ["CI"] = "true"
    os.environ["WSL_EXAMPLES_SCALE"] = str(args.examples_scale)

    if args.changed:
        modules = changed_modules(args.changed)
        if not modules:
            print(f"no core module changed since {args.changed}")
            return 0
    else:
        modules = [module_name(m) for m in args.modules] or all_modules()
    started = time.monotonic()
    workdir = (args.workdir or default_workdir(modules)).resolve()
    selection = stage(workdir, modules, args.tests)
    if not args.tables_only:
        if args.rerun:
            patterns = [f"wslifecycle.{m}.*" for m in modules]
        elif args.survivors:
            patterns = [
                k
                for codes in mutmut_results(workdir, modules).values()
                for k, c in codes.items()
                if c not in KILLED
            ]
            if not patterns:
                print("no survivors to re-test")
        else:
            patterns = []
        if patterns or not args.survivors:
            run_mutmut(workdir, patterns, args.workers)
    results = mutmut_results(workdir, modules)

    table_modules = {f"wslifecycle.{m}" for m in modules}
    if not args.no_tables and any(module in table_modules for module, _ in tables.TABLES):
        print("table mutants (tests/mutation/tables.py)", flush=True)
        os.chdir(ROOT)
        for name, code in tables.run(selection, table_modules, str(workdir), args.workers).items():
            results[tables.module_of(name).removeprefix("wslifecycle.")][name] = code

    # A survivor is equivalent while docs/mutation.md lists it with the change
    # it still makes (mutant numbers shift when a function changes).
    listed = judged.read(ROOT / "docs" / "mutation.md")
    lost_listed = [
        k for codes in results.values() for k, c in codes.items() if c not in KILLED and k in listed
    ]
    current = judged.changes(workdir, lost_listed) if lost_listed else {}
    known = {k for k in lost_listed if current[k] == listed[k]}
    rows, survivors, failing = [], [], []
    total: Counter[str] = Counter()
    for m in modules:
        codes = results[m]
        if not codes:
            continue
        count = Counter(
            "killed"
            if c in KILLED
            else "survived"
            if c == 0
            else "no tests"
            if c in (33, 5)
            else "not run"
            if c is None
            else f"other ({c})"
            for c in codes.values()
        )
        lost = sorted(k for k, c in codes.items() if c not in KILLED)
        equivalent = sum(k in known for k in lost)
        score = 100.0 * count["killed"] / len(codes)
        total.update(count)
        rows.append((m, len(codes), count["killed"], len(lost) - equivalent, equivalent, score))
        survivors += [k for k in lost if k not in known]
        if args.floor is not None and score < args.floor:
            failing.append(m)

    print("\n" + ROW.format("module", "mutants", "killed", "unexplained", "equivalent", "score"))
    for m, n, k, unexplained, eq, score in rows:
        print(
            ROW.format(m, n, k, unexplained, eq, f"{score:.1f}%") + ("  <- six" if m in SIX else "")
        )
    n_all = sum(total.values())
    if len(rows) > 1 and n_all:
        print(
            ROW.format(
                "all", n_all, total["killed"], "", "", f"{100.0 * total['killed'] / n_all:.1f}%"
            )
        )
    print(f"({time.monotonic() - started:.0f} s; {dict(total)})")
    if survivors:
        print(
            f"\n{len(survivors)} surviving mutant(s) not listed as equivalent in docs/mutation.md:"
        )
        for key in survivors:
            print(f"  {key}")
            if key in current:  # listed, but its change moved on
                print(f"    listed as {judged.cell(listed[key])}, but it now makes {current[key]}")
            if not args.no_show and "__mutmut_" in key:
                diff = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", key],
                    cwd=workdir,
                    capture_output=True,
                    text=True,
                ).stdout
                print("    " + "\n    ".join(diff.strip().splitlines()[2:]))
                # The ledger row to fill in if it is judged equivalent.
                row = f"| `{key}` | {judged.cell(judged.change_of(diff))} | |"
                print(f"    if equivalent, list it as: {row}")
    if failing:
        print(f"\nbelow the floor of {args.floor:.0f} %: {', '.join(failing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
