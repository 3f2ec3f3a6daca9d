"""A driver's side of the fleet: the Redis broker bound to its adapter.

When ``Config.redis_url`` is set, :func:`redis_broker` makes the sans-IO
:class:`~wslifecycle.fleet.redis.RedisBroker` the hub runs on, and
:class:`FleetLink` binds it to a :class:`~wslifecycle.drivers._redis.RedisLink`
on the driver's loop: what the broker asks is handed to the adapter at once
(its calls only queue), and what the adapter saw comes back as events on
the loop (``hop``: the driver's way in from another thread), after which
the wires the fleet wrote to are flushed and the timer re-armed. Every
decision stays in the core; this only moves calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from wslifecycle import Config
from wslifecycle.fleet.link import LinkEvent
from wslifecycle.fleet.redis import RedisBroker
from wslifecycle.hub import Hub

__all__ = ["FleetLink", "FleetServer", "Hop", "redis_broker"]

#: Wraps a handler of link events so it runs on the driver's loop.
Hop = Callable[[Callable[[LinkEvent], None]], Callable[[LinkEvent], None]]

_jitter = random.SystemRandom()


def redis_broker(config: Config) -> RedisBroker | None:
    """The broker for ``config.redis_url``, if one is set."""
    if config.redis_url is None:
        return None
    return RedisBroker(
        history_size=config.history_size,
        history_ttl=config.history_ttl,
        presence_ttl=config.presence_ttl,
        random=_jitter.random,
    )


class FleetServer(Protocol):
    """What the link needs of its server."""

    hub: Hub

    def now(self) -> float: ...

    def flush_fleet(self, now: float) -> None: ...

    def _rearm(self) -> None: ...


class FleetLink:
    """One node's connection to the fleet's Redis, on any driver."""

    __slots__ = ("_broker", "_link", "_server")

    def __init__(self, server: FleetServer, broker: RedisBroker, url: str, hop: Hop) -> None:
        from ._redis import RedisLink  # needs the redis extra: imported only when used

        self._server = server
        self._broker = broker
        self._link = RedisLink(url, broker.scripts, hop(self._on_event))
        broker.on_work = self._carry_out

    def start(self) -> None:
        """Connect now (the hub's first attempt); the fleet decides the rest."""
        server = self._server
        server.hub.start(server.now())
        self._carry_out()
        server._rearm()

    def close(self) -> None:
        self._broker.on_work = None
        self._link.close()

    def _carry_out(self) -> None:
        work = self._broker.take_work()
        link = self._link
        if work.connect:
            link.connect()
        if work.subscribe or work.unsubscribe:
            link.listen(work.subscribe, work.unsubscribe)
        if work.calls:
            link.send(work.calls)

    def _on_event(self, event: LinkEvent) -> None:
        server = self._server
        now = server.now()
        self._broker.link_event(now, event)
        server.flush_fleet(now)
        server._rearm()
