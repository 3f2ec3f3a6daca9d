"""What every wire has, server or client: ``WireBase``.

A wire turns one connection's lifecycle into bytes and driver actions. Both
sides keep the same three queues, emptied the same way: the bytes to write
(:meth:`~WireBase.data_to_send`), the actions for the driver
(:meth:`~WireBase.take_actions`), and the messages for the application, in
an :class:`~wslifecycle.inbox.Inbox` whose high-water mark pauses reading
the socket (an input of the lifecycle, so unread pongs blame nobody) and
whose low-water mark resumes it (:meth:`~WireBase.take_message`).
"""

from __future__ import annotations

from ..actions import Action
from ..config import Config
from ..inbox import Inbox
from ..lifecycle import ConnectionLifecycle

__all__ = ["WireBase"]


class WireBase:
    """The queues of a wire (see the module docstring)."""

    __slots__ = ("_actions", "_inbox", "_out", "lifecycle", "write_buffer_size")

    def __init__(self, lifecycle: ConnectionLifecycle) -> None:
        self.lifecycle = lifecycle
        self._out: list[bytes] = []
        self._actions: list[Action] = []
        self._inbox: Inbox | None = None  # made with the first message
        #: Bytes the transport still holds unsent; the driver keeps it current.
        #: It feeds the write-buffer guard (and a server's STATE_DRIFT rule).
        self.write_buffer_size = 0

    @property
    def reading_paused(self) -> bool:
        """True while the driver must not read the socket (the application is behind)."""
        return self.lifecycle.reading_paused

    @property
    def messages_waiting(self) -> int:
        """Messages queued for the application."""
        inbox = self._inbox
        return len(inbox) if inbox is not None else 0

    @property
    def buffered(self) -> int:
        """Outbound bytes not yet written: ours plus the transport's."""
        return self.write_buffer_size + sum(map(len, self._out))

    def take_message(self, now: float) -> str | bytes | None:
        """The application's next message (None: none waiting). Taking the
        queue down to ``inbox_low_water`` resumes reading."""
        inbox = self._inbox
        if inbox is None:
            return None
        message = inbox.take()
        lifecycle = self.lifecycle
        if lifecycle.reading_paused and inbox.caught_up:
            lifecycle.resume_reading(now)
        return message

    def queue_frame(self, frame: bytes) -> None:
        """Queue a frame built elsewhere (the hub's shared ping frame) to be
        written with the rest, in order."""
        self._out.append(frame)

    def data_to_send(self) -> bytes:
        """Every byte to write, in order; the buffer empties."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def take_actions(self) -> list[Action]:
        """What the driver must do, in order; the queue empties. Bytes are in
        :meth:`data_to_send`, messages in :meth:`take_message`."""
        actions = self._actions
        if not actions:
            return []
        self._actions = []
        return actions

    def _deliver(self, data: str | bytes, now: float, config: Config) -> None:
        """Queue a message for the application; at the high-water mark,
        stop reading the socket."""
        inbox = self._inbox
        if inbox is None:
            self._inbox = inbox = Inbox(config.inbox_high_water, config.inbox_low_water)
        if inbox.put(data):
            self.lifecycle.pause_reading(now)  # only while ACTIVE
