"""docs/probe.md names every flag of ``wslifecycle probe`` and every field
of its JSON object, and no other."""

from __future__ import annotations

import argparse
import pathlib
import re

from wslifecycle.client import parse_url
from wslifecycle.drivers.cli import parser
from wslifecycle.drivers.probe import Settings, report

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "probe.md"


def section(heading: str) -> str:
    return DOC.read_text(encoding="utf-8").split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def first_cells(heading: str) -> list[str]:
    """The first cell of each row of the table under ``heading``."""
    rows = [line for line in section(heading).splitlines() if line.startswith("| `")]
    return [row.strip("|").split("|")[0].strip() for row in rows]


def test_every_flag_is_in_the_table_and_no_other() -> None:
    commands = next(
        action for action in parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    probe = commands.choices["probe"]
    flags = {
        option
        for action in probe._actions
        for option in action.option_strings
        if option not in ("--help", "-h")
    }
    documented = set()
    for cell in first_cells("Flags"):
        name = re.match(r"`(--[a-z-]+|URL)", cell)
        assert name is not None, cell
        documented.add(name[1])
    assert documented == flags | {"URL"}


def test_every_json_field_is_in_the_table_and_no_other() -> None:
    settings = Settings(target=parse_url("ws://h/"), healthy=1, silent=1, after=1.0, timeout=2.0)
    fields = {
        f"{name}.{inner}" if isinstance(value, dict) else name
        for name, value in report(settings, [], 0.0, 1.0).items()
        for inner in (value if isinstance(value, dict) else [None])
    }
    assert {cell.strip("`") for cell in first_cells("The JSON object")} == fields
