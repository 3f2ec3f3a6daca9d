"""Hypothesis strategies for configurations and events (needs ``hypothesis``).

``configs()`` draws valid :class:`~wslifecycle.Config` objects, biased to the
small intervals tests like; ``events(...)`` draws any input a connection can
receive, with times from a range, for fuzzing lifecycles and replaying runs.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .. import events as ev
from ..causes import TerminationCause
from ..config import Config, HeartbeatMode

__all__ = ["close_codes", "configs", "events", "sendable_close_codes"]

#: Every close code a peer or a caller might try, valid or not.
close_codes = st.one_of(
    st.integers(min_value=0, max_value=5000),
    st.sampled_from([999, 1000, 1001, 1004, 1005, 1006, 1011, 1015, 1016, 2999, 3000, 4999]),
)
#: Codes that may appear in a close frame (RFC 6455 §7.4).
sendable_close_codes = st.one_of(
    st.integers(1000, 1003), st.integers(1007, 1014), st.integers(3000, 4999)
)


@st.composite
def configs(draw: st.DrawFn, /, **fixed: Any) -> Config:
    """A valid Config; keyword arguments pin fields to a value."""
    # The interval is drawn within what pinned fields allow, and the fields
    # that depend on it are drawn from the final one.
    if "heartbeat_interval" in fixed:
        interval = fixed["heartbeat_interval"]
    else:
        stall = fixed.get("stall_threshold")
        proxy = fixed.get("proxy_idle_timeout")
        low = stall * 1.01 if stall else 0.05
        high = proxy * 0.99 if proxy else 120.0
        interval = draw(
            st.sampled_from([0.5, 1.0, 5.0, 30.0]).filter(lambda i: low <= i <= high)
            | st.floats(low, max(low, high))
        )
    values: dict[str, Any] = {
        "heartbeat_interval": interval,
        "max_missed_pongs": draw(st.integers(1, 5)),
        "heartbeat_mode": draw(st.sampled_from(HeartbeatMode)),
        "activity_is_liveness": draw(st.booleans()),
        "stall_threshold": draw(st.none() | st.floats(interval / 100, interval * 0.9)),
        "max_message_size": draw(st.integers(1, 4 * 1024 * 1024)),
        "max_fragments": draw(st.integers(1, 4096)),
        "write_buffer_guard": (guard := draw(st.integers(0, 4 * 1024 * 1024))),
        "max_write_buffer": draw(st.integers(max(guard, 1), 2 * guard + 1024)),
        "handshake_timeout": draw(st.floats(0.01, 30.0)),
        "close_timeout": draw(st.floats(0.01, 30.0)),
        "drain_timeout": draw(st.floats(0.01, 30.0)),
        "allow_no_origin": draw(st.booleans()),
        "allowed_origins": draw(
            st.frozensets(st.sampled_from(["https://app.example.com", "http://localhost:8080"]))
        ),
    }
    values.update(fixed)
    return Config(**values)


def events(
    now: st.SearchStrategy[float] | None = None,
    *,
    channels: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[ev.Event]:
    """Any event a connection can receive, caller misuse excluded (invalid
    close codes and sends after close are separate concerns)."""
    times = now if now is not None else st.floats(0.0, 1000.0)
    names = channels if channels is not None else st.sampled_from(["news", "chat", "presence"])
    data = st.text(max_size=20) | st.binary(max_size=20)
    return st.one_of(
        st.builds(
            ev.UpgradeRequested,
            times,
            st.none() | st.sampled_from(["https://app.example.com", "https://evil.example"]),
            st.sampled_from(["localhost", "app.example.com"]),
        ),
        st.builds(ev.UpgradeInvalid, times, st.sampled_from([400, 405, 426, 431]), st.just("x")),
        st.builds(ev.PongReceived, times, st.binary(max_size=8)),
        st.builds(ev.MessageReceived, times, data),
        st.builds(ev.ActivitySeen, times),
        st.builds(ev.ClientSeqReported, times, st.integers(0, 50)),
        st.builds(ev.SendRequested, times, data, st.booleans(), st.integers(0, 2 * 1024 * 1024)),
        st.builds(ev.Subscribe, times, names),
        st.builds(ev.Unsubscribe, times, names),
        st.builds(ev.CloseRequested, times, sendable_close_codes, st.just("bye")),
        st.builds(ev.PeerClosed, times, st.none() | sendable_close_codes, st.just("")),
        st.builds(
            ev.PeerMisbehaved,
            times,
            st.sampled_from(
                [
                    TerminationCause.PROTOCOL_ERROR,
                    TerminationCause.INVALID_PAYLOAD,
                    TerminationCause.MESSAGE_TOO_BIG,
                ]
            ),
            st.sampled_from([1002, 1007, 1009]),
            st.just(""),
        ),
        st.builds(ev.HandlerFailed, times, st.just("boom")),
        st.builds(ev.HandlerReturned, times),
        st.builds(ev.ReadingPaused, times),
        st.builds(ev.ReadingResumed, times),
        st.builds(ev.ChannelsReleased, times, st.integers(0, 2 * 1024 * 1024)),
        st.builds(ev.ChannelReleaseFailed, times, st.just("broker down")),
        st.builds(ev.DrainRequested, times),
        st.builds(
            ev.TerminateRequested,
            times,
            st.sampled_from([TerminationCause.SLOW_CONSUMER, TerminationCause.CONNECTION_LIMIT]),
        ),
        st.builds(ev.TransportLost, times, st.none() | st.just("reset")),
        st.builds(ev.TimerFired, times, st.booleans()),
    )
