"""Test-wide settings.

Hypothesis: under CI (``CI`` set) examples are derandomized, so a landing run
is reproducible; locally each run explores new examples. No test relies on
wall-clock deadlines.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_make_parametrize_id(config: object, val: object, argname: str) -> str | None:
    """Plain-ASCII ids for text and bytes with other characters (``é`` x 62
    reads ``U+00E9x62``). pytest would escape them (``\\xe9``), and an escaped
    id given back on the command line is not always found again; the mutation
    run (tests/mutation) selects tests by id."""
    if isinstance(val, str | bytes) and not _plain(val):
        return _ascii_id(val)
    return None


def _plain(val: str | bytes) -> bool:
    text = val.decode("latin-1") if isinstance(val, bytes) else val
    return all(" " <= ch <= "~" and ch != "\\" for ch in text)


def _ascii_id(val: str | bytes) -> str:
    text = val.decode("latin-1") if isinstance(val, bytes) else val
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        run = 1
        while i + run < len(text) and text[i + run] == ch:
            run += 1
        if " " <= ch <= "~" and ch != "\\":
            out.append(ch * run)
        else:
            out.append(f"0x{ord(ch):02X}" if isinstance(val, bytes) else f"U+{ord(ch):04X}")
            if run > 1:
                out.append(f"x{run}")
        i += run
    return "".join(out)
