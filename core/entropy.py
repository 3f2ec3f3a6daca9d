"""Where connection ids and probe payloads come from.

The core has no randomness of its own: a driver passes real
entropy, a test passes a seeded source, and the same inputs then give the
same actions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["Entropy"]


@dataclasses.dataclass(frozen=True, slots=True)
class Entropy:
    """The two sources of unpredictability a connection needs."""

    #: A new, unique connection (session) id each call.
    connection_id: Callable[[], str]
    #: The payload of the next heartbeat probe, at most 125 bytes (RFC 6455 §5.5).
    #: Its hex form is the id of a JSON application heartbeat.
    probe_payload: Callable[[], bytes]
