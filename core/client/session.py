"""A client across its connections: :class:`ClientSession`, sans-IO.

It ties together what outlives one connection: the :class:`Reconnector`
(retry count, delays), the :class:`Subscriptions` (resume), and one
:class:`~wslifecycle.Scheduler` whose single timer drives the heartbeat of
every connection the session makes. A driver loops:

    session = ClientSession(url, entropy=..., random_bytes=os.urandom, random=rng.random)
    while True:
        wire = session.connect(now)           # dial session.target, write wire.data_to_send()
        ... feed the socket to the wire; on AcceptUpgrade: session.upgraded(now)
        ... for data in session.receive(now): give it to the application
        step = session.ended(now)             # or session.failed(now, outcome): no TCP at all
        if isinstance(step, Stop): break
        wait step.delay seconds (session.close() meanwhile stops it)

Requests that must survive a reconnect (subscriptions) are remembered and
sent again, with ``since``, on each new connection; plain messages are
sent on the current connection only: sending while disconnected raises
:class:`~wslifecycle.ConnectionClosed`, because a message silently queued for
a server that may never come back is a lie.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from ..config import Config
from ..entropy import Entropy
from ..exceptions import ConnectionClosed
from ..scheduler import Scheduler
from ..transitions import State
from ..wire.mask import Unmask
from .connection import ClientConnection
from .outcome import Outcome
from .policy import ReconnectPolicy
from .reconnect import Reconnector, Retry, Stop
from .resume import RelayFrame, Subscriptions
from .url import Target, parse_url

__all__ = ["ClientSession", "Received", "client_config"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def client_config(**fields: object) -> Config:
    """A :class:`~wslifecycle.Config` for clients: the server's liveness
    rule, with anything the server sends proving it alive
    (``activity_is_liveness``). ``fields`` override (heartbeat_interval,
    max_missed_pongs, handshake_timeout, close_timeout, max_message_size, ...)."""
    values: dict[str, object] = {"activity_is_liveness": True, **fields}
    return Config(**values)  # type: ignore[arg-type]  # Config checks every field


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """A message for the application; ``frame``: what it is in the relay
    protocol (None for any other message)."""

    data: str | bytes
    frame: RelayFrame | None


class ClientSession:
    """One client, across reconnects (see the module docstring)."""

    __slots__ = (
        "_headers",
        "_mask",
        "_origin",
        "_random",
        "_random_bytes",
        "_subprotocols",
        "closing",
        "connections",
        "reconnector",
        "scheduler",
        "stopped",
        "subscriptions",
        "target",
        "wire",
    )

    def __init__(
        self,
        url: str | Target,
        *,
        entropy: Entropy,
        random_bytes: Callable[[int], bytes],
        random: Callable[[], float],
        config: Config | None = None,
        policy: ReconnectPolicy | None = None,
        subprotocols: tuple[str, ...] = (),
        origin: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        mask: Unmask | None = None,
    ) -> None:
        """``random()`` is uniform in [0, 1) (the jitter); ``random_bytes``
        and ``entropy`` as for :class:`ClientConnection` and the scheduler.
        ``config`` defaults to :func:`client_config` (), ``policy`` to
        :class:`ReconnectPolicy` (). A bad URL raises ValueError here."""
        self.target = url if isinstance(url, Target) else parse_url(url)
        self.scheduler = Scheduler(config or client_config(), entropy)
        self.reconnector = Reconnector(policy or ReconnectPolicy())
        self.subscriptions = Subscriptions()
        self._random = random
        self._random_bytes = random_bytes
        self._subprotocols = tuple(subprotocols)
        self._origin = origin
        self._headers = tuple(headers)
        self._mask = mask
        #: The current connection (None between connections).
        self.wire: ClientConnection | None = None
        #: Set once the session will not reconnect: why.
        self.stopped: Stop | None = None
        #: The application asked to close: no reconnect.
        self.closing = False
        #: Connections made so far (attempts that reached the upgrade).
        self.connections = 0

    @property
    def connected(self) -> bool:
        """True while a connection is ACTIVE (messages may be sent)."""
        wire = self.wire
        return wire is not None and wire.state is State.ACTIVE

    # ------------------------------------------------------------ connections

    def connect(self, now: float, *, wall_time: float | None = None) -> ClientConnection:
        """A new attempt: the wire to feed (its upgrade request is queued).
        Raises ConnectionClosed once the session has stopped."""
        if self.stopped is not None or self.closing:
            raise ConnectionClosed("the client is closed; it does not reconnect")
        if self.wire is not None and not self.wire.ended:
            raise RuntimeError("the previous connection has not ended")
        self.wire = ClientConnection(
            self.scheduler,
            now,
            self.target,
            random_bytes=self._random_bytes,
            subprotocols=self._subprotocols,
            origin=self._origin,
            headers=self._headers,
            mask=self._mask,
            wall_time=wall_time,
        )
        return self.wire

    def upgraded(self, now: float) -> None:
        """The wire reported ``AcceptUpgrade``: send every subscription again.
        A server may close right after its 101, in the same read: by the time
        the driver acts on AcceptUpgrade the wire may have left ACTIVE; the
        connection still counts, and nothing is sent on it."""
        wire = self.wire
        assert wire is not None
        self.connections += 1
        self.reconnector.connected(now)
        requests = self.subscriptions.connected()
        if wire.state is State.ACTIVE:
            for request in requests:
                wire.send(request, now)

    def ended(self, now: float) -> Retry | Stop:
        """The current connection is CLOSED: what next."""
        wire = self.wire
        assert wire is not None
        outcome = wire.outcome
        assert outcome is not None, "ended() before the connection is CLOSED"
        return self.failed(now, outcome)

    def failed(self, now: float, outcome: Outcome) -> Retry | Stop:
        """An attempt or connection ended this way (a driver's own outcome:
        refused TCP is 1006, a failed TLS handshake 1015): what next."""
        self.subscriptions.disconnected()
        if self.closing and not outcome.local:
            outcome = dataclasses.replace(outcome, local=True)
        step = self.reconnector.ended(now, outcome, self._random())
        if isinstance(step, Stop):
            self.stopped = step
        return step

    def receive(self, now: float) -> list[Received]:
        """The messages waiting on the current connection, for the
        application: duplicates of resumed channels dropped."""
        wire = self.wire
        if wire is None:
            return []
        out = []
        subscriptions = self.subscriptions
        while (data := wire.take_message(now)) is not None:
            frame = subscriptions.read(data)
            if frame is None or not frame.duplicate:
                out.append(Received(data, frame))
        return out

    # ---------------------------------------------------------- the application

    def subscribe(self, channel: str, now: float, *, presence: bool = False) -> None:
        """Follow ``channel`` on this and every later connection."""
        request = self.subscriptions.subscribe(channel, presence=presence)
        if request is not None:
            self._send(request, now)

    def unsubscribe(self, channel: str, now: float) -> None:
        """Stop following ``channel``."""
        request = self.subscriptions.unsubscribe(channel)
        if request is not None:
            self._send(request, now)

    def publish(self, channel: str, data: object, now: float) -> None:
        """Publish JSON ``data`` on ``channel`` (relay protocol); raises
        ConnectionClosed while not connected."""
        self._send(_encode({"type": "publish", "channel": channel, "data": data}), now)

    def send(self, data: str | bytes, now: float) -> None:
        """Send a message on the current connection; raises ConnectionClosed
        while not connected."""
        self._send(data, now)

    def close(self, now: float, code: int = 1000, reason: str = "") -> None:
        """Close for good: the closing handshake on the current connection,
        and no reconnect."""
        self.closing = True
        wire = self.wire
        if wire is not None and not wire.ended:
            wire.close(now, code, reason)

    def _send(self, data: str | bytes, now: float) -> None:
        wire = self.wire
        if wire is None or wire.state is not State.ACTIVE:
            raise ConnectionClosed("not connected (the client reconnects; send again then)")
        wire.send(data, now)
