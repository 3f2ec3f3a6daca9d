"""The Lua the fleet runs in Redis, and the names it uses there.

Each op is one script, so it is atomic: a message's seq, its history entry
and its pub/sub notice happen together, which is why every node sees a
channel's messages in seq order. Times inside Redis come from Redis's own
clock (``TIME``), so leases mean the same on every node whatever their
clocks say. Keys of one channel share a hash tag (``{channel}``).

Keys and channels (docs/fleet.md lists them for operators):

* ``wsl:{C}:meta``: hash ``epoch`` (names the sequence), ``seq`` (the last one);
* ``wsl:{C}:history``: list of ``seq|ms|data``, oldest first, bounded by
  count and age;
* ``wsl:{C}:presence``: sorted set, member = connection id, score = the
  Redis time (ms) its lease runs out;
* pub/sub ``wsl:{C}:events``: ``m|epoch|seq|data``, ``j|id``, ``l|id``.
"""

from __future__ import annotations

import hashlib

from .link import Script

__all__ = [
    "ATTACH",
    "DETACH",
    "MEMBERS",
    "PREFIX",
    "PUBLISH",
    "REFRESH",
    "SCRIPTS",
    "events_channel",
    "keys",
]

PREFIX = "wsl:"


def keys(channel: str) -> tuple[str, str, str]:
    """The meta, history and presence keys of ``channel``."""
    base = f"{PREFIX}{{{channel}}}"
    return f"{base}:meta", f"{base}:history", f"{base}:presence"


def events_channel(channel: str) -> str:
    """The Redis pub/sub channel that carries ``channel``'s events."""
    return f"{PREFIX}{{{channel}}}:events"


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A meta hash that had to be made anew means the sequence was lost (Redis
# restarted empty, failed over, evicted it): a new epoch, and any history
# left from the old sequence is dropped so no old seq is served as new.
_META = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
"""

#: KEYS meta, history, presence; ARGV epoch?, meta_ttl_ms, data, history_size,
#: history_ttl_ms, events channel. Returns {epoch, seq, receivers}.
PUBLISH = _script(
    "publish",
    _NOW
    + _META
    + """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('RPUSH', KEYS[2], seq .. '|' .. now .. '|' .. ARGV[3])
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local receivers = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
redis.call('PUBLISH', ARGV[6], 'm|' .. epoch .. '|' .. seq .. '|' .. ARGV[3])
return {epoch, seq, receivers}
""",
)

#: KEYS meta, history, presence; ARGV epoch?, meta_ttl_ms, after ('' = none),
#: history_ttl_ms, member ('' = none), presence_ttl_ms, events channel.
#: Joins ``member`` (a join event if new); returns {epoch, top, oldest, entries}.
ATTACH = _script(
    "attach",
    _NOW
    + _META
    + """
local top = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local horizon = now - tonumber(ARGV[4])
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if not head or tonumber(string.match(head, '^%d+|(%d+)|')) >= horizon then break end
  redis.call('LPOP', KEYS[2])
end
local oldest = top + 1
local head = redis.call('LINDEX', KEYS[2], 0)
if head then oldest = tonumber(string.match(head, '^(%d+)|')) end
local entries = {}
if ARGV[3] ~= '' and tonumber(ARGV[3]) < top then
  entries = redis.call('LRANGE', KEYS[2], math.max(tonumber(ARGV[3]) + 1, oldest) - oldest, -1)
end
if ARGV[5] ~= '' then
  if redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5]) == 1 then
    redis.call('PUBLISH', ARGV[7], 'j|' .. ARGV[5])
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return {epoch, top, oldest, entries}
""",
)

#: KEYS presence; ARGV member, events channel. A leave event if it was there.
DETACH = _script(
    "detach",
    """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], 'l|' .. ARGV[1])
end
return 1
""",
)

#: KEYS presence. The members whose lease has not run out.
MEMBERS = _script(
    "members",
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
""",
)

#: KEYS presence; ARGV presence_ttl_ms, events channel, member... Renews the
#: leases of these members (a join event for one that had lapsed) and drops
#: every lapsed lease (a leave event each: a node that died). Returns how
#: many were dropped.
REFRESH = _script(
    "refresh",
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('PUBLISH', ARGV[2], 'l|' .. member)
end
local expiry = now + tonumber(ARGV[1])
for i = 3, #ARGV do
  if redis.call('ZADD', KEYS[1], expiry, ARGV[i]) == 1 then
    redis.call('PUBLISH', ARGV[2], 'j|' .. ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #expired
""",
)

SCRIPTS = (PUBLISH, ATTACH, DETACH, MEMBERS, REFRESH)
