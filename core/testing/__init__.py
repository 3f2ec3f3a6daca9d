"""Helpers for people who embed the core (and for our own tests).

* :class:`FakeClock`: time that moves only when told;
* :func:`seeded_entropy`: ids and probe payloads from a seed;
* :class:`Simulation` and :class:`ScriptedPeer`: drive a scheduler and its
  lifecycles through scripted remote ends, and read the :class:`Trace`;
* :mod:`wslifecycle.testing.strategies`: Hypothesis strategies for configs and
  events (imported separately; it needs the ``hypothesis`` package).
"""

from __future__ import annotations

from .clock import FakeClock
from .entropy import seeded_entropy
from .peer import ScriptedPeer, Simulation, Trace, TraceEntry

__all__ = ["FakeClock", "ScriptedPeer", "Simulation", "Trace", "TraceEntry", "seeded_entropy"]
