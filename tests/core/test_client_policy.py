"""The reconnect policy and the retry count, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._hypothesis import examples
from wslifecycle import ConfigError
from wslifecycle.client import Outcome, Reconnector, ReconnectPolicy, Retry, Stop

policies = st.builds(
    ReconnectPolicy,
    base_delay=st.floats(0.001, 10.0),
    max_delay=st.floats(10.0, 600.0),
    max_attempts=st.none() | st.integers(0, 20),
    reset_after=st.floats(0.1, 100.0),
)
draws = st.floats(0.0, 1.0, exclude_max=True)


@settings(max_examples=examples(300))
@given(
    policy=policies,
    attempt=st.integers(0, 2000),
    draw=draws,
    retry_after=st.none() | st.floats(0.0, 3600.0),
)
def test_every_delay_stays_within_its_jitter_window(
    policy: ReconnectPolicy, attempt: int, draw: float, retry_after: float | None
) -> None:
    """The delay of retry n is in [0, min(max_delay, base_delay·2ⁿ)], and with
    a Retry-After of R in [R, R + that window]."""
    window = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt, 64))
    assert policy.window(attempt) == window
    delay = policy.delay(attempt, draw, retry_after)
    floor = retry_after or 0.0
    assert floor <= delay <= floor + window


@settings(max_examples=examples(200))
@given(policy=policies, attempt=st.integers(0, 60))
def test_the_window_never_shrinks_and_reaches_the_cap(
    policy: ReconnectPolicy, attempt: int
) -> None:
    assert policy.window(attempt) <= policy.window(attempt + 1) <= policy.max_delay
    assert policy.window(1000) == policy.max_delay


@pytest.mark.parametrize("code", [1001, 1005, 1006, 1011, 1012, 1013, 1014])
def test_codes_that_reconnect(code: int) -> None:
    assert ReconnectPolicy().should_reconnect(Outcome(code=code))


@pytest.mark.parametrize("code", [1000, 1002, 1003, 1007, 1008, 1009, 1010, 1015, 3000, 4000, 4999])
def test_codes_that_stop(code: int) -> None:
    assert not ReconnectPolicy().should_reconnect(Outcome(code=code))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_statuses_that_reconnect(status: int) -> None:
    assert ReconnectPolicy().should_reconnect(Outcome(status=status))


@pytest.mark.parametrize("status", [0, 101, 200, 301, 400, 401, 403, 404, 426])
def test_statuses_that_stop(status: int) -> None:
    assert not ReconnectPolicy().should_reconnect(Outcome(status=status))


def test_what_the_application_closed_never_reconnects() -> None:
    assert not ReconnectPolicy().should_reconnect(Outcome(code=1006, local=True))


def test_the_tables_are_data() -> None:
    policy = ReconnectPolicy(reconnect_codes=frozenset({4000}), reconnect_statuses=frozenset())
    assert policy.should_reconnect(Outcome(code=4000))
    assert not policy.should_reconnect(Outcome(code=1006))
    assert not policy.should_reconnect(Outcome(status=503))


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"base_delay": 0}, "base_delay", "finite number > 0"),
        ({"base_delay": "1"}, "base_delay", "a number of seconds"),
        ({"max_delay": float("inf")}, "max_delay", "finite number > 0"),
        ({"reset_after": True}, "reset_after", "a number of seconds"),
        ({"base_delay": 5.0, "max_delay": 1.0}, "max_delay", "at least base_delay"),
        ({"max_attempts": -1}, "max_attempts", "None or an int"),
        ({"max_attempts": 1.5}, "max_attempts", "None or an int"),
        ({"reconnect_codes": {1006}}, "reconnect_codes", "frozenset of ints"),
        ({"reconnect_statuses": frozenset({"503"})}, "reconnect_statuses", "frozenset of ints"),
    ],
)
def test_a_bad_policy_names_the_field_and_the_reason(
    fields: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as raised:
        ReconnectPolicy(**fields)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="attempt"):
        ReconnectPolicy().window(-1)
    with pytest.raises(ValueError, match="draw"):
        ReconnectPolicy().delay(0, 1.0)


def test_a_connection_that_stayed_up_resets_the_count_a_short_one_does_not() -> None:
    reconnector = Reconnector(ReconnectPolicy(base_delay=1.0, reset_after=10.0))
    drop = Outcome(code=1006)
    steps = []
    now = 0.0
    for up in (0.0, 1.0, 2.0, 20.0, 0.5):
        reconnector.connected(now)
        now += up
        step = reconnector.ended(now, drop, 0.999)
        assert isinstance(step, Retry)
        steps.append(step.attempt)
        now += step.delay
    assert steps == [0, 1, 2, 0, 1]
    # An attempt that never connected keeps counting too.
    step = reconnector.ended(now, drop, 0.0)
    assert isinstance(step, Retry)
    assert step.attempt == 2


def test_giving_up_after_max_attempts_and_stopping_on_a_refusal() -> None:
    reconnector = Reconnector(ReconnectPolicy(max_attempts=2))
    assert isinstance(reconnector.ended(0.0, Outcome(code=1006), 0.5), Retry)
    assert isinstance(reconnector.ended(1.0, Outcome(code=1006), 0.5), Retry)
    step = reconnector.ended(2.0, Outcome(code=1006), 0.5)
    assert isinstance(step, Stop)
    assert "gave up after 2 retries" in step.reason
    stop = Reconnector(ReconnectPolicy()).ended(0.0, Outcome(status=403, reason="Forbidden"), 0.5)
    assert stop == Stop(
        "not reconnecting after HTTP 403: Forbidden", Outcome(status=403, reason="Forbidden")
    )


@settings(max_examples=examples(200))
@given(
    policy=policies,
    runs=st.lists(
        st.tuples(st.floats(0.0, 200.0), draws, st.sampled_from([1001, 1006, 1011, 1013])),
        max_size=30,
    ),
)
def test_retries_count_up_until_a_long_connection_and_delays_stay_in_bounds(
    policy: ReconnectPolicy, runs: list[tuple[float, float, int]]
) -> None:
    """Across any sequence of connections that last any time, each retry's
    number is the count since the last connection that lasted reset_after,
    its delay is within that number's window, and none exceeds max_attempts."""
    reconnector = Reconnector(policy)
    expected = 0
    now = 0.0
    for up, draw, code in runs:
        reconnector.connected(now)
        started, now = now, now + up
        if now - started >= policy.reset_after:  # as the reconnector sees it, rounding and all
            expected = 0
        step = reconnector.ended(now, Outcome(code=code), draw)
        if policy.max_attempts is not None and expected >= policy.max_attempts:
            assert isinstance(step, Stop)
            return
        assert isinstance(step, Retry)
        assert step.attempt == expected
        assert 0.0 <= step.delay <= policy.window(expected)
        expected += 1
        now += step.delay
