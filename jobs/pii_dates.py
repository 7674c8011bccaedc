"""Date detection for :mod:`jobs.pii`: numeric, CJK and month-name forms.

Each form is one bounded regex anchored by look-arounds, so a scan is linear; a match
counts only when its month and day are in range, and its value is the ISO date.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

_YMD = re.compile(
    r"(?<![0-9])(?P<y>[0-9]{4})(?P<sep>[-/.])(?P<m>[0-9]{1,2})(?P=sep)(?P<d>[0-9]{1,2})(?![0-9])"
)
_DMY = re.compile(
    r"(?<![0-9])(?P<a>[0-9]{1,2})(?P<sep>[-/.])(?P<b>[0-9]{1,2})(?P=sep)(?P<y>[0-9]{4})(?![0-9])"
)
# Two-digit years only with slashes: "3.11.24" is a version and "3-2-25" a score
# far more often than a date, while "11/29/25" is how US text writes dates.
_SLASH_SHORT_YEAR = re.compile(
    r"(?<![0-9/])(?P<a>[0-9]{1,2})/(?P<b>[0-9]{1,2})/(?P<yy>[0-9]{2})(?![0-9/])"
)
_CJK_DATE = re.compile(
    r"(?<![0-9])(?P<y>[0-9]{4}) ?年 ?(?P<m>[0-9]{1,2}) ?月 ?(?P<d>[0-9]{1,2}) ?[日号](?![0-9])"
)


def _iso_date(year: str, month: str, day: str) -> str | None:
    if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
        return f"{year}-{int(month):02d}-{int(day):02d}"
    return None


def _short_year(m: re.Match[str]) -> str | None:
    # Pivot at 70: "11/29/25" is 2025, "3/4/85" is 1985.
    year = ("19" if int(m["yy"]) >= 70 else "20") + m["yy"]
    return _iso_date(year, m["b"], m["a"]) or _iso_date(year, m["a"], m["b"])


def _year_first(m: re.Match[str]) -> str | None:
    return _iso_date(m["y"], m["m"], m["d"])


def _day_or_month_first(m: re.Match[str]) -> str | None:
    # Day-first unless only month-first validates ("03/15/2024"), so an
    # ambiguous "03/04/2024" correlates with "2024-04-03".
    return _iso_date(m["y"], m["b"], m["a"]) or _iso_date(m["y"], m["a"], m["b"])


_MONTH_NAME = (
    r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_ORDINAL = r"(?:st|nd|rd|th)?"
_DAY_MONTH_NAME = re.compile(
    rf"(?<![0-9A-Za-z])(?P<d>[0-9]{{1,2}}){_ORDINAL} {_MONTH_NAME},? (?P<y>[0-9]{{4}})(?![0-9])",
    re.IGNORECASE,
)
_MONTH_NAME_DAY = re.compile(
    rf"(?<![A-Za-z]){_MONTH_NAME} (?P<d>[0-9]{{1,2}}){_ORDINAL},? (?P<y>[0-9]{{4}})(?![0-9])",
    re.IGNORECASE,
)
_MONTH_NUMBERS = {name: n for n, name in enumerate(("jan", "feb", "mar", "apr", "may", "jun",
    "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}  # fmt: skip


def _named_month(m: re.Match[str]) -> str | None:
    return _iso_date(m["y"], str(_MONTH_NUMBERS[m["mon"][:3].lower()]), m["d"])


_DATE_FORMS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]], ...] = (
    (_CJK_DATE, _year_first),
    (_YMD, _year_first),
    (_DMY, _day_or_month_first),
    (_DAY_MONTH_NAME, _named_month),
    (_MONTH_NAME_DAY, _named_month),
    (_SLASH_SHORT_YEAR, _short_year),
)


def find_dates(probe: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, ISO date) of each date in ``probe``, form by form."""
    for pattern, to_iso in _DATE_FORMS:
        for m in pattern.finditer(probe):
            iso = to_iso(m)
            if iso is not None:
                yield m.start(), m.end(), iso
