"""The README's table of ``wslifecycle serve`` flags names every flag the
command line has, and no other, with the defaults the parser uses."""

from __future__ import annotations

import argparse
import pathlib
import re

from wslifecycle.drivers.cli import parser

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def serve_parser() -> argparse.ArgumentParser:
    commands = next(
        action for action in parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    serve: argparse.ArgumentParser = commands.choices["serve"]
    return serve


def table_rows() -> dict[str, str]:
    """Flag → the README's default cell, from the table under "The command line"."""
    section = README.read_text(encoding="utf-8").split("## The command line", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            for flag in re.findall(r"--[a-z][a-z-]*", cells[0]):
                rows[flag] = cells[1]
    return rows


def test_every_flag_is_in_the_readme_table_and_no_other() -> None:
    flags = {
        option
        for action in serve_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert set(table_rows()) == flags


def test_the_fleet_flags_show_the_parser_defaults() -> None:
    defaults = {action.option_strings[0]: action.default for action in serve_parser()._actions}
    rows = table_rows()
    for flag in ("--history-size", "--history-ttl", "--presence-ttl"):
        assert float(rows[flag]) == float(defaults[flag]), flag
    assert rows["--redis"] == "none"
    assert defaults["--redis"] is None
