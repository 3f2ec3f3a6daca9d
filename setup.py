"""The optional compiled build of the core's hot path (mypyc).

Everything else about the package is in pyproject.toml; this file only adds
extension modules, and only when asked:

    WSLIFECYCLE_COMPILE=1 pip install --no-build-isolation .

mypy (which brings mypyc; the dev extras have it) and a C compiler must be
installed. Not with ``-e``: an editable install would put the compiled
modules beside core/'s sources, where they would shadow them. Without the
variable the install is pure Python, as the tests' coverage gate and the
mutation runs need (coverage cannot see into a compiled module; mutmut
patches source files). The compiled build answers to the same tests:
CI runs tests/core and tests/wire against a wheel built this way
(tests/bench/compiled.py), on a bool-for-int difference see tests/_build.py.

The modules are the heartbeat's per-ping and per-pong path: the timer's
scheduler and decision, the hub's tick, the lone-pong check. mypyc compiles
each module from its own source, unchanged: no rule has a second copy. The
wire's connection classes stay interpreted: the hub keeps weak references
to them, which mypyc's native classes do not support.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]  # no stubs installed

#: The modules compiled, as paths under core/ (the package wslifecycle).
COMPILED = (
    "scheduler.py",
    "lifecycle.py",
    "hub.py",
    "heartbeat.py",
    "metrics.py",
    "transitions.py",
    "wire/frames.py",
)


def _extensions() -> list[object]:
    if os.environ.get("WSLIFECYCLE_COMPILE") != "1":
        return []
    if "editable_wheel" in sys.argv:
        raise SystemExit("WSLIFECYCLE_COMPILE=1 is for `pip install .`, not an editable install")
    from mypyc.build import mypycify

    # mypyc names a module after its path: stage core/ as wslifecycle/ so the
    # compiled modules are wslifecycle.scheduler etc., as installed.
    here = Path(__file__).resolve().parent
    stage = here / "build" / "mypyc-src"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(here / "core", stage / "wslifecycle")
    cwd = os.getcwd()
    os.chdir(stage)
    try:
        paths = [f"wslifecycle/{name}" for name in COMPILED]
        return list(
            mypycify(paths, opt_level="3", target_dir=str(stage / "c"), group_name="wslifecycle")
        )
    finally:
        os.chdir(cwd)


setup(ext_modules=_extensions())
