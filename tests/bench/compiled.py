"""The compiled build of the core's hot path, ready to put on PYTHONPATH.

    python -m tests.bench.compiled            # build (or reuse) it, print its directory
    python -m tests.bench.compiled --test     # and run the core's tests against it

It builds a wheel the way a user would (``WSLIFECYCLE_COMPILE=1 pip wheel
--no-build-isolation``, setup.py) and unpacks it into
``build/compiled/<hash of the sources>/``, reused while core/, drivers/,
setup.py and pyproject.toml are unchanged. The benchmark's ``wsl-compiled``
row runs ``wslifecycle serve`` from it; CI runs tests/core and tests/wire
against it (``--test``), so the compiled build answers to the same tests as
the pure-Python one. Before the tests, it checks that every module setup.py
lists really loads compiled: a build that fell back to Python would
otherwise pass unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "compiled"
#: What the build depends on: a change to any of these builds again.
SOURCES = ("core", "drivers", "setup.py", "pyproject.toml")


def _digest() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(ROOT)).encode() + b"\0")
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def compiled_names() -> list[str]:
    """The module names setup.py compiles (wslifecycle.scheduler, ...)."""
    text = (ROOT / "setup.py").read_text()
    block = text.split("COMPILED = (", 1)[1].split(")", 1)[0]
    paths = [line.strip().strip('",') for line in block.splitlines() if ".py" in line]
    return ["wslifecycle." + p.removesuffix(".py").replace("/", ".") for p in paths]


def environment(site: pathlib.Path) -> dict[str, str]:
    """The environment that imports wslifecycle from ``site``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def not_compiled(site: pathlib.Path) -> list[str]:
    """The modules of :func:`compiled_names` that import from source from ``site``."""
    names = compiled_names()
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    if importlib.import_module(name).__file__.endswith('.py'): print(name)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code],
        env=environment(site),
        cwd=tempfile.gettempdir(),  # not the checkout: nothing but site may provide wslifecycle
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.split()


def build(quiet: bool = True) -> pathlib.Path:
    """The directory holding the compiled wslifecycle package (built if needed)."""
    site = CACHE / _digest()
    if (site / "wslifecycle").is_dir():
        return site
    with tempfile.TemporaryDirectory() as wheels:
        command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"]
        command += ["-w", wheels, str(ROOT)]
        env = dict(os.environ, WSLIFECYCLE_COMPILE="1")
        done = subprocess.run(command, env=env, capture_output=quiet, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout or "")[-3000:] if quiet else ""
            raise RuntimeError(f"the compiled build failed (exit {done.returncode}):\n{tail}")
        (wheel,) = pathlib.Path(wheels).glob("*.whl")
        partial = site.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial)
        partial.rename(site)
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compiled", description=__doc__)
    parser.add_argument("--test", action="store_true", help="run tests/core and tests/wire on it")
    args = parser.parse_args(argv)
    site = build()
    missing = not_compiled(site)
    if missing:
        print(f"compiled build in {site}: NOT compiled: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"compiled build in {site}: {', '.join(compiled_names())}")
    if not args.test:
        return 0
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["tests/core", "tests/wire"]
    env = environment(site)
    env["WSL_COMPILED"] = "1"  # tests that differ on a compiled build read it
    return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
