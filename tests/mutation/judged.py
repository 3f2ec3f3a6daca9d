"""The ledger of equivalent mutants in docs/mutation.md, held to the code.

A row names a mutant, the change it makes and why no test can see it::

    | `wslifecycle.heartbeat.x_f__mutmut_3` | `return a <= b` | why |

mutmut numbers a function's mutants in order, so when the function changes
the same name can stand for another change. A row therefore counts only while
its change is still the mutant's: otherwise the survivor is shown again, to
be judged anew. The change is the mutated line(s) of ``mutmut show``
(the ``+`` lines, spaces collapsed; ``deleted: <line>`` when the mutant only
removes code); a ``|`` inside it is written ``\\|`` (a Markdown table cell).
Table mutants (``tests/mutation/tables.py``) are named by their change, so
their rows leave the change empty.

``python -m tests.mutation.judged NAME ...``, run in a work directory, prints
each mutant's change as JSON: the runner's way of asking mutmut in one process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROW = re.compile(r"^\|\s*`(wslifecycle\.[^`]+)`\s*\|\s*(?:`(.*?)`)?\s*\|(.*)\|\s*$")
_MODULE = re.compile(r"^(.*?)\.x[_ǁ]")


def read(doc: Path) -> dict[str, str]:
    """Each listed mutant → the change its row says it makes."""
    if not doc.exists():
        return {}
    found = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            found[match.group(1)] = (match.group(2) or "").replace("\\|", "|")
    return found


def change_of(diff: str) -> str:
    """The change a mutant makes, from its unified diff."""
    body = [line for line in diff.splitlines() if not line.startswith(("+++", "---", "@@"))]
    added = [" ".join(line[1:].split()) for line in body if line.startswith("+")]
    if added:
        return " ⏎ ".join(added)
    removed = [" ".join(line[1:].split()) for line in body if line.startswith("-")]
    return "deleted: " + " ⏎ ".join(removed)


def cell(change: str) -> str:
    """A change as a Markdown table cell."""
    return "`" + change.replace("|", "\\|") + "`" if change else ""


def changes(workdir: Path, names: list[str]) -> dict[str, str]:
    """The current change of each mutmut mutant in ``names`` (table mutants:
    the empty string), asked of mutmut in one process in ``workdir``."""
    mutmut = [n for n in names if "__mutmut_" in n]
    found = dict.fromkeys(names, "")
    if mutmut:
        out = subprocess.run(
            [sys.executable, "-m", "tests.mutation.judged", *mutmut],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found.update(json.loads(out))
    return found


def _main(names: list[str]) -> None:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    found = {}
    for name in names:
        match = _MODULE.match(name)
        assert match, f"not a mutmut mutant name: {name}"
        path = Path(*match.group(1).split(".")).with_suffix(".py")
        if not path.exists():  # a package's __init__.py
            path = path.with_suffix("") / "__init__.py"
        try:
            found[name] = change_of(get_diff_for_mutant(name, path=path))
        except FileNotFoundError:  # the function is gone
            found[name] = "(no such mutant)"
    print(json.dumps(found))


if __name__ == "__main__":
    _main(sys.argv[1:])
