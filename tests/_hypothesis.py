"""Scale Hypothesis budgets: ``WSL_EXAMPLES_SCALE=20 bash .ci/test`` for a long run."""

from __future__ import annotations

import os

SCALE = max(1, int(os.environ.get("WSL_EXAMPLES_SCALE", "1")))


def examples(base: int) -> int:
    """``base`` examples, times WSL_EXAMPLES_SCALE."""
    return base * SCALE
