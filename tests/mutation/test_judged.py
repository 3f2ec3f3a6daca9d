"""The equivalent-mutant ledger (docs/mutation.md) is read as it is written."""

from __future__ import annotations

from pathlib import Path

from tests.mutation import judged

DOC = Path(__file__).resolve().parents[2] / "docs" / "mutation.md"

DIFF = """\
--- wslifecycle/wire/frames.py
+++ wslifecycle/wire/frames.py
@@ -2,5 +2,5 @@
     self._done = True
-    if first & 0x70 or second & 0x80 != mask_bit:
+    if first | 0x70 or  second & 0x80 != mask_bit:
     return x
"""


def test_every_row_of_the_ledger_is_read_with_its_change() -> None:
    """Each row naming a mutant parses, and each mutmut mutant's row gives its change."""
    rows = [
        line
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `wslifecycle.")
    ]
    listed = judged.read(DOC)
    assert len(listed) == len(rows) > 0
    assert all(change for name, change in listed.items() if "__mutmut_" in name)


def test_a_change_is_its_mutated_lines_with_spaces_collapsed() -> None:
    assert judged.change_of(DIFF) == "if first | 0x70 or second & 0x80 != mask_bit:"
    removal = "--- a\n+++ a\n@@ -1 +1 @@\n     match x:\n-        case _:\n-            f()\n"
    assert judged.change_of(removal) == "deleted: case _: ⏎ f()"


def test_a_change_with_a_bar_survives_the_table_cell(tmp_path: Path) -> None:
    """A ``|`` in a change is escaped in its cell and read back unescaped."""
    change = judged.change_of(DIFF)
    doc = tmp_path / "m.md"
    doc.write_text(
        f"| `wslifecycle.a.x_f__mutmut_1` | {judged.cell(change)} | a `x \\| y` reason |\n"
    )
    assert judged.read(doc) == {"wslifecycle.a.x_f__mutmut_1": change}
