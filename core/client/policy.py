"""When and how soon a client reconnects: :class:`ReconnectPolicy`, as data.

**Which endings reconnect.** The server's close code or HTTP status says
whether trying again can help:

* reconnect: 1001 (going away: a restart, a drain), 1005 (closed without a
  code), 1006 (no close frame: reset, refused TCP, a dead server, a
  handshake that timed out), 1011 (server error), 1012 (service restart),
  1013 (try again later), 1014 (bad gateway); HTTP 408, 429 and every 5xx
  (503: draining or full);
* stop: 1000 (the server ended the conversation on purpose), 1002, 1003,
  1007, 1008 (policy violation), 1009, 1010, 1015 (the TLS handshake
  failed: a certificate will not fix itself), every 3000-4999 application
  code; every other HTTP status (401, 403, 404, ...: asking again gets the
  same answer; a 3xx redirect is not followed); and whatever the
  application closed itself (``Outcome.local``).

**How soon: exponential backoff with full jitter.** The n-th retry in a row
(n = 0 first) waits a uniform draw from [0, min(max_delay, base_delay × 2ⁿ)].
Spreading each client over the whole window, rather than ±10 % around a
fixed delay, is what breaks a thundering herd: N clients dropped by one
restart come back at a rate of about N / window, not all at once, and the
window doubles while the server keeps failing them. A ``Retry-After`` is a
floor: the wait is that many seconds plus the same jittered draw, so a herd
sent away together still spreads.

**When the count resets.** A connection that stayed up ``reset_after``
seconds proves the server healthy: the next drop starts again at n = 0. One
that drops sooner keeps counting, so a server that accepts and fails at once
is not hammered. After ``max_attempts`` retries in a row without such a
connection (None: never), the client gives up.
"""

from __future__ import annotations

import dataclasses
import math

from ..exceptions import ConfigError
from .outcome import Outcome

__all__ = ["RECONNECT_CODES", "RECONNECT_STATUSES", "ReconnectPolicy"]

#: Close codes after which reconnecting can help (see the module docstring).
RECONNECT_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})
#: HTTP statuses after which reconnecting can help.
RECONNECT_STATUSES = frozenset({408, 429, *range(500, 600)})


@dataclasses.dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """The reconnect rules of a client (see the module docstring)."""

    #: Seconds: the window of the first retry.
    base_delay: float = 0.5
    #: Seconds: the window never grows past this.
    max_delay: float = 30.0
    #: Retries in a row before giving up; None: never give up.
    max_attempts: int | None = None
    #: Seconds a connection must stay up for the retry count to start again.
    reset_after: float = 10.0
    #: Close codes that reconnect; any other stops.
    reconnect_codes: frozenset[int] = RECONNECT_CODES
    #: HTTP statuses of a refused upgrade that reconnect; any other stops.
    reconnect_statuses: frozenset[int] = RECONNECT_STATUSES

    def __post_init__(self) -> None:
        for name in ("base_delay", "max_delay", "reset_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(name, f"must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(name, f"must be a finite number > 0, got {value!r}")
        if self.max_delay < self.base_delay:
            raise ConfigError(
                "max_delay",
                f"must be at least base_delay ({self.base_delay}), got {self.max_delay}",
            )
        attempts = self.max_attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0
        ):
            raise ConfigError("max_attempts", f"must be None or an int ≥ 0, got {attempts!r}")
        for name in ("reconnect_codes", "reconnect_statuses"):
            value = getattr(self, name)
            if not isinstance(value, frozenset) or not all(
                isinstance(item, int) and not isinstance(item, bool) for item in value
            ):
                raise ConfigError(name, f"must be a frozenset of ints, got {value!r}")

    def should_reconnect(self, outcome: Outcome) -> bool:
        """Whether this ending is worth another attempt."""
        if outcome.local:
            return False
        if outcome.status is not None:
            return outcome.status in self.reconnect_statuses
        return outcome.code in self.reconnect_codes

    def window(self, attempt: int) -> float:
        """The jitter window of retry ``attempt`` (0 first): min(max_delay, base_delay × 2ⁿ)."""
        if attempt < 0:
            raise ValueError(f"attempt is ≥ 0, got {attempt}")
        # 2 ** 1100 overflows a float: the cap is reached long before.
        if attempt >= 64:
            return self.max_delay
        return min(self.max_delay, self.base_delay * 2.0**attempt)

    def delay(self, attempt: int, draw: float, retry_after: float | None = None) -> float:
        """The wait before retry ``attempt``. ``draw`` is uniform in [0, 1)
        (the caller's randomness); ``retry_after`` the server's floor."""
        if not 0.0 <= draw < 1.0:
            raise ValueError(f"draw is uniform in [0, 1), got {draw!r}")
        jitter = draw * self.window(attempt)
        if retry_after is not None and retry_after > 0:
            return retry_after + jitter
        return jitter
