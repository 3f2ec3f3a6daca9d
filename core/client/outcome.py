"""How a client connection ended: the one input of the reconnect policy."""

from __future__ import annotations

import dataclasses

__all__ = ["Outcome"]


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """Exactly one of ``code`` (the connection was open, or never got an HTTP
    answer) and ``status`` (the server answered the upgrade with something
    other than a valid 101) is set.

    * ``code``: the server's close code (1005 when its close frame carried
      none), 1006 when the connection ended without one (reset, EOF, refused
      TCP, a dead server), 1015 for a failed TLS handshake, or the code we
      failed the server with (1002, 1007, 1009);
    * ``status``: the HTTP status of a refused upgrade (101 for a 101 that
      broke the handshake's rules, 0 for an answer that was not HTTP);
    * ``retry_after``: seconds, from the refusal's ``Retry-After``;
    * ``local``: the application closed it, or the client failed the server
      for breaking the protocol: never a reason to reconnect;
    * ``dead``: the heartbeat declared the server dead.
    """

    code: int | None = None
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None
    local: bool = False
    dead: bool = False

    def __post_init__(self) -> None:
        if (self.code is None) == (self.status is None):
            raise ValueError("an Outcome has exactly one of code and status")

    def __str__(self) -> str:
        what = f"close code {self.code}" if self.code is not None else f"HTTP {self.status}"
        return f"{what}: {self.reason}" if self.reason else what
