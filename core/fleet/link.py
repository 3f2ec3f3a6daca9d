"""The seam between the sans-IO fleet and the driver-side Redis adapter.

The fleet decides every byte of what goes to Redis (:class:`RedisCall`: a
Lua script from :mod:`wslifecycle.fleet.scripts` and its keys and
arguments) and what every answer means. An adapter only moves calls and
answers: it runs a :class:`RedisCall` as ``EVALSHA sha numkeys *keys
*args`` (the scripts are loaded with ``SCRIPT LOAD`` on every connect),
(un)subscribes Redis pub/sub channels, and hands back what happened as
:class:`LinkEvent` values, one at a time, on the driver's loop.

What an adapter promises (``drivers/_redis.py`` keeps it):

* ``connect()`` starts one attempt; it ends in :class:`Connected` (both the
  command and the pub/sub connection answered, scripts loaded) or
  :class:`Disconnected`. The fleet decides when to try again.
* Every call sent while connected gets exactly one answer in a
  :class:`Replies` event: the decoded reply (``bytes``, ``int``, ``None``
  or a list of those) or a :class:`RedisFailure`. When a connection breaks,
  the calls in flight are failed (``lost=True``: they may or may not have
  run) in one :class:`Replies`, then :class:`Disconnected` follows; nothing
  is retried behind the fleet's back.
* Channel subscriptions are confirmed one by one with :class:`Listening`,
  and only confirmed channels deliver :class:`Message`; after a reconnect
  nothing is subscribed until the fleet asks again.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

__all__ = [
    "Connected",
    "Disconnected",
    "Link",
    "LinkEvent",
    "Listening",
    "Message",
    "RedisCall",
    "RedisFailure",
    "Replies",
    "Reply",
    "Script",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """A Lua script the fleet runs in Redis (atomically, as every script)."""

    name: str
    source: str
    #: Its SHA-1, for ``EVALSHA`` (``SCRIPT LOAD`` returns the same).
    sha: str


@dataclasses.dataclass(frozen=True, slots=True)
class RedisCall:
    """``EVALSHA script.sha len(keys) *keys *args``; answered under ``id``."""

    id: int
    script: Script
    keys: tuple[str, ...]
    args: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RedisFailure:
    """A call that did not answer: Redis said an error, or the connection broke."""

    reason: str
    #: The connection broke with the call in flight: it may have run.
    lost: bool = False


#: What a call gave back, as redis-py decodes it with ``decode_responses=False``.
Reply = bytes | int | None | list["Reply"] | RedisFailure


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    """Both connections are up and the scripts are loaded."""


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnected:
    """A connection attempt failed or a live connection broke (both are closed)."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Replies:
    """Answers to earlier calls, in the order they were sent: (call id, reply)."""

    replies: list[tuple[int, Reply]]


@dataclasses.dataclass(frozen=True, slots=True)
class Listening:
    """Redis confirmed the subscription to ``channel``."""

    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A pub/sub message on a confirmed ``channel``."""

    channel: str
    payload: bytes


LinkEvent = Connected | Disconnected | Replies | Listening | Message


class Link(Protocol):
    """What a driver-side adapter offers the fleet (all calls return at once)."""

    def connect(self) -> None:
        """Start one connection attempt (no effect while one is up or under way)."""

    def send(self, calls: list[RedisCall]) -> None:
        """Run these calls, in order (pipelined)."""

    def listen(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        """Change the pub/sub subscriptions."""

    def close(self) -> None:
        """Close both connections and stop; no event follows."""
