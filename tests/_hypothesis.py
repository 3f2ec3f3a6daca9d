"""Scale Hypothesis budgets: ``WSL_EXAMPLES_SCALE=20 bash .ci/test`` for a long
run; the mutation run (tests/mutation) uses a fraction, since it runs the same
tests once per mutant."""

from __future__ import annotations

import os

SCALE = float(os.environ.get("WSL_EXAMPLES_SCALE", "1"))


def examples(base: int) -> int:
    """``base`` examples, times WSL_EXAMPLES_SCALE; never fewer than 5."""
    return max(5, round(base * SCALE))
