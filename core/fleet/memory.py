"""The broker of one node: sequences, history and presence in this process.

The default: a node with no Redis. It answers every op at once (inside
:meth:`InMemoryBroker.submit`) with what :class:`~wslifecycle.fleet.redis.RedisBroker`
answers later, so the engine runs one code path either way and resume,
``drift`` and presence mean the same on one node as on a fleet.
"""

from __future__ import annotations

from collections import deque

from .ops import (
    Attach,
    BrokerSink,
    Detach,
    Done,
    Fetch,
    Ids,
    Listen,
    Live,
    Members,
    Op,
    Presence,
    Publish,
    Stored,
    Unlisten,
    Window,
)

__all__ = ["InMemoryBroker"]


class _Log:
    """One channel's sequence: its epoch, last seq, recent history, members."""

    __slots__ = ("epoch", "history", "members", "top", "touched")

    def __init__(self, epoch: str, size: int, now: float) -> None:
        self.epoch = epoch
        self.top = 0
        self.history: deque[tuple[int, float, str]] = deque(maxlen=size)
        self.members: dict[str, None] = {}  # join order
        self.touched = now  # last publish or join, for forgetting idle channels


class InMemoryBroker:
    """Channel sequences of one process. ``history_size`` messages per
    channel, each kept ``history_ttl`` seconds; a channel with no members
    and no publish for ``history_ttl`` is forgotten (its next sequence has
    a new epoch, so a stale ``since`` gets ``drift``, never a wrong replay)."""

    __slots__ = ("_history_size", "_history_ttl", "_listening", "_logs", "_next_sweep", "_sink")

    def __init__(self, history_size: int, history_ttl: float) -> None:
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._logs: dict[str, _Log] = {}
        self._listening: set[str] = set()
        self._sink: BrokerSink | None = None
        self._next_sweep = 0.0

    def bind(self, sink: BrokerSink) -> None:
        self._sink = sink

    @property
    def up(self) -> bool:
        return True

    def start(self, now: float) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        """Nothing to let go of."""

    def next_wakeup(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        """No timer of its own (:meth:`sweep` runs on the engine's)."""

    def submit(self, now: float, op: Op) -> None:
        sink = self._sink
        assert sink is not None, "bind() first"
        if now >= self._next_sweep:
            self.sweep(now)
        if isinstance(op, Listen):
            self._listening.add(op.channel)
            sink.listening(now, op.channel)
        elif isinstance(op, Unlisten):
            self._listening.discard(op.channel)
        elif isinstance(op, Publish):
            log = self._log(op.channel, op.epoch, now)
            log.top += 1
            log.history.append((log.top, now, op.data))
            log.touched = now
            # Delivered before the publisher's answer, as Redis usually does.
            if op.channel in self._listening:
                sink.event(now, Live(op.channel, log.epoch, log.top, op.data))
            sink.answer(now, op.id, Stored(log.epoch, log.top, len(log.members)))
        elif isinstance(op, Attach):
            log = self._log(op.channel, op.epoch, now)
            window = self._window(log, op.since, now)
            joined = op.member not in log.members
            log.members[op.member] = None
            log.touched = now
            sink.answer(now, op.id, window)
            if joined and op.channel in self._listening:
                sink.event(now, Presence(op.channel, op.member, True))
        elif isinstance(op, Fetch):
            sink.answer(
                now, op.id, self._window(self._log(op.channel, op.epoch, now), op.after, now)
            )
        elif isinstance(op, Detach):
            found = self._logs.get(op.channel)
            left = found is not None and found.members.pop(op.member, 0) is None
            sink.answer(now, op.id, Done())
            if left and op.channel in self._listening:
                sink.event(now, Presence(op.channel, op.member, False))
        elif isinstance(op, Members):
            found = self._logs.get(op.channel)
            sink.answer(now, op.id, Ids(tuple(found.members) if found else ()))
        else:  # Refresh: one process holds no leases
            sink.answer(now, op.id, Done())

    def sweep(self, now: float) -> None:
        """Drop channels with no members and nothing published for ``history_ttl``."""
        horizon = now - self._history_ttl
        self._next_sweep = now + self._history_ttl
        idle = [
            name for name, log in self._logs.items() if not log.members and log.touched < horizon
        ]
        for name in idle:
            del self._logs[name]

    def _log(self, channel: str, epoch: str, now: float) -> _Log:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _Log(epoch, self._history_size, now)
        return log

    def _window(self, log: _Log, after: int | None, now: float) -> Window:
        history = log.history
        horizon = now - self._history_ttl
        while history and history[0][1] < horizon:
            history.popleft()
        oldest = history[0][0] if history else log.top + 1
        if after is None or after >= log.top:
            entries: tuple[tuple[int, str], ...] = ()
        else:
            start = max(after + 1, oldest) - oldest
            entries = tuple((seq, data) for seq, _, data in list(history)[start:])
        return Window(log.epoch, log.top, oldest, entries)
