"""Deterministic entropy: the same seed gives the same ids and payloads."""

from __future__ import annotations

import itertools
import random

from ..entropy import Entropy

__all__ = ["seeded_entropy"]


def seeded_entropy(seed: int = 0) -> Entropy:
    """An :class:`~wslifecycle.Entropy` drawn from ``random.Random(seed)``.

    Ids are ``conn-<n>-<hex>``: the counter keeps them unique whatever the
    draw, the hex keeps them unpredictable enough to look real.
    """
    rng = random.Random(seed)
    counter = itertools.count(1)

    def connection_id() -> str:
        return f"conn-{next(counter)}-{rng.getrandbits(32):08x}"

    def probe_payload() -> bytes:
        return rng.getrandbits(64).to_bytes(8, "big")

    return Entropy(connection_id=connection_id, probe_payload=probe_payload)
