"""HTTP-dates (a Retry-After may be one) read without the standard
library's parsers, which the core may not import: checked against them."""

from __future__ import annotations

import calendar
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wslifecycle.client.handshake import retry_after_seconds
from wslifecycle.client.httpdate import http_date_seconds


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "  Sun, 06 Nov 1994 08:49:37 GMT  ",
    ],
)
def test_the_three_formats_of_rfc_9110(value: str) -> None:
    assert http_date_seconds(value) == 784111777.0


@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31
def test_any_moment_as_an_imf_fixdate(seconds: int) -> None:
    text = email.utils.formatdate(seconds, usegmt=True)
    assert http_date_seconds(text) == seconds
    assert calendar.timegm(email.utils.parsedate_tz(text)[:9]) == seconds  # type: ignore[index]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tomorrow",
        "Sun, 06 Nov 1994 08:49:37 +0000",  # an HTTP-date is GMT, said so
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 30 Feb 1994 08:49:37 GMT",
        "Sun, 29 Feb 1900 08:49:37 GMT",  # not a leap year
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
    ],
)
def test_what_is_not_an_http_date(value: str) -> None:
    assert http_date_seconds(value) is None


def test_dates_around_the_turns() -> None:
    assert http_date_seconds("Tue, 29 Feb 2000 00:00:00 GMT") == 951782400.0
    assert http_date_seconds("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0
    assert http_date_seconds("Wed, 31 Dec 1969 23:59:59 GMT") == -1.0
    assert http_date_seconds("Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
    assert http_date_seconds("Friday, 01-Jan-69 00:00:00 GMT") == 3124224000.0  # 2069


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("120", None) == 120.0
    assert retry_after_seconds("²", None) is None  # isdigit(), not a number
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", None) is None  # no clock
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", 784111767.0) == 10.0
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", 784111787.0) == 0.0  # past
    assert retry_after_seconds("soon", 784111767.0) is None
