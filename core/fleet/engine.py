"""The fleet engine: one sequence per channel, seen in order, with no hole
that is not announced.

:class:`Fleet` sits between the relay (a client's subscribe, publish,
members) and a broker (:mod:`wslifecycle.fleet.ops`). It keeps, for each
channel this node serves, its subscribers and, for each subscriber, a
cursor: the last seq of the channel's sequence that reached it. One rule
guards every delivery (:meth:`Fleet._deliver`): a message goes to a
subscriber only if it is the next one after its cursor; if it is further
on, a ``drift`` notice saying what was lost goes first. Whatever the cause
of a hole (a slow client whose send was skipped, a Redis outage, a Redis
that came back empty with a new epoch, history too short for a resume), the
client hears of it; no cause can make a silent one.

Before that rule the node tries to fill holes: a live message that skips
ahead of what the node saw (pub/sub lost while Redis reconnected) is held
while the missing ones are fetched from history. A resume (``since``)
replays history before live messages; live messages that arrive meanwhile
wait in the subscriber's queue.

Presence: a subscriber joins the channel's presence when attached and
leaves it in teardown before the close frame (the wire waits for the
broker's answer: :meth:`Fleet.release`). Members that asked for them get
``join`` and ``leave`` events.

Everything the engine writes goes to wires (``wire.send``); the wires it
wrote to are collected for the driver to flush (:meth:`Fleet.take_touched`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable

from ..broker import Broker
from ..metrics import Metrics
from ..transitions import State
from ..wire.connection import ServerConnection
from .ops import (
    Answer,
    Attach,
    Detach,
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

__all__ = ["BEHIND_CHECK", "MAX_HELD", "Fleet", "encode"]

encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: A subscriber's queue of live messages while its resume is answered; past
#: it, the oldest are dropped and the hole is announced with ``drift``.
MAX_HELD = 10_000

#: While a subscriber has unannounced skips, its buffer is looked at this
#: often (seconds) so the drift goes out when it drains, even if no
#: further message comes.
BEHIND_CHECK = 0.25


class _State(enum.Enum):
    WAITING = "waiting"  # the node does not listen to the channel yet (or Redis is down)
    ATTACHING = "attaching"  # Attach sent, its Window not yet back
    LIVE = "live"


_LIVE = _State.LIVE
_ACTIVE = State.ACTIVE


class _Sub:
    """One connection's subscription to one channel."""

    __slots__ = (
        "alerted",
        "announce",
        "channel",
        "cursor",
        "epoch",
        "held",
        "presence",
        "since",
        "since_epoch",
        "state",
        "wire",
    )

    def __init__(
        self,
        wire: ServerConnection,
        channel: str,
        since: int | None,
        since_epoch: str | None,
        presence: bool,
        announce: bool,
    ) -> None:
        self.wire = wire
        self.channel = channel
        self.state = _State.WAITING
        self.since = since
        self.since_epoch = since_epoch
        self.presence = presence
        self.announce = announce  # answer ``subscribed`` (the relay's clients)
        self.epoch: str | None = None
        self.cursor = 0  # last seq of ``epoch`` that reached the client (or was announced lost)
        self.alerted = False  # a "slow" drift went out since the last delivered message
        self.held: list[Live] = []


class _Channel:
    """What this node knows of one channel."""

    __slots__ = (
        "epoch",
        "fetching",
        "held",
        "last",
        "listen_sent",
        "listening",
        "name",
        "prefix",
        "subs",
        "suspect",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.subs: dict[ServerConnection, _Sub] = {}
        self.listen_sent = False
        self.listening = False
        self.epoch: str | None = None
        self.last = 0  # the highest seq of ``epoch`` this node has fanned out
        self.fetching = False  # a Fetch is filling a hole; live messages wait in ``held``
        self.held: list[Live] = []
        self.suspect = False  # Redis went away: messages may have been missed
        self.prefix = '{"type":"message","channel":' + encode(name) + ',"seq":'


class Fleet:
    """Pub/sub for one node, over a broker; see the module docstring."""

    def __init__(
        self,
        broker: Broker,
        *,
        new_epoch: Callable[[], str],
        presence_ttl: float,
        metrics: Metrics | None = None,
    ) -> None:
        """``metrics``: where outages, failed publishes and drift notices are
        counted (the hub's scheduler's)."""
        self.broker = broker
        self.metrics = metrics or Metrics()
        self._new_epoch = new_epoch
        self._refresh_every = presence_ttl / 3
        self._next_refresh: float | None = None
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[int, tuple[str, object, object]] = {}
        self._next_id = 0
        self._touched: dict[ServerConnection, None] = {}
        # Subscribers with skipped messages not yet announced → the last one skipped.
        self._behind: dict[_Sub, Live] = {}
        self._next_check: float | None = None
        #: Grows whenever :meth:`next_wakeup` may have moved (the hub adds it
        #: to its own ``changes``, which drivers watch to re-arm their timer).
        self.changes = 0
        self._releasing: dict[ServerConnection, int] = {}  # Detach answers still awaited
        self._releasing_now: ServerConnection | None = None
        self._released: list[ServerConnection] = []
        self._sync_answer: Answer | None = None
        #: When the broker went down (None while up), and why.
        self.down_since: float | None = None
        self.down_reason: str | None = None
        broker.bind(self)

    # ------------------------------------------------------------ the node

    def start(self, now: float) -> None:
        """Connect the broker (Redis: the first attempt) and arm the refresh timer."""
        self._next_refresh = now + self._refresh_every
        self.changes += 1
        self.broker.start(now)

    def next_wakeup(self) -> float | None:
        # Leases are renewed only while this node has subscribers.
        wakeup = self._next_refresh if self._channels else None
        for other in (self.broker.next_wakeup(), self._next_check if self._behind else None):
            if other is not None and (wakeup is None or other < wakeup):
                wakeup = other
        return wakeup

    def handle_timer(self, now: float) -> None:
        """Renew this node's presence leases every third of the TTL; the
        broker's own deadlines (reconnects) too."""
        due = self._next_refresh
        if due is not None and due <= now:
            self._next_refresh = now + self._refresh_every
            self.broker.sweep(now)
            if self.broker.up:
                for channel in self._channels.values():
                    self._refresh(now, channel)
        self.broker.handle_timer(now)
        check = self._next_check
        if self._behind and check is not None and check <= now:
            self._catch_up_behind(now)
            self._next_check = now + BEHIND_CHECK
        self.changes += 1

    def take_touched(self) -> list[ServerConnection]:
        """Wires written to since the last call: flush each."""
        touched = list(self._touched)
        self._touched.clear()
        return touched

    def touch(self, wire: ServerConnection) -> None:
        """``wire`` has output to flush (listed by :meth:`take_touched`)."""
        self._touched[wire] = None

    def take_released(self) -> list[ServerConnection]:
        """Wires whose deferred release (:meth:`release` returned False) is
        now done: call ``wire.channels_released(now)`` on each."""
        released = self._released
        self._released = []
        return released

    @property
    def degraded(self) -> bool:
        return not self.broker.up

    def channel_sizes(self) -> dict[str, int]:
        """This node's subscribers per channel (those that can be sent to)."""
        sizes = {
            name: sum(1 for wire in channel.subs if wire.lifecycle.accepts_sends)
            for name, channel in self._channels.items()
        }
        return {name: size for name, size in sizes.items() if size}

    def local_members(self, channel: str) -> list[ServerConnection]:
        """This node's subscribers of ``channel`` that can still be sent to."""
        found = self._channels.get(channel)
        if found is None:
            return []
        return [wire for wire in found.subs if wire.lifecycle.accepts_sends]

    # --------------------------------------------------------- the clients

    def subscribe(
        self,
        now: float,
        wire: ServerConnection,
        channel: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        presence: bool = False,
        announce: bool = True,
    ) -> None:
        """``wire`` joins ``channel``; it is answered ``subscribed`` with the
        channel's current seq once the broker has it, after a replay of the
        messages after ``since`` (or a ``drift``). Again on a channel it is
        in: a new resume from ``since``."""
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(channel)
            self.changes += 1  # the lease renewal may be armed now
        state.subs.pop(wire, None)  # again: a new resume (an answer to the old one is ignored)
        sub = _Sub(wire, channel, since, epoch, presence, announce)
        state.subs[wire] = sub
        if not self.broker.up:
            return  # attached when Redis is back
        if state.listening:
            self._attach(now, state, sub)
        elif not state.listen_sent:
            state.listen_sent = True
            self.broker.submit(now, Listen(channel))

    def unsubscribe(self, now: float, wire: ServerConnection, channel: str) -> None:
        """``wire`` leaves ``channel`` (and its presence)."""
        state = self._channels.get(channel)
        if state is None:
            return
        sub = state.subs.pop(wire, None)
        if sub is not None and sub.state is not _State.WAITING and self.broker.up:
            self._submit(now, "detach", None, None, _detach(channel, wire.id))
        self._forget_if_empty(now, state)

    def release(self, wire: ServerConnection, channels: Iterable[str], now: float) -> bool:
        """Teardown: ``wire`` leaves ``channels`` at once on this node, and
        their presence in the broker. True when that is done; False when the
        broker answers later: then the wire is listed by
        :meth:`take_released` once it has (or has failed to: the lease runs out)."""
        releasing = self._releasing
        self._releasing_now = wire  # answered at once (in memory): not listed later
        try:
            for name in channels:
                state = self._channels.get(name)
                if state is None:
                    continue
                sub = state.subs.pop(wire, None)
                if sub is not None and sub.state is not _State.WAITING and self.broker.up:
                    releasing[wire] = releasing.get(wire, 0) + 1
                    self._submit(now, "release", wire, None, _detach(name, wire.id))
                self._forget_if_empty(now, state)
        finally:
            self._releasing_now = None
        return wire not in releasing

    def publish(
        self, now: float, channel: str, data: object, origin: ServerConnection | None
    ) -> Answer | None:
        """Store ``data`` as the channel's next message, for every subscriber
        in the fleet; ``origin`` (the publishing client, if any) is answered
        ``published`` or ``error``. Returns the broker's answer when it came
        at once (in memory), else None.

        While the broker is down the message reaches this node's subscribers
        only, unsequenced (``"local":true``), and the publisher is answered
        with an error that says so: it is never dropped silently."""
        text = encode(data)
        if not self.broker.up:
            delivered = self._fan_local(now, channel, text)
            self.metrics.publish_failures += 1
            reason = f"not published to the fleet: {self.down_reason or 'broker down'}"
            if origin is not None:
                self._reply(
                    now,
                    origin,
                    {
                        "type": "error",
                        "channel": channel,
                        "reason": reason,
                        "local_receivers": delivered,
                    },
                )
            return Failed(reason)
        self._sync_answer = None
        self._submit(
            now, "publish", origin, channel, lambda i: Publish(i, channel, text, self._new_epoch())
        )
        answer, self._sync_answer = self._sync_answer, None
        return answer

    def members(self, now: float, wire: ServerConnection, channel: str) -> None:
        """Answer ``wire`` with the channel's members across the fleet (this
        node's only, ``"partial":true``, while the broker is down)."""
        if not self.broker.up:
            self._answer_members(now, wire, channel, None)
            return
        self._submit(now, "members", wire, channel, lambda i: Members(i, channel))

    # -------------------------------------------------------- the broker

    def answer(self, now: float, op_id: int, answer: Answer) -> None:
        kind, who, what = self._pending.pop(op_id)
        if kind == "publish":
            self._published(now, who, what, answer)  # type: ignore[arg-type]
        elif kind == "attach":
            self._attached(now, who, what, answer)  # type: ignore[arg-type]
        elif kind == "fetch":
            self._filled(now, who, answer)  # type: ignore[arg-type]
        elif kind == "members":
            self._answer_members(now, who, what, answer)  # type: ignore[arg-type]
        elif kind == "release":
            wire: ServerConnection = who  # type: ignore[assignment]
            left = self._releasing[wire] - 1
            if left:
                self._releasing[wire] = left
            else:
                del self._releasing[wire]
                if wire is not self._releasing_now:
                    self._released.append(wire)
        # "detach", "refresh": nothing waits on them

    def event(self, now: float, event: Event) -> None:
        state = self._channels.get(event.channel)
        if state is None:
            return
        if isinstance(event, Live):
            self._live(now, state, event)
        else:
            self._presence(now, state, event)

    def listening(self, now: float, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None or not state.listen_sent:
            return
        state.listening = True
        if state.suspect:
            state.suspect = False
            if state.epoch is not None:
                self._fetch(now, state)
        for sub in list(state.subs.values()):
            if sub.state is _State.WAITING:
                self._attach(now, state, sub)

    def broker_up(self, now: float) -> None:
        """Listen again to every channel; renew every lease; the channels
        that may have missed messages are fetched once listened to."""
        self.down_since = None
        self.down_reason = None
        self.metrics.broker_up = True
        for state in list(self._channels.values()):
            state.listen_sent = True
            self.broker.submit(now, Listen(state.name))
            self._refresh(now, state)

    def broker_down(self, now: float, reason: str) -> None:
        """Every channel may miss messages from now on: they are fetched (or
        announced with ``drift``) when the broker is back."""
        if self.down_since is None:
            self.metrics.broker_outages += 1
            self.metrics.broker_up = False
            self.down_since = now
        self.down_reason = reason
        for state in self._channels.values():
            state.listening = False
            state.listen_sent = False
            state.suspect = True

    # ---------------------------------------------------------- internals

    def _submit(
        self, now: float, kind: str, who: object, what: object, make: Callable[[int], Op]
    ) -> None:
        self._next_id += 1
        op_id = self._next_id
        self._pending[op_id] = (kind, who, what)
        self.broker.submit(now, make(op_id))

    def _attach(self, now: float, state: _Channel, sub: _Sub) -> None:
        sub.state = _State.ATTACHING
        # A resume asks for the whole history: a stale epoch is replayed from its start.
        since = None if sub.since is None else 0
        name = state.name
        self._submit(
            now,
            "attach",
            sub,
            state,
            lambda i: Attach(i, name, sub.wire.id, since, self._new_epoch()),
        )

    def _fetch(self, now: float, state: _Channel) -> None:
        state.fetching = True
        name, after = state.name, state.last
        self._submit(now, "fetch", state, None, lambda i: Fetch(i, name, after, self._new_epoch()))

    def _refresh(self, now: float, state: _Channel) -> None:
        ids = tuple(sub.wire.id for sub in state.subs.values() if sub.state is _State.LIVE)
        if ids:
            name = state.name
            self._submit(now, "refresh", None, None, lambda i: Refresh(i, name, ids))

    def _forget_if_empty(self, now: float, state: _Channel) -> None:
        if not state.subs:
            del self._channels[state.name]
            if state.listen_sent and self.broker.up:
                self.broker.submit(now, Unlisten(state.name))

    def _published(
        self, now: float, origin: ServerConnection | None, channel: str, answer: Answer
    ) -> None:
        self._sync_answer = answer
        if isinstance(answer, Stored):
            reply: dict[str, object] = {
                "type": "published",
                "channel": channel,
                "seq": answer.seq,
                "receivers": answer.receivers,
            }
        else:
            self.metrics.publish_failures += 1
            reason = answer.reason if isinstance(answer, Failed) else "unexpected answer"
            if isinstance(answer, Failed) and answer.lost:
                reason += " (the message may have been stored)"
            reply = {"type": "error", "channel": channel, "reason": f"publish failed: {reason}"}
        if origin is not None:
            self._reply(now, origin, reply)

    def _attached(self, now: float, sub: _Sub, state: _Channel, answer: Answer) -> None:
        if state.subs.get(sub.wire) is not sub:
            return  # unsubscribed or released meanwhile (its Detach follows in order)
        if not isinstance(answer, Window):
            sub.state = _State.WAITING  # the broker went down: attached when it is back
            sub.held.clear()
            return
        if not any(other.state is _State.LIVE for other in state.subs.values()):
            # Nobody here follows the live stream yet: it starts after this window.
            if state.epoch != answer.epoch:
                state.epoch, state.last = answer.epoch, answer.top
            elif answer.top > state.last:
                state.last = answer.top
        wire = sub.wire
        if sub.announce:
            subscribed = {"type": "subscribed", "channel": state.name, "seq": answer.top}
            self._reply(now, wire, {**subscribed, "epoch": answer.epoch})
        sub.epoch = answer.epoch
        sub.state = _State.LIVE
        since = sub.since
        replay: Iterable[tuple[int, str]] = ()
        if since is None:
            sub.cursor = answer.top
        else:
            stale = since > answer.top or (
                sub.since_epoch is not None and sub.since_epoch != answer.epoch
            )
            if stale or since < answer.oldest - 1:
                self._drift(
                    now, sub, "epoch" if stale else "history", since, answer.oldest, critical=True
                )
                replay, sub.cursor = answer.entries, answer.oldest - 1
            else:
                replay, sub.cursor = (e for e in answer.entries if e[0] > since), since
        prefix = state.prefix
        for seq, data in replay:
            self._deliver(
                now,
                sub,
                Live(state.name, answer.epoch, seq, data),
                f'{prefix}{seq},"data":{data}}}',
            )
        held, sub.held = sub.held, []
        for live in held:
            self._deliver(now, sub, live, f'{prefix}{live.seq},"data":{live.data}}}')

    def _filled(self, now: float, state: _Channel, answer: Answer) -> None:
        if self._channels.get(state.name) is not state:
            return
        state.fetching = False
        held, state.held = state.held, []
        if not isinstance(answer, Window):
            for live in held:  # no history to fill from: the rule announces the holes
                state.epoch, state.last = live.epoch, live.seq
                self._fan(now, state, live)
            return
        if answer.epoch != state.epoch:
            first = answer.entries[0][0] if answer.entries else answer.top + 1
            if first > answer.oldest:
                # The sequence restarted and was asked from the old numbering,
                # so the window starts past what history holds (or is empty):
                # ask again from its start, so all of that is replayed.
                state.epoch, state.last = answer.epoch, 0
                state.held = held
                self._fetch(now, state)
                return
            state.epoch, state.last = answer.epoch, 0
        for seq, data in answer.entries:
            if seq > state.last:
                state.last = seq
                self._fan(now, state, Live(state.name, answer.epoch, seq, data))
        state.last = max(state.last, answer.top)
        # What history no longer holds is said now, not at the next message
        # (there may be none).
        for sub in list(state.subs.values()):
            if sub.state is _State.LIVE and (sub.epoch != answer.epoch or sub.cursor < answer.top):
                reason = (
                    "epoch" if sub.epoch != answer.epoch else "slow" if sub.alerted else "outage"
                )
                if self._drift(
                    now, sub, reason, sub.cursor, answer.top + 1, epoch=answer.epoch, critical=True
                ):
                    sub.epoch, sub.cursor = answer.epoch, answer.top
        for live in held:
            self._live(now, state, live)

    def _live(self, now: float, state: _Channel, live: Live) -> None:
        if state.fetching:
            state.held.append(live)
            return
        if state.epoch == live.epoch:
            last = state.last
            if live.seq <= last:
                return  # seen (a replayed fill and its live copy)
            if live.seq > last + 1 and last and self.broker.up:
                state.held.append(live)
                self._fetch(now, state)
                return
        state.epoch, state.last = live.epoch, live.seq
        self._fan(now, state, live)

    def _fan(self, now: float, state: _Channel, live: Live) -> None:
        text = f'{state.prefix}{live.seq},"data":{live.data}}}'
        seq, epoch, touched = live.seq, live.epoch, self._touched
        for sub in list(state.subs.values()):
            if sub.state is _LIVE:
                wire = sub.wire
                # The common case, inline (fan-out to thousands): the next
                # message, sent; anything else goes through the whole rule.
                if (
                    sub.cursor == seq - 1
                    and sub.epoch == epoch
                    and not sub.alerted
                    and (wire.lifecycle.state is _ACTIVE)
                ):
                    touched[wire] = None
                    if wire.send(text, now) is not None:
                        sub.cursor = seq
                    else:
                        self._skipped(now, sub, live)
                    continue
                self._deliver(now, sub, live, text)
            elif sub.state is _State.ATTACHING:
                held = sub.held
                held.append(live)
                if len(held) > MAX_HELD:
                    del held[0]  # the rule announces the hole at the next delivery

    def _deliver(self, now: float, sub: _Sub, live: Live, text: str) -> None:
        """The one rule: the next message after the cursor, or a drift first."""
        wire = sub.wire
        if not wire.lifecycle.accepts_sends:
            return
        seq = live.seq
        if sub.epoch != live.epoch:
            if not self._drift(now, sub, "epoch", sub.cursor, seq, epoch=live.epoch):
                self._fell_behind(now, sub, live)
                return
            sub.epoch = live.epoch
            sub.cursor = seq - 1
        elif seq <= sub.cursor:
            return
        elif seq > sub.cursor + 1:
            if not self._drift(now, sub, "slow" if sub.alerted else "outage", sub.cursor, seq):
                self._fell_behind(now, sub, live)
                return
            sub.cursor = seq - 1
        self._touched[wire] = None
        if wire.send(text, now) is None:
            self._skipped(now, sub, live)
            return
        sub.cursor = seq
        sub.alerted = False
        self._behind.pop(sub, None)

    def _skipped(self, now: float, sub: _Sub, live: Live) -> None:
        """``live`` did not go out to ``sub`` (the write-buffer guard)."""
        if sub.wire.lifecycle.cause is not None:
            return  # the send ended it (slow consumer): nothing more to say
        if not sub.alerted:
            # Said at once, past the guard, once per run of skips.
            sub.alerted = True
            self._drift(now, sub, "slow", sub.cursor, live.seq + 1, critical=True)
            sub.cursor = live.seq  # critical, below max_write_buffer: it went out
        else:
            self._fell_behind(now, sub, live)

    def _fell_behind(self, now: float, sub: _Sub, live: Live) -> None:
        """``live`` was skipped with nothing said: said when it fits, at the
        next delivery or when the buffer drains (:meth:`_catch_up_behind`)."""
        if not sub.wire.lifecycle.accepts_sends:
            return
        behind = self._behind
        if not behind:
            self._next_check = now + BEHIND_CHECK
            self.changes += 1
        known = behind.get(sub)
        # The furthest skip is what must be said (a replay's queued live
        # copies may be skipped after later seqs were).
        if known is None or known.epoch != live.epoch or known.seq < live.seq:
            behind[sub] = live

    def _catch_up_behind(self, now: float) -> None:
        """Subscribers with unannounced skips: those whose buffer has drained
        below the guard are told now."""
        for sub, skipped in list(self._behind.items()):
            state = self._channels.get(sub.channel)
            if (
                not sub.wire.lifecycle.accepts_sends
                or state is None
                or state.subs.get(sub.wire) is not sub
            ):
                del self._behind[sub]
            else:
                reason = "slow" if skipped.epoch == sub.epoch else "epoch"
                oldest = skipped.seq + 1
                if self._drift(now, sub, reason, sub.cursor, oldest, epoch=skipped.epoch):
                    sub.epoch, sub.cursor = skipped.epoch, skipped.seq
                    sub.alerted = False

    def _drift(
        self,
        now: float,
        sub: _Sub,
        reason: str,
        since: int,
        oldest: int,
        *,
        epoch: str | None = None,
        critical: bool = False,
    ) -> bool:
        """Tell ``sub``'s client that messages after ``since`` and before
        ``oldest`` will not reach it. False if the notice was skipped (slow)."""
        wire = sub.wire
        if not wire.lifecycle.accepts_sends:
            return False
        text = encode(
            {
                "type": "drift",
                "channel": sub.channel,
                "since": since,
                "oldest": oldest,
                "epoch": epoch or sub.epoch,
                "reason": reason,
            }
        )
        self._touched[wire] = None
        if wire.send(text, now, critical=critical, sequenced=False) is None:
            return False
        self.metrics.drift_notices[reason] += 1
        # A drift says where the stream goes on from now: skips before it
        # that were waiting to be said are covered.
        self._behind.pop(sub, None)
        return True

    def _presence(self, now: float, state: _Channel, event: Presence) -> None:
        text = encode(
            {"type": "join" if event.joined else "leave", "channel": state.name, "id": event.member}
        )
        for sub in state.subs.values():
            wire = sub.wire
            if (
                sub.presence
                and sub.state is _State.LIVE
                and wire.id != event.member
                and (wire.lifecycle.accepts_sends)
            ):
                wire.send(text, now, sequenced=False)
                self._touched[wire] = None

    def _fan_local(self, now: float, channel: str, text: str) -> int:
        state = self._channels.get(channel)
        if state is None:
            return 0
        message = (
            '{"type":"message","channel":'
            + encode(channel)
            + ',"local":true,"data":'
            + (text + "}")
        )
        delivered = 0
        for sub in list(state.subs.values()):
            wire = sub.wire
            if sub.state is _State.LIVE and wire.lifecycle.accepts_sends:
                self._touched[wire] = None
                if wire.send(message, now) is not None:
                    delivered += 1
        return delivered

    def _answer_members(
        self, now: float, wire: ServerConnection, channel: str, answer: Answer | None
    ) -> None:
        if isinstance(answer, Ids):
            reply: dict[str, object] = {
                "type": "members",
                "channel": channel,
                "ids": list(answer.ids),
            }
        else:
            ids = [member.id for member in self.local_members(channel)]
            reply = {"type": "members", "channel": channel, "ids": ids, "partial": True}
        self._reply(now, wire, reply)

    def _reply(self, now: float, wire: ServerConnection, message: dict[str, object]) -> None:
        # Critical: an answer to the client's own request is never skipped (a
        # lost ``subscribed`` would leave it without a position); a client
        # that asks without reading is bounded by max_write_buffer.
        if wire.lifecycle.accepts_sends:
            wire.send(encode(message), now, critical=True, sequenced=False)
            self._touched[wire] = None


def _detach(channel: str, member: str) -> Callable[[int], Op]:
    return lambda op_id: Detach(op_id, channel, member)
