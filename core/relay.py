"""The pub/sub relay protocol of ``wslifecycle serve``: JSON over WebSocket.

Client → server (text messages, one JSON object each)::

    {"type": "subscribe",   "channel": "news"}
    {"type": "subscribe",   "channel": "news", "since": 41, "epoch": "…"}   resume
    {"type": "subscribe",   "channel": "news", "presence": true}           hear joins/leaves
    {"type": "unsubscribe", "channel": "news"}
    {"type": "publish",     "channel": "news", "data": <any JSON>}
    {"type": "members",     "channel": "news"}
    {"type": "ack",         "seq": 41}            messages processed on this connection
    {"type": "heartbeat",   "id": "…"}            echo of an application heartbeat
                                                  (consumed by the lifecycle)

Server → client::

    {"type": "message", "channel": "news", "seq": 42, "data": <the JSON published>}
    {"type": "subscribed", "channel": "news", "seq": 42, "epoch": "…"}
    {"type": "unsubscribed", "channel": "news"}
    {"type": "drift", "channel": "news", "since": 40, "oldest": 43, "epoch": "…",
     "reason": "slow" | "outage" | "epoch" | "history"}
    {"type": "published", "channel": "news", "seq": 43, "receivers": 3}
    {"type": "members", "channel": "news", "ids": ["…", …]}       (+ "partial": true)
    {"type": "join" | "leave", "channel": "news", "id": "…"}
    {"type": "error", "reason": "…"}                              (+ "channel")
    {"type": "heartbeat", "id": "…"}              application heartbeat: echo it
    {"type": "STATE_DRIFT", "serverSeq": 42, "clientSeq": 40}   before a close

A channel has one sequence across the fleet (``seq``, named by ``epoch``):
a subscriber gets its messages in order with no gap and no duplicate, and
any hole it cannot be given (it was too slow, Redis was away, history is
too short, the sequence restarted) is announced by ``drift``: the messages
after ``since`` and before ``oldest`` will not come. ``subscribed`` says the
seq the subscription starts from (a resume's replay ends there).

``ack`` counts the ``message`` frames a connection received; a client whose
last ``ack`` differs at teardown gets a STATE_DRIFT notice first. Anything
that is not one of these requests (binary, other text, unknown types) is
echoed back unchanged, which is also what the Autobahn conformance cases
need.
"""

from __future__ import annotations

import json

from .hub import Hub
from .wire.connection import ServerConnection

__all__ = ["MAX_CHANNEL_LENGTH", "handle_relay_message"]

MAX_CHANNEL_LENGTH = 200
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def handle_relay_message(
    hub: Hub, wire: ServerConnection, data: str | bytes, now: float
) -> list[ServerConnection]:
    """Act on one message from ``wire``'s client (see the module docstring).
    Returns the wires that now have output (``wire`` among them when the
    fleet answered at once; a publish fans out).

    Never raises for anything the client sends; raises ConnectionClosed only
    if ``wire`` itself is already closing (the caller stops then)."""
    request = _parse(data)
    if request is None:
        wire.send(data, now, sequenced=False)
        return []
    kind = request.get("type")
    if kind == "ack":
        seq = request.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
            wire.lifecycle.report_client_seq(now, seq)
        else:
            _reply(wire, now, {"type": "error", "reason": "ack needs a seq ≥ 0"})
        return []
    if kind not in ("subscribe", "unsubscribe", "publish", "members"):
        wire.send(data, now, sequenced=False)
        return []
    channel = request.get("channel")
    if not isinstance(channel, str) or not 0 < len(channel) <= MAX_CHANNEL_LENGTH:
        _reply(wire, now, {"type": "error", "reason": "a channel is a non-empty string"})
        return []
    if kind == "subscribe":
        since = request.get("since")
        epoch = request.get("epoch")
        presence = request.get("presence", False)
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or since < 0
        ):
            _reply(wire, now, {"type": "error", "channel": channel, "reason": "since is a seq ≥ 0"})
        elif epoch is not None and not isinstance(epoch, str):
            _reply(wire, now, {"type": "error", "channel": channel, "reason": "epoch is a string"})
        elif not isinstance(presence, bool):
            _reply(wire, now, {"type": "error", "channel": channel, "reason": "presence is a bool"})
        else:
            hub.subscribe(
                wire, channel, now, since=since, epoch=epoch, presence=presence, announce=True
            )
    elif kind == "unsubscribe":
        hub.unsubscribe(wire, channel, now)
        _reply(wire, now, {"type": "unsubscribed", "channel": channel})
    elif kind == "members":
        hub.fleet.members(now, wire, channel)
    else:
        hub.publish(channel, request.get("data"), now, origin=wire)
    return hub.take_output(now)


def _parse(data: str | bytes) -> dict[str, object] | None:
    if not isinstance(data, str) or not data.startswith("{"):
        return None
    try:
        request = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return request if isinstance(request, dict) else None


def _reply(wire: ServerConnection, now: float, message: dict[str, object]) -> None:
    wire.send(_encode(message), now, sequenced=False)
