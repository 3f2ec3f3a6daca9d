"""What a broker is: where channels' sequences, history and presence live.

The fleet engine (:class:`~wslifecycle.fleet.engine.Fleet`) sends a broker
ops and hears answers and events back (:mod:`wslifecycle.fleet.ops`). Two
brokers ship: :class:`~wslifecycle.fleet.memory.InMemoryBroker` (one node,
the default) and :class:`~wslifecycle.fleet.redis.RedisBroker` (a fleet of
nodes on one Redis; sans-IO: a driver-side adapter moves its calls).

Teardown leaves a channel on this node at once, synchronously, so no
publish can reach a connection after its release; the broker's presence is
left before the close frame (docs/theory.md, teardown; docs/fleet.md).
"""

from __future__ import annotations

from typing import Protocol

from .fleet.memory import InMemoryBroker
from .fleet.ops import BrokerSink, Op

__all__ = ["Broker", "InMemoryBroker"]


class Broker(Protocol):
    """A broker as the fleet engine uses it."""

    @property
    def up(self) -> bool:
        """Ops can be carried out now (in memory: always)."""

    def bind(self, sink: BrokerSink) -> None:
        """Where answers, events and changes of ``up`` go (once, by the engine)."""

    def start(self, now: float) -> None:
        """Begin (Redis: the first connection attempt)."""

    def submit(self, now: float, op: Op) -> None:
        """Carry out ``op``; an op with an id is answered exactly once."""

    def sweep(self, now: float) -> None:
        """Periodic housekeeping (in memory: forget idle channels)."""

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: nothing pending)."""

    def handle_timer(self, now: float) -> None:
        """Deadlines of the broker's own (Redis: the next reconnect attempt)."""
