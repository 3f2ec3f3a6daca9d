"""Config: its defaults, every validation error (field and reason), and the
derived values."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from wslifecycle import Config, ConfigError, HeartbeatMode, WSLifecycleError

MiB = 1024 * 1024


def build(**fields: Any) -> Config:
    """Config from untyped keyword arguments (lets tests pass wrong types)."""
    return Config(**fields)


def test_defaults_follow_design_table() -> None:
    """Every field has its documented default (docs/theory.md, README's tables)."""
    config = Config()
    assert config.heartbeat_interval == 30.0
    assert config.max_missed_pongs == 2
    assert config.heartbeat_mode is HeartbeatMode.PROTOCOL
    assert config.activity_is_liveness is False
    assert config.stall_threshold is None
    assert config.proxy_idle_timeout is None
    assert config.max_message_size == MiB
    assert config.max_fragments == 1024
    assert config.write_buffer_guard == MiB
    assert config.handshake_timeout == 10.0
    assert config.close_timeout == 10.0
    assert config.drain_timeout == 10.0
    assert config.allowed_origins == frozenset()
    assert config.allow_no_origin is False
    assert config.origin_validator is None
    assert config.compression is False
    assert (config.inbox_high_water, config.inbox_low_water) == (64, 16)


def test_config_is_frozen() -> None:
    """A Config cannot be changed after it is made."""
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.heartbeat_interval = 5.0  # type: ignore[misc]


def test_config_error_is_a_value_error_with_field_and_reason() -> None:
    """ConfigError is a ValueError and a WSLifecycleError carrying field and reason."""
    with pytest.raises(ConfigError) as info:
        build(max_missed_pongs=0)
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, WSLifecycleError)
    assert error.field == "max_missed_pongs"
    assert error.reason == "must be at least 1, got 0"
    assert str(error) == "max_missed_pongs: must be at least 1, got 0"


SECONDS_FIELDS = [
    "heartbeat_interval",
    "stall_threshold",
    "proxy_idle_timeout",
    "handshake_timeout",
    "close_timeout",
    "drain_timeout",
]


# None is the "unset" value of the two optional fields, so it is only wrong elsewhere.
NON_NUMBERS = [
    (field, value)
    for field in SECONDS_FIELDS
    for value in ("5", None, True, False, [1.0])
    if not (value is None and field in ("stall_threshold", "proxy_idle_timeout"))
]


@pytest.mark.parametrize(("field", "value"), NON_NUMBERS)
def test_seconds_fields_reject_non_numbers(field: str, value: object) -> None:
    """A time field given a non-number (a bool included) names the field and says so."""
    with pytest.raises(ConfigError) as info:
        build(**{field: value})
    assert info.value.field == field
    assert info.value.reason == f"must be a number of seconds, got {value!r}"


@pytest.mark.parametrize("field", SECONDS_FIELDS)
@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.nan, math.inf, -math.inf])
def test_seconds_fields_reject_zero_negative_and_non_finite(field: str, value: float) -> None:
    """A time field must be a finite number above 0."""
    with pytest.raises(ConfigError) as info:
        build(**{field: value})
    assert info.value.field == field
    assert info.value.reason == f"must be a finite number above 0, got {value!r}"


@pytest.mark.parametrize(
    ("field", "minimum"),
    [("max_missed_pongs", 1), ("max_message_size", 1), ("max_fragments", 1)],
)
@pytest.mark.parametrize("value", [2.0, "3", True, False, None])
def test_integer_fields_reject_non_integers(field: str, minimum: int, value: object) -> None:
    """An integer field refuses floats, strings, None and bools (bool is not an int here)."""
    with pytest.raises(ConfigError) as info:
        build(**{field: value})
    assert info.value.field == field
    assert info.value.reason == f"must be an integer, got {value!r}"


@pytest.mark.parametrize(
    ("field", "minimum"),
    [
        ("max_missed_pongs", 1),
        ("max_message_size", 1),
        ("max_fragments", 1),
        ("write_buffer_guard", 0),
    ],
)
def test_integer_fields_enforce_their_minimum(field: str, minimum: int) -> None:
    """Each integer field accepts its minimum and refuses one below it."""
    assert getattr(build(**{field: minimum}), field) == minimum
    with pytest.raises(ConfigError) as info:
        build(**{field: minimum - 1})
    assert info.value.field == field
    assert info.value.reason == f"must be at least {minimum}, got {minimum - 1}"


def test_write_buffer_guard_rejects_bool() -> None:
    """write_buffer_guard=True is refused although True == 1."""
    with pytest.raises(ConfigError) as info:
        build(write_buffer_guard=True)
    assert info.value.field == "write_buffer_guard"
    assert "integer" in info.value.reason


@pytest.mark.parametrize("value", ["protocol", "both", 1, None])
def test_heartbeat_mode_must_be_the_enum(value: object) -> None:
    """heartbeat_mode refuses its string value and lists the valid modes."""
    with pytest.raises(ConfigError) as info:
        build(heartbeat_mode=value)
    assert info.value.field == "heartbeat_mode"
    assert info.value.reason == (
        f"must be a HeartbeatMode (protocol, application, both), got {value!r}"
    )


@pytest.mark.parametrize("field", ["activity_is_liveness", "allow_no_origin", "compression"])
@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_bool_fields_reject_non_bools(field: str, value: object) -> None:
    """A flag must be exactly True or False, not a truthy value."""
    with pytest.raises(ConfigError) as info:
        build(**{field: value})
    assert info.value.field == field
    assert info.value.reason == f"must be True or False, got {value!r}"


@pytest.mark.parametrize("field", ["activity_is_liveness", "allow_no_origin", "compression"])
def test_bool_fields_accept_true(field: str) -> None:
    """Each flag can be switched on."""
    assert getattr(build(**{field: True}), field) is True


def test_stall_threshold_must_be_below_interval() -> None:
    """stall_threshold equal to or above the interval is refused with the interval quoted."""
    for value in (30.0, 31.0):
        with pytest.raises(ConfigError) as info:
            build(stall_threshold=value)
        assert info.value.field == "stall_threshold"
        assert info.value.reason == f"must be below heartbeat_interval (30.0 s), got {value}"
    assert Config(stall_threshold=29.9).stall_threshold == 29.9


def test_interval_must_stay_below_proxy_idle_timeout() -> None:
    """An interval at or above the proxy's idle timeout is blamed on heartbeat_interval."""
    for interval in (60.0, 61.0):
        with pytest.raises(ConfigError) as info:
            build(heartbeat_interval=interval, proxy_idle_timeout=60.0)
        assert info.value.field == "heartbeat_interval"
        assert info.value.reason == (
            "must stay below proxy_idle_timeout (60.0 s) or the proxy reaps idle"
            f" connections first, got {interval}"
        )
    assert Config(heartbeat_interval=59.0, proxy_idle_timeout=60.0).proxy_idle_timeout == 60.0


@pytest.mark.parametrize("value", ["https://app.example.com", 5, None])
def test_allowed_origins_must_be_a_collection_of_strings(value: object) -> None:
    """A bare string or a non-iterable is not a set of origins."""
    with pytest.raises(ConfigError) as info:
        build(allowed_origins=value)
    assert info.value.field == "allowed_origins"
    assert info.value.reason == f"must be a set of origin strings, got {value!r}"


@pytest.mark.parametrize("origin", ["app.example.com", "null", "", 42, None, b"https://x"])
def test_allowed_origins_rejects_malformed_entries(origin: object) -> None:
    """Every entry must be a string that looks like scheme://host[:port]."""
    with pytest.raises(ConfigError) as info:
        build(allowed_origins=["https://ok.example", origin])
    assert info.value.field == "allowed_origins"
    assert info.value.reason == (
        f"each origin must look like 'https://host[:port]', got {origin!r}"
    )


def test_allowed_origins_are_normalised_to_a_lowercase_frozenset() -> None:
    """Entries lose case and trailing slashes; any iterable becomes a frozenset."""
    config = build(allowed_origins=["HTTPS://App.Example.com/", "http://localhost:8080//"])
    assert config.allowed_origins == frozenset({"https://app.example.com", "http://localhost:8080"})
    assert isinstance(config.allowed_origins, frozenset)


def test_origin_validator_must_be_callable() -> None:
    """A non-callable origin_validator is refused; a callable one is kept."""
    with pytest.raises(ConfigError) as info:
        build(origin_validator="yes")
    assert info.value.field == "origin_validator"
    assert info.value.reason == "must be callable(origin, host) -> bool"

    def validator(origin: str | None, host: str | None) -> bool:
        return True

    assert Config(origin_validator=validator).origin_validator is validator


def test_ints_are_accepted_for_seconds() -> None:
    """Whole seconds may be given as ints."""
    config = build(heartbeat_interval=20, close_timeout=1)
    assert config.heartbeat_interval == 20
    assert config.detection_bound == 60


@pytest.mark.parametrize(
    ("interval", "stall", "expected"),
    [
        (30.0, None, 5.0),  # min(30/4, 5) caps at 5 s
        (10.0, None, 2.5),  # a quarter of the interval
        (20.0, None, 5.0),  # exactly at the cap
        (10.0, 1.5, 1.5),  # an explicit threshold wins
    ],
)
def test_effective_stall_threshold(interval: float, stall: float | None, expected: float) -> None:
    """The stall threshold in force is the configured one, else min(interval/4, 5 s)."""
    config = Config(heartbeat_interval=interval, stall_threshold=stall)
    assert config.effective_stall_threshold == expected


@pytest.mark.parametrize(
    ("interval", "missed", "bound"), [(30.0, 2, 90.0), (10.0, 1, 20.0), (0.5, 5, 3.0)]
)
def test_detection_bound(interval: float, missed: int, bound: float) -> None:
    """detection_bound = (max_missed_pongs + 1) × heartbeat_interval."""
    assert Config(heartbeat_interval=interval, max_missed_pongs=missed).detection_bound == bound


def test_replace_returns_a_changed_copy() -> None:
    """replace() changes only the named fields and leaves the original alone."""
    original = Config(heartbeat_interval=10.0, allowed_origins=frozenset({"https://a.example"}))
    changed = original.replace(max_missed_pongs=4)
    assert changed.max_missed_pongs == 4
    assert changed.heartbeat_interval == 10.0
    assert changed.allowed_origins == frozenset({"https://a.example"})
    assert original.max_missed_pongs == 2


def test_replace_revalidates() -> None:
    """replace() runs the same validation as the constructor."""
    config = Config(heartbeat_interval=10.0, stall_threshold=2.0)
    with pytest.raises(ConfigError) as info:
        config.replace(heartbeat_interval=2.0)
    assert info.value.field == "stall_threshold"
    with pytest.raises(ConfigError) as info:
        config.replace(allowed_origins=["nope"])
    assert info.value.field == "allowed_origins"


def test_replace_normalises_new_origins() -> None:
    """Origins passed to replace() are normalised like new ones."""
    assert Config().replace(allowed_origins={"WSS://X.Example/"}).allowed_origins == frozenset(
        {"wss://x.example"}
    )


@pytest.mark.parametrize(
    "protocols",
    [["chat"], ("",), ("has space",), ("a,b",), ("ünï",), (1,)],
    ids=lambda v: repr(v).encode("ascii", "replace").decode(),
)
def test_subprotocols_must_be_a_tuple_of_tokens(protocols: object) -> None:
    """subprotocols is a tuple of HTTP tokens (RFC 6455 §4.1)."""
    with pytest.raises(ConfigError) as raised:
        Config(subprotocols=protocols)  # type: ignore[arg-type]
    assert raised.value.field == "subprotocols"


def test_the_request_line_cap_fits_inside_the_head_cap() -> None:
    """max_request_line cannot exceed max_header_bytes: the line is part of the head."""
    with pytest.raises(ConfigError) as raised:
        Config(max_request_line=4096, max_header_bytes=1024)
    assert raised.value.field == "max_request_line"
    assert Config(max_request_line=1024, max_header_bytes=1024).max_headers == 64


def test_the_hard_write_buffer_limit_is_above_the_guard() -> None:
    """max_write_buffer below write_buffer_guard would terminate before skipping."""
    with pytest.raises(ConfigError) as raised:
        Config(write_buffer_guard=2048, max_write_buffer=1024)
    assert raised.value.field == "max_write_buffer"
    with pytest.raises(ConfigError) as zero:
        Config(max_connections=0)
    assert zero.value.field == "max_connections"
    assert Config(max_connections=10).max_connections == 10


def test_the_inbox_low_mark_is_below_the_high_mark() -> None:
    """Reading resumes below where it paused: low ≥ high names the low mark;
    each mark is an integer (high ≥ 1, low ≥ 0)."""
    with pytest.raises(ConfigError) as raised:
        Config(inbox_high_water=16, inbox_low_water=16)
    assert raised.value.field == "inbox_low_water"
    assert raised.value.reason == "must be below inbox_high_water (16), got 16"
    with pytest.raises(ConfigError) as high:
        Config(inbox_high_water=0)
    assert high.value.field == "inbox_high_water"
    with pytest.raises(ConfigError) as low:
        Config(inbox_low_water=-1)
    assert low.value.field == "inbox_low_water"
    assert Config(inbox_high_water=2, inbox_low_water=0).inbox_high_water == 2
