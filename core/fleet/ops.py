"""What the fleet asks of a broker, and what a broker answers and tells.

A broker is where a channel's sequence, history and presence live: one
process (:class:`~wslifecycle.fleet.memory.InMemoryBroker`) or Redis
(:class:`~wslifecycle.fleet.redis.RedisBroker`). The fleet engine
(:class:`~wslifecycle.fleet.engine.Fleet`) sends it :data:`Op` values and
hears back, through a :class:`BrokerSink`:

* an :data:`Answer` to each op that has an ``id`` (at once in memory, when
  Redis replies otherwise);
* :data:`Event` values: every message stored on a channel the node listens
  to, whichever node published it, and presence joins and leaves;
* whether the broker is up (:meth:`BrokerSink.broker_up` /
  :meth:`BrokerSink.broker_down`) and which channels it listens to.

Every id in a channel's sequence is assigned where the message is stored,
so all nodes see one order; an ``epoch`` names the sequence (a new one when
the store lost it, so an old seq is never compared with a new one).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

__all__ = [
    "Answer",
    "Attach",
    "BrokerSink",
    "Detach",
    "Done",
    "Event",
    "Failed",
    "Fetch",
    "Ids",
    "Listen",
    "Live",
    "Members",
    "Op",
    "Presence",
    "Publish",
    "Refresh",
    "Stored",
    "Unlisten",
    "Window",
]


# ------------------------------------------------------------------- ops


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    """Deliver this channel's :class:`Live` and :class:`Presence` events to this node."""

    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class Unlisten:
    """Stop delivering this channel's events."""

    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class Publish:
    """Store ``data`` (JSON text) as the channel's next message; answered :class:`Stored`.
    ``epoch`` names the sequence if the channel has none yet."""

    id: int
    channel: str
    data: str
    epoch: str


@dataclasses.dataclass(frozen=True, slots=True)
class Attach:
    """``member`` joins the channel's presence; answered :class:`Window` with
    the messages after ``since`` (none when None)."""

    id: int
    channel: str
    member: str
    since: int | None
    epoch: str


@dataclasses.dataclass(frozen=True, slots=True)
class Fetch:
    """The channel's messages after ``after``; answered :class:`Window`."""

    id: int
    channel: str
    after: int
    epoch: str


@dataclasses.dataclass(frozen=True, slots=True)
class Detach:
    """``member`` leaves the channel's presence; answered :class:`Done`."""

    id: int
    channel: str
    member: str


@dataclasses.dataclass(frozen=True, slots=True)
class Members:
    """The channel's members across the fleet; answered :class:`Ids`."""

    id: int
    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refresh:
    """Renew the presence lease of this node's ``members`` of the channel
    (and drop members whose lease ran out, with a leave event); answered :class:`Done`."""

    id: int
    channel: str
    members: tuple[str, ...]


Op = Listen | Unlisten | Publish | Attach | Fetch | Detach | Members | Refresh


# --------------------------------------------------------------- answers


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """The message is ``seq`` of sequence ``epoch``; ``receivers``: the
    channel's members across the fleet when it was stored."""

    epoch: str
    seq: int
    receivers: int


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """A channel's sequence as the store holds it: ``top`` is the last seq
    (0: none yet), ``oldest`` the first one history still holds (``top + 1``
    when it holds none), ``entries`` the (seq, data) asked for, in order."""

    epoch: str
    top: int
    oldest: int
    entries: tuple[tuple[int, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Ids:
    """Member ids (connection ids), in no particular order across nodes."""

    ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Done:
    """The op took effect."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failed:
    """The op did not answer. ``lost``: the connection broke with it in
    flight, so it may have taken effect."""

    reason: str
    lost: bool = False


Answer = Stored | Window | Ids | Done | Failed


# ---------------------------------------------------------------- events


@dataclasses.dataclass(frozen=True, slots=True)
class Live:
    """Message ``seq`` of ``epoch`` was stored on ``channel`` (by any node)."""

    channel: str
    epoch: str
    seq: int
    data: str


@dataclasses.dataclass(frozen=True, slots=True)
class Presence:
    """``member`` joined (or left) ``channel``."""

    channel: str
    member: str
    joined: bool


Event = Live | Presence


class BrokerSink(Protocol):
    """What a broker tells the fleet (implemented by the engine)."""

    def answer(self, now: float, op_id: int, answer: Answer) -> None: ...

    def event(self, now: float, event: Event) -> None: ...

    def listening(self, now: float, channel: str) -> None:
        """Events of ``channel`` now reach this node (after :class:`Listen`)."""

    def broker_up(self, now: float) -> None:
        """The broker (re)connected: nothing is listened to, presence must
        be renewed, and messages may have been missed meanwhile."""

    def broker_down(self, now: float, reason: str) -> None:
        """The broker is unreachable: ops are failed until it is up again."""
