"""Fuzz the opening handshake (atheris, coverage-guided).

Invariant: for any bytes that start a connection, the wire never raises
anything; it waits, upgrades, or refuses with a documented status; and it
gives the same bytes, actions and messages whether the input arrives whole
or in the chunks the fuzzer chose.

    .venv/bin/python fuzz/handshake_fuzz.py fuzz/corpus/handshake -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import h11  # noqa: F401 - instrumented for coverage
    import wsproto  # noqa: F401

    from fuzz.common import check_output, feed, new_wire, split


def test_one_input(data: bytes) -> None:
    cuts, payload = data[:8], data[8:]
    whole = feed(new_wire(), [payload] if payload else [])
    chunked = feed(new_wire(), split(payload, cuts))
    assert whole == chunked, (whole, chunked)
    check_output(*whole)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
