"""Close codes: which may be sent, which a peer may send, and what each means.

RFC 6455 §7.4.1 defines the codes, §7.4.2 reserves ranges; IANA's registry
adds 1012-1014. The rules in one place:

* **sendable** by this server: 1000-1003, 1007-1014 and 3000-4999.
  1004 is reserved; 1005, 1006 and 1015 are "MUST NOT be set as a status code
  in a Close control frame by an endpoint" (§7.4.1) and are never sent.
* **acceptable from a peer**: the same set. Anything else in a peer's close
  frame is a protocol error, answered with 1002 (§7.4.2).
* the **reason** is UTF-8 and at most 123 bytes, because a control frame's
  payload is at most 125 bytes and the code takes two (§5.5).
"""

from __future__ import annotations

import enum

from .exceptions import InvalidCloseCode

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "CloseCode",
    "is_sendable",
    "validate_close",
]

#: RFC 6455 §5.5: control frame payload ≤ 125 bytes, 2 of them for the code.
MAX_CLOSE_REASON_BYTES = 123


class CloseCode(enum.IntEnum):
    """Named close codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RECEIVED = 1005  # never sent
    ABNORMAL_CLOSURE = 1006  # never sent
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never sent


def is_sendable(code: int) -> bool:
    """True if ``code`` may appear in a close frame (RFC 6455 §7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def validate_close(code: int, reason: str) -> None:
    """Raise :class:`InvalidCloseCode` unless ``code`` and ``reason`` may be sent."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise InvalidCloseCode(f"close code must be an int, got {code!r}")
    if not is_sendable(code):
        raise InvalidCloseCode(
            f"close code {code} may not be sent (RFC 6455 §7.4: use 1000-1003, "
            "1007-1014 or 3000-4999)"
        )
    if not isinstance(reason, str):
        raise InvalidCloseCode(f"close reason must be a str, got {reason!r}")
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidCloseCode("close reason is not encodable as UTF-8") from None
    if size > MAX_CLOSE_REASON_BYTES:
        raise InvalidCloseCode(
            f"close reason is {size} bytes; RFC 6455 §5.5 allows {MAX_CLOSE_REASON_BYTES}"
        )
