"""The pub/sub relay protocol of ``wslifecycle serve``: JSON over WebSocket.

Client → server (text messages, one JSON object each)::

    {"type": "subscribe",   "channel": "news"}
    {"type": "unsubscribe", "channel": "news"}
    {"type": "publish",     "channel": "news", "data": <any JSON>}
    {"type": "members",     "channel": "news"}
    {"type": "ack",         "seq": 41}            last server seq processed
    {"type": "heartbeat",   "id": "…"}            echo of an application heartbeat
                                                  (consumed by the lifecycle)

Server → client::

    {"type": "message", "channel": "news", "seq": 42, "data": <the JSON published>}
    {"type": "subscribed" | "unsubscribed", "channel": "news"}
    {"type": "published", "channel": "news", "receivers": 3}
    {"type": "members", "channel": "news", "ids": ["…", …]}
    {"type": "error", "reason": "…"}
    {"type": "heartbeat", "id": "…"}              application heartbeat: echo it
    {"type": "STATE_DRIFT", "serverSeq": 42, "clientSeq": 40}   before a close

Only ``message`` advances the connection's sequence number ``seq``; a client
that acks the last ``seq`` it processed gets a STATE_DRIFT notice at teardown
if it is behind. Anything that is not one of these requests (binary, other
text, unknown types) is echoed back unchanged, which is also what the
Autobahn conformance cases need.
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
    Returns the other wires that now have output (a publish fans out).

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
    receivers: list[ServerConnection] = []
    if kind == "subscribe":
        hub.subscribe(wire, channel)
        _reply(wire, now, {"type": "subscribed", "channel": channel})
    elif kind == "unsubscribe":
        hub.unsubscribe(wire, channel)
        _reply(wire, now, {"type": "unsubscribed", "channel": channel})
    elif kind == "members":
        ids = [member.lifecycle.id for member in hub.members(channel)]
        _reply(wire, now, {"type": "members", "channel": channel, "ids": ids})
    else:
        receivers = publish(hub, channel, request.get("data"), now)
        _reply(wire, now, {"type": "published", "channel": channel, "receivers": len(receivers)})
    return receivers


def publish(hub: Hub, channel: str, payload: object, now: float) -> list[ServerConnection]:
    """Deliver ``payload`` (any JSON value) to every member of ``channel``,
    each with its own next sequence number; returns the members that got it."""
    # Encode the shared parts once: fan-out to 10,000 members formats, it
    # does not serialise 10,000 times.
    head = '{"type":"message","channel":' + _encode(channel) + ',"seq":'
    tail = ',"data":' + _encode(payload) + "}"
    return hub.fan_out(channel, lambda member: f"{head}{member.lifecycle.seq + 1}{tail}", now)


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
