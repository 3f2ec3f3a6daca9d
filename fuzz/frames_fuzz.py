"""Fuzz frames after a valid handshake (atheris, coverage-guided), with
permessage-deflate negotiated so inflation is fuzzed too.

Invariant: for any bytes after the upgrade, the wire never raises; it never
holds more than the message cap plus one read; every close code it writes is
sendable (never 1005, 1006, 1015); and input fed whole or in the chunks the
fuzzer chose gives the same bytes, actions and messages.

    .venv/bin/python fuzz/frames_fuzz.py fuzz/corpus/frames -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import wsproto  # noqa: F401 - instrumented for coverage

    from fuzz.common import check_output, feed, split, upgraded_wire


def test_one_input(data: bytes) -> None:
    cuts, payload = data[:8], data[8:]
    whole = feed(upgraded_wire(), [payload] if payload else [])
    chunked = feed(upgraded_wire(), split(payload, cuts))
    assert whole == chunked, (whole, chunked)
    check_output(*whole)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
