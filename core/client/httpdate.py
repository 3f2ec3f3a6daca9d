"""An HTTP-date (RFC 9110 §5.6.7) as seconds since the epoch, in pure arithmetic.

``Retry-After`` may be a date. The standard library's parsers pull in what
the core must not load (``email.utils`` imports ``socket``; ``time.strptime``
is the clock's module and reads the locale), so the three formats a
recipient must accept are read here:

* ``Sun, 06 Nov 1994 08:49:37 GMT`` (IMF-fixdate, the one senders use);
* ``Sunday, 06-Nov-94 08:49:37 GMT`` (RFC 850; a two-digit year is read as
  1970-2069);
* ``Sun Nov  6 08:49:37 1994`` (ANSI C asctime).
"""

from __future__ import annotations

import re

__all__ = ["http_date_seconds"]

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF = re.compile(rf"{_DAY}, (\d\d) ([A-Z][a-z][a-z]) (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-([A-Z][a-z][a-z])-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} ([A-Z][a-z][a-z]) ([ \d]\d) {_TIME} (\d{{4}})")


def http_date_seconds(value: str) -> float | None:
    """``value`` as seconds since the epoch (UTC); None if it is not an
    HTTP-date or names no real moment (a 30th of February, hour 24)."""
    value = value.strip()
    if match := _IMF.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850.fullmatch(value):
        day, month, short_year, hour, minute, second = match.groups()
        year = str((1900 if int(short_year) >= 70 else 2000) + int(short_year))
    elif match := _ASCTIME.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    number = _MONTHS.get(month)
    if number is None or not _valid(int(year), number, int(day)):
        return None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:  # 60: a leap second
        return None
    days = _days_from_civil(int(year), number, int(day))
    return float(days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second))


def _valid(year: int, month: int, day: int) -> bool:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    length = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    return 1 <= day <= length


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to this proleptic Gregorian date (counting in
    400-year eras of 146,097 days, March first, so February's length is last)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468
