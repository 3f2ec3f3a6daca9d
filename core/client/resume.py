"""What a client must say again after a reconnect: :class:`Subscriptions`.

The relay protocol (``relay.py``, docs/fleet.md) numbers each channel's
messages with one sequence, named by an epoch. The client keeps, for each
channel it wants, the last seq it has seen and the epoch, from the frames
that carry them:

* ``subscribed`` (seq S, epoch E): a fresh subscription starts after S; a
  resume keeps its own seq (the replay up to S follows);
* ``message`` (seq N): the next one; a seq at or below the last seen is a
  duplicate and is dropped, so the application sees each seq once;
* ``drift`` (oldest M, epoch E): the messages before M will not come; the
  next is M, in epoch E.

After a reconnect, :meth:`Subscriptions.connected` returns one ``subscribe``
per wanted channel, with ``since`` and ``epoch`` when a seq is known: the
server replays what history holds and says ``drift`` for the rest. A channel
subscribed while disconnected is sent on the next connection; one dropped
while disconnected is simply not sent again. Every request goes out exactly
once per connection (the property tests hold it across any drops).
"""

from __future__ import annotations

import dataclasses
import json

__all__ = ["ChannelCursor", "RelayFrame", "Subscriptions"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclasses.dataclass(slots=True)
class ChannelCursor:
    """Where a wanted channel stands."""

    presence: bool = False
    #: The last seq seen (None: nothing yet, the next subscribe starts fresh).
    seq: int | None = None
    epoch: str | None = None
    #: Subscribed on the current connection (the request was sent).
    sent: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RelayFrame:
    """A relay frame the client read (``kind`` is its type); ``duplicate``:
    a message already seen, not for the application."""

    kind: str
    channel: str | None
    body: dict[str, object]
    duplicate: bool = False


class Subscriptions:
    """The channels a client wants and how far it has read each."""

    __slots__ = ("_connected", "cursors", "duplicates")

    def __init__(self) -> None:
        self.cursors: dict[str, ChannelCursor] = {}
        self._connected = False
        #: Messages dropped as already seen.
        self.duplicates = 0

    def subscribe(self, channel: str, *, presence: bool = False) -> str | None:
        """Want ``channel``; the request to send now, or None (not
        connected, or already subscribed on this connection)."""
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"a channel is a non-empty str, got {channel!r}")
        cursor = self.cursors.get(channel)
        if cursor is None:
            self.cursors[channel] = cursor = ChannelCursor(presence=presence)
        elif cursor.presence != presence:
            cursor.presence = presence
            cursor.sent = False  # asked again, with the new presence flag
        if not self._connected or cursor.sent:
            return None
        cursor.sent = True
        return self._request(channel, cursor)

    def unsubscribe(self, channel: str) -> str | None:
        """Stop wanting ``channel``; the request to send now, or None."""
        cursor = self.cursors.pop(channel, None)
        if cursor is None or not self._connected or not cursor.sent:
            return None
        return _encode({"type": "unsubscribe", "channel": channel})

    def connected(self) -> list[str]:
        """A connection is up: every wanted channel's request, resumes with
        ``since``/``epoch`` where a seq is known."""
        self._connected = True
        requests = []
        for channel, cursor in self.cursors.items():
            cursor.sent = True
            requests.append(self._request(channel, cursor))
        return requests

    def disconnected(self) -> None:
        """The connection is gone: nothing is subscribed until the next."""
        self._connected = False
        for cursor in self.cursors.values():
            cursor.sent = False

    def read(self, data: str | bytes) -> RelayFrame | None:
        """Note what a frame from the server says about a channel's seq.
        None: not a relay frame (any other message, passed on as it is)."""
        if not isinstance(data, str) or not data.startswith('{"type":"'):
            return None
        try:
            body = json.loads(data)  # an object: the text starts with "{"
        except (ValueError, RecursionError):
            return None
        kind = body.get("type")
        channel = body.get("channel")
        if not isinstance(kind, str):
            return None
        if not isinstance(channel, str):
            return RelayFrame(kind, None, body)
        cursor = self.cursors.get(channel)
        seq = body.get("seq")
        if cursor is None or (not isinstance(seq, int) and kind != "drift"):
            return RelayFrame(kind, channel, body)
        if kind == "message" and isinstance(seq, int):
            if cursor.seq is not None and seq <= cursor.seq:
                self.duplicates += 1
                return RelayFrame(kind, channel, body, duplicate=True)
            cursor.seq = seq
        elif kind == "subscribed" and isinstance(seq, int):
            # A fresh subscription starts after ``seq``; a resume keeps its
            # own (the replay follows, or a drift that moves it).
            if cursor.seq is None:
                cursor.seq = seq
            epoch = body.get("epoch")
            cursor.epoch = epoch if isinstance(epoch, str) else None
        elif kind == "drift":
            oldest = body.get("oldest")
            epoch = body.get("epoch")
            if isinstance(oldest, int) and not isinstance(oldest, bool):
                cursor.seq = oldest - 1
            if isinstance(epoch, str):
                cursor.epoch = epoch
        return RelayFrame(kind, channel, body)

    def _request(self, channel: str, cursor: ChannelCursor) -> str:
        request: dict[str, object] = {"type": "subscribe", "channel": channel}
        if cursor.seq is not None:
            request["since"] = cursor.seq
            if cursor.epoch is not None:
                request["epoch"] = cursor.epoch
        if cursor.presence:
            request["presence"] = True
        return _encode(request)
