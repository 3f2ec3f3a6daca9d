"""The fleet's broker on Redis, sans-IO.

:class:`RedisBroker` turns the engine's ops into :class:`~wslifecycle.fleet.link.RedisCall`
values (the scripts of :mod:`~wslifecycle.fleet.scripts`), reads every
answer and pub/sub notice back into :mod:`~wslifecycle.fleet.ops` answers
and events, and decides when to connect: at start, and after a loss with
exponential backoff and full jitter (a random fraction of
``min(BACKOFF_CAP, BACKOFF_BASE × 2^attempt)``), so a fleet that lost Redis
does not reconnect in lockstep. A driver-side adapter (``drivers/_redis.py``)
carries out :meth:`RedisBroker.take_work` and hands back
:class:`~wslifecycle.fleet.link.LinkEvent` values to :meth:`RedisBroker.link_event`.

While Redis is not connected, every op is answered at once with
:class:`~wslifecycle.fleet.ops.Failed`: nothing waits on a Redis that is not there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from . import scripts
from .link import (
    Connected,
    Disconnected,
    LinkEvent,
    Listening,
    Message,
    RedisCall,
    RedisFailure,
    Replies,
    Reply,
)
from .ops import (
    Answer,
    Attach,
    BrokerSink,
    Detach,
    Done,
    Event,
    Failed,
    Fetch,
    Ids,
    Listen,
    Live,
    Members,
    Op,
    Presence,
    Publish,
    Refresh,
    Stored,
    Unlisten,
    Window,
)

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "META_TTL", "LinkWork", "RedisBroker"]

#: Reconnect delays grow from this (seconds)...
BACKOFF_BASE = 0.1
#: ...up to this, each drawn uniformly below the bound (full jitter).
BACKOFF_CAP = 5.0
#: How long a quiet channel's sequence (its epoch and last seq) outlives its
#: last publish; after that a new sequence starts, with a new epoch.
META_TTL = 30 * 24 * 3600.0
#: Past this many doublings BACKOFF_BASE is beyond any sane BACKOFF_CAP.
_MAX_EXPONENT = 64


@dataclasses.dataclass(slots=True)
class LinkWork:
    """What the adapter must do now."""

    connect: bool
    calls: list[RedisCall]
    subscribe: list[str]
    unsubscribe: list[str]

    def __bool__(self) -> bool:
        return bool(self.connect or self.calls or self.subscribe or self.unsubscribe)


class RedisBroker:
    """Channels' sequences, history and presence in one Redis, for a fleet of nodes.

    ``random``: a uniform draw in [0, 1) for the reconnect jitter (the core
    draws no randomness of its own)."""

    scripts = scripts.SCRIPTS

    def __init__(
        self,
        *,
        history_size: int,
        history_ttl: float,
        presence_ttl: float,
        random: Callable[[], float],
    ) -> None:
        self._history_size = str(history_size)
        self._history_ttl = str(max(1, round(history_ttl * 1000)))
        self._presence_ttl = str(max(1, round(presence_ttl * 1000)))
        self._meta_ttl = str(round(max(META_TTL, history_ttl) * 1000))
        self._random = random
        self._sink: BrokerSink | None = None
        self._up = False
        self._connecting = False
        self._attempt = 0
        self._retry_at: float | None = None
        self._work = LinkWork(False, [], [], [])
        self._inflight: dict[int, Op] = {}
        self._channels: dict[str, str] = {}  # pub/sub channel → channel
        #: Called when :meth:`take_work` has something new (a driver carries
        #: it out at once: the adapter's calls return without blocking).
        self.on_work: Callable[[], None] | None = None
        #: Why Redis is not connected (None while it is).
        self.down_reason: str | None = "not connected yet"

    # -------------------------------------------------------------- Broker

    @property
    def up(self) -> bool:
        return self._up

    def bind(self, sink: BrokerSink) -> None:
        self._sink = sink

    def start(self, now: float) -> None:
        self._connect()

    def sweep(self, now: float) -> None:
        """Redis expires what it holds itself."""

    def next_wakeup(self) -> float | None:
        return self._retry_at

    def handle_timer(self, now: float) -> None:
        retry = self._retry_at
        if retry is not None and retry <= now:
            self._retry_at = None
            self._connect()

    def submit(self, now: float, op: Op) -> None:
        if isinstance(op, Listen | Unlisten):
            if self._up:
                name = scripts.events_channel(op.channel)
                work = self._work
                if isinstance(op, Listen):
                    self._channels[name] = op.channel
                    add, drop = work.subscribe, work.unsubscribe
                else:
                    self._channels.pop(name, None)
                    add, drop = work.unsubscribe, work.subscribe
                # The adapter may (un)subscribe a batch in either order: the
                # last op on a channel wins, and a channel is never in both lists.
                if name in drop:
                    drop.remove(name)
                if name not in add:
                    add.append(name)
                self._wake()
            return
        if not self._up:
            self._sink_().answer(now, op.id, Failed(f"redis unavailable: {self.down_reason}"))
            return
        self._inflight[op.id] = op
        self._work.calls.append(self._call(op))
        self._wake()

    # ------------------------------------------------------------- adapter

    def take_work(self) -> LinkWork:
        """What the adapter must carry out now (then it is forgotten here)."""
        work = self._work
        self._work = LinkWork(False, [], [], [])
        return work

    def link_event(self, now: float, event: LinkEvent) -> None:
        """What the adapter saw happen."""
        sink = self._sink_()
        if isinstance(event, Message):
            channel = self._channels.get(event.channel)
            if channel is not None:
                decoded = _event(channel, event.payload)
                if decoded is not None:
                    sink.event(now, decoded)
        elif isinstance(event, Replies):
            for op_id, reply in event.replies:
                op = self._inflight.pop(op_id, None)
                if op is not None:
                    sink.answer(now, op_id, _answer(op, reply))
        elif isinstance(event, Listening):
            channel = self._channels.get(event.channel)
            if channel is not None:
                sink.listening(now, channel)
        elif isinstance(event, Connected):
            self._connecting = False
            self._up = True
            self._attempt = 0
            self.down_reason = None
            sink.broker_up(now)
        else:
            self._lost(now, event)

    # ----------------------------------------------------------- internals

    def _sink_(self) -> BrokerSink:
        sink = self._sink
        assert sink is not None, "bind() first"
        return sink

    def _connect(self) -> None:
        if not self._connecting and not self._up:
            self._connecting = True
            self._work.connect = True
            self._wake()

    def _wake(self) -> None:
        if self.on_work is not None:
            self.on_work()

    def _lost(self, now: float, event: Disconnected) -> None:
        was_up = self._up
        self._up = False
        self._connecting = False
        self.down_reason = event.reason
        self._channels.clear()
        self._work = LinkWork(False, [], [], [])
        inflight, self._inflight = self._inflight, {}
        sink = self._sink_()
        for op_id in inflight:  # the adapter fails them first; this is a safety net
            sink.answer(now, op_id, Failed(event.reason, lost=True))
        # The exponent is bounded: past the cap it no longer matters, and an
        # outage of ~1000 attempts would overflow a float otherwise.
        bound = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(self._attempt, _MAX_EXPONENT))
        self._attempt += 1
        self._retry_at = now + bound * self._random()
        if was_up or self._attempt == 1:
            sink.broker_down(now, event.reason)

    def _call(self, op: Publish | Attach | Fetch | Detach | Members | Refresh) -> RedisCall:
        meta, history, presence = scripts.keys(op.channel)
        events = scripts.events_channel(op.channel)
        if isinstance(op, Publish):
            return RedisCall(
                op.id,
                scripts.PUBLISH,
                (meta, history, presence),
                (op.epoch, self._meta_ttl, op.data, self._history_size, self._history_ttl, events),
            )
        if isinstance(op, Attach | Fetch):
            after = op.since if isinstance(op, Attach) else op.after
            member = op.member if isinstance(op, Attach) else ""
            return RedisCall(
                op.id,
                scripts.ATTACH,
                (meta, history, presence),
                (
                    op.epoch,
                    self._meta_ttl,
                    "" if after is None else str(after),
                    self._history_ttl,
                    member,
                    self._presence_ttl,
                    events,
                ),
            )
        if isinstance(op, Detach):
            return RedisCall(op.id, scripts.DETACH, (presence,), (op.member, events))
        if isinstance(op, Members):
            return RedisCall(op.id, scripts.MEMBERS, (presence,), ())
        return RedisCall(
            op.id, scripts.REFRESH, (presence,), (self._presence_ttl, events, *op.members)
        )


def _answer(op: Op, reply: Reply) -> Answer:
    """What a script's reply means for ``op``."""
    if isinstance(reply, RedisFailure):
        return Failed(reply.reason, reply.lost)
    try:
        if isinstance(op, Publish):
            epoch, seq, receivers = reply  # type: ignore[misc]
            return Stored(_text(epoch), _int(seq), _int(receivers))
        if isinstance(op, Attach | Fetch):
            epoch, top, oldest, raw = reply  # type: ignore[misc]
            entries = []
            for entry in raw:  # type: ignore[union-attr]
                seq, _, data = _text(entry).split("|", 2)
                entries.append((int(seq), data))
            return Window(_text(epoch), _int(top), _int(oldest), tuple(entries))
        if isinstance(op, Members):
            return Ids(tuple(_text(member) for member in reply))  # type: ignore[union-attr]
    except (TypeError, ValueError) as error:
        return Failed(f"unexpected reply from redis: {error}")
    return Done()


def _event(channel: str, payload: bytes) -> Event | None:
    """A pub/sub notice; None for one this version does not know."""
    try:
        text = payload.decode("utf-8")
        kind, _, rest = text.partition("|")
        if kind == "m":
            epoch, seq, data = rest.split("|", 2)
            return Live(channel, epoch, int(seq), data)
    except ValueError:
        return None
    if kind in ("j", "l") and rest:
        return Presence(channel, rest, kind == "j")
    return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"expected bytes, got {value!r}")


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected an integer, got {value!r}")
