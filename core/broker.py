"""Pub/sub membership: which connections hear which channel.

:class:`Broker` is the small interface; :class:`InMemoryBroker` is the one
process implementation (a broker for several processes implements the same
four methods). Members are whatever the hub registers (its wire
connections); the broker only keeps sets.

Teardown calls :meth:`Broker.release` before the close frame, synchronously,
so once it returns no publish can reach the member: no message may reach a
connection after its subscriptions are released (docs/theory.md, teardown).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["Broker", "InMemoryBroker"]

M = TypeVar("M")


class Broker(Protocol[M]):
    """Channel membership for one server."""

    def subscribe(self, member: M, channel: str) -> None:
        """Add ``member`` to ``channel`` (no effect if already there)."""

    def unsubscribe(self, member: M, channel: str) -> None:
        """Remove ``member`` from ``channel`` (no effect if absent)."""

    def release(self, member: M, channels: Iterable[str]) -> None:
        """Remove ``member`` from every one of ``channels``, now."""

    def members(self, channel: str) -> list[M]:
        """The members of ``channel``, in the order they joined."""


class InMemoryBroker(Generic[M]):
    """Membership in dictionaries (insertion-ordered, so fan-out is
    deterministic). A channel with no members is forgotten."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[str, dict[M, None]] = {}

    def subscribe(self, member: M, channel: str) -> None:
        self._channels.setdefault(channel, {})[member] = None

    def unsubscribe(self, member: M, channel: str) -> None:
        members = self._channels.get(channel)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._channels[channel]

    def release(self, member: M, channels: Iterable[str]) -> None:
        for channel in channels:
            self.unsubscribe(member, channel)

    def members(self, channel: str) -> list[M]:
        members = self._channels.get(channel)
        return list(members) if members else []

    def channels(self) -> list[str]:
        """Every channel with at least one member."""
        return list(self._channels)
