"""The core stays pure: no I/O module, clock, thread or driver is imported by
any file under core/ (docs/theory.md), at any depth of the syntax tree."""

from __future__ import annotations

import ast
import pathlib

import pytest

CORE = pathlib.Path(__file__).resolve().parent.parent / "core"
BANNED = {"asyncio", "trio", "socket", "selectors", "threading", "time", "wslifecycle.drivers"}


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            names.add("importlib.import_module")
    return names


def is_banned(name: str) -> bool:
    return any(name == banned or name.startswith(banned + ".") for banned in BANNED)


def core_files() -> list[pathlib.Path]:
    return sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_file_imports_no_io(path: pathlib.Path) -> None:
    """No file in core/ imports asyncio, trio, socket, selectors, threading,
    time or a driver, nor imports anything dynamically."""
    relative = path.relative_to(CORE).with_suffix("")
    package = ".".join(("wslifecycle", *relative.parts[:-1]))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = imported_modules(tree, package)
    assert not {n for n in names if is_banned(n) or "import" in n.split(".")[-1:][0]}, names


def test_the_check_catches_a_banned_import() -> None:
    """The checker is not vacuous: it sees direct, dotted, relative and dynamic imports."""
    tree = ast.parse(
        "import time\nfrom asyncio import sleep\nfrom ..drivers import x\n__import__('socket')"
    )
    names = imported_modules(tree, "wslifecycle.wire")
    assert is_banned("time")
    assert "time" in names
    assert "asyncio" in names
    assert "wslifecycle.drivers" in names
    assert "__import__" in names


def test_importing_the_core_loads_no_driver_or_io_module() -> None:
    """At run time too: importing every core module loads no driver,
    asyncio, trio, socket or selectors."""
    import subprocess
    import sys

    modules = [
        "wslifecycle."
        + ".".join(p.relative_to(CORE).with_suffix("").parts).replace(".__init__", "")
        for p in core_files()
        if p.name != "strategies.py"  # hypothesis itself imports threading
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m.removesuffix('.__init__')}\n" for m in modules)
        + "bad = [m for m in ('wslifecycle.drivers', 'asyncio', 'trio', 'socket', 'selectors')"
        + " if m in sys.modules]\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
