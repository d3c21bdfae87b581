"""HTTP-date parsing (RFC 9110 §5.6.7): all three formats, None for anything else."""

from __future__ import annotations

import datetime
import re
from typing import Final

__all__ = ["parse_http_date"]

_WEEKDAYS: Final = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_WEEKDAYS: Final = rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS: Final = tuple(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_MONTH: Final = rb"(" + b"|".join(_MONTHS) + rb")"
_TIME: Final = rb"(\d{2}):(\d{2}):(\d{2})"
_IMF_FIXDATE: Final = re.compile(
    _WEEKDAYS + rb", (\d{2}) " + _MONTH + rb" (\d{4}) " + _TIME + b" GMT"
)
_RFC850_DATE: Final = re.compile(
    _LONG_WEEKDAYS + rb", (\d{2})-" + _MONTH + rb"-(\d{2}) " + _TIME + b" GMT"
)
_ASCTIME_DATE: Final = re.compile(
    _WEEKDAYS + b" " + _MONTH + rb" ([ \d]\d) " + _TIME + rb" (\d{4})"
)


def parse_http_date(value: bytes, now: float) -> int | None:
    """Seconds since the epoch for an HTTP-date (RFC 9110 §5.6.7, all three formats), else None.

    Written here rather than using :func:`twisted.web.http.stringToDatetime` because that one
    accepts junk and raises assorted exceptions on malformed input, and RFC 9110 says an invalid
    date makes a conditional field be ignored, never an error.
    """
    value = value.strip()
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = match.groups()
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, yy, hh, mm, ss = match.groups()
        # A two-digit year more than 50 years ahead means the century before (RFC 9110 §5.6.7).
        this_year = datetime.datetime.fromtimestamp(now, datetime.UTC).year
        full = this_year - this_year % 100 + int(yy)
        year = b"%d" % (full - 100 if full > this_year + 50 else full)
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hh, mm, ss, year = match.groups()
    else:
        return None
    try:
        moment = datetime.datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hh),
            int(mm),
            int(ss),
            tzinfo=datetime.UTC,
        )
    except ValueError:
        return None
    return int(moment.timestamp())
