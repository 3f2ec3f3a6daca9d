"""Close codes: which may be sent (RFC 6455 §7.4) and how a close is validated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from wslifecycle import CloseCode, InvalidCloseCode, LifecycleError, is_sendable, validate_close
from wslifecycle.close_codes import MAX_CLOSE_REASON_BYTES
from wslifecycle.testing.strategies import close_codes, sendable_close_codes

SENDABLE_RANGES = [range(1000, 1004), range(1007, 1015), range(3000, 5000)]


@pytest.mark.parametrize("codes", SENDABLE_RANGES, ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_every_code_of_the_sendable_ranges_is_sendable(codes: range) -> None:
    """1000-1003, 1007-1014 and 3000-4999 are sendable, each one of them."""
    assert all(is_sendable(code) for code in codes)


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 0, -1, 65535])
def test_reserved_and_out_of_range_codes_are_not_sendable(code: int) -> None:
    """1004 (reserved), 1005/1006/1015 (never on the wire) and codes outside the ranges."""
    assert not is_sendable(code)


def test_no_code_between_the_ranges_is_sendable() -> None:
    """Nothing from 1015 to 2999 and nothing from 5000 up may be sent."""
    assert not any(is_sendable(code) for code in range(1015, 3000))
    assert not any(is_sendable(code) for code in range(5000, 70000))
    assert not any(is_sendable(code) for code in range(1000))


def test_named_codes_that_are_never_sent() -> None:
    """The enum names 1005, 1006 and 1015 but marks them unsendable."""
    never = {CloseCode.NO_STATUS_RECEIVED, CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE}
    assert {int(c) for c in never} == {1005, 1006, 1015}
    assert all(is_sendable(code) for code in CloseCode if code not in never)
    assert not any(is_sendable(code) for code in never)


@settings(max_examples=200)
@given(sendable_close_codes)
def test_strategy_of_sendable_codes_agrees(code: int) -> None:
    """Every code drawn by sendable_close_codes validates."""
    assert is_sendable(code)
    validate_close(code, "")


@settings(max_examples=200)
@given(close_codes)
def test_validate_close_raises_exactly_for_unsendable_codes(code: int) -> None:
    """validate_close accepts a code if and only if is_sendable says so."""
    if is_sendable(code):
        validate_close(code, "ok")
    else:
        with pytest.raises(InvalidCloseCode, match=rf"^close code {code} may not be sent"):
            validate_close(code, "ok")


def test_validate_close_accepts_named_codes() -> None:
    """A CloseCode member is an int and validates like its value."""
    validate_close(CloseCode.GOING_AWAY, "bye")
    with pytest.raises(InvalidCloseCode, match="close code 1005 may not be sent"):
        validate_close(CloseCode.NO_STATUS_RECEIVED, "")


@pytest.mark.parametrize("code", [True, False, 1000.0, "1000", None])
def test_validate_close_checks_the_type(code: Any) -> None:
    """The code must be an int; a bool, float, str or None is refused."""
    with pytest.raises(InvalidCloseCode) as info:
        validate_close(code, "")
    assert str(info.value) == f"close code must be an int, got {code!r}"


def test_unsendable_code_message_names_the_code_and_rfc() -> None:
    """The error names the code and the allowed ranges."""
    with pytest.raises(InvalidCloseCode) as info:
        validate_close(1005, "")
    assert str(info.value) == (
        "close code 1005 may not be sent (RFC 6455 §7.4: use 1000-1003, 1007-1014 or 3000-4999)"
    )


def test_invalid_close_code_is_a_value_error_and_a_lifecycle_error() -> None:
    """Callers may catch InvalidCloseCode as ValueError or as LifecycleError."""
    assert issubclass(InvalidCloseCode, ValueError)
    assert issubclass(InvalidCloseCode, LifecycleError)


@pytest.mark.parametrize(
    ("reason", "size"),
    [
        ("", 0),
        ("x" * 123, 123),
        ("é" * 61 + "x", 123),  # 2-byte characters
        ("€" * 41, 123),  # 3-byte characters
        ("😀" * 30 + "abc", 123),  # 4-byte characters
    ],
)
def test_reasons_up_to_123_utf8_bytes_are_accepted(reason: str, size: int) -> None:
    """The limit is 123 bytes of UTF-8, whatever the characters."""
    assert len(reason.encode("utf-8")) == size
    validate_close(1000, reason)


@pytest.mark.parametrize(
    ("reason", "size"),
    [
        ("x" * 124, 124),
        ("é" * 62, 124),  # only 62 characters
        ("€" * 42, 126),  # only 42 characters
        ("😀" * 31, 124),  # only 31 characters
    ],
)
def test_reasons_over_123_utf8_bytes_are_refused(reason: str, size: int) -> None:
    """Bytes count, not characters; the error gives the size and the limit."""
    assert len(reason.encode("utf-8")) == size > MAX_CLOSE_REASON_BYTES
    with pytest.raises(InvalidCloseCode) as info:
        validate_close(1000, reason)
    assert str(info.value) == f"close reason is {size} bytes; RFC 6455 §5.5 allows 123"


def test_code_is_checked_before_the_reason() -> None:
    """With both wrong, the code is reported."""
    with pytest.raises(InvalidCloseCode, match="close code 1006"):
        validate_close(1006, "x" * 500)


@pytest.mark.parametrize("reason", ["é" * 62, "€" * 42, "😀" * 31])
def test_multibyte_reasons_fail_with_few_characters(reason: str) -> None:
    """A reason of fewer than 123 characters can still be too long in bytes."""
    assert len(reason) < MAX_CLOSE_REASON_BYTES
    with pytest.raises(InvalidCloseCode, match=r"RFC 6455 §5\.5 allows 123"):
        validate_close(1000, reason)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (b"bytes", "close reason must be a str, got b'bytes'"),
        (12, "close reason must be a str, got 12"),
        ("\ud800", "close reason is not encodable as UTF-8"),
    ],
    ids=["bytes", "int", "surrogate"],
)
def test_a_reason_that_is_not_sendable_text_is_refused(reason: object, message: str) -> None:
    """A reason must be a str that encodes as UTF-8; anything else is an error
    that says which of the two it is not."""
    with pytest.raises(InvalidCloseCode) as info:
        validate_close(1000, reason)  # type: ignore[arg-type]
    assert str(info.value) == message
