"""Which build of the core the tests run against.

``python -m tests.bench.compiled --test`` runs tests/core and tests/wire
against the compiled build (setup.py) with ``WSL_COMPILED=1``. mypyc checks
every argument against its annotation at the call, so a few validation tests
see a different, still loud, outcome there: a value of the wrong type is a
TypeError before the function's own ValueError, and a bool passed for an int
is taken as the int it is (mypyc unboxes it).
"""

from __future__ import annotations

import os

import pytest

COMPILED = os.environ.get("WSL_COMPILED") == "1"


def wrong_type_on_compiled(value: object, call: object) -> bool:
    """On the compiled build, check ``call()``'s outcome for a ``value`` that is
    not an int and return True (the test is done); False on the Python build."""
    if not COMPILED:
        return False
    if isinstance(value, bool):
        pytest.skip("the compiled build takes a bool for the int it is")
    if not isinstance(value, int):
        assert callable(call)
        with pytest.raises(TypeError):
            call()
        return True
    return False
