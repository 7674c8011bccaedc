"""Phone detection for :mod:`jobs.pii`: windows of digit blocks checked against
libphonenumber's metadata (US, GB and CN national forms; any ``+``/``00`` number).

This replaces ``PhoneNumberMatcher``: its inner-match retries cost ~2 ms per failed
candidate, so dense numeric text (a table of 4-digit groups) took seconds per 100 KB
and 1 MB ran into the matcher's try limit, past which nothing was searched. Here a
window holds at most six blocks and 17 digits, its digit count picks the regions worth
asking, and asking is one ``is_valid_number`` call (~10 µs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import phonenumbers

# Characters a written number may contain (after the probe's full-width folding).
_SEGMENT = re.compile(
    "[0-9+()\\[\\]./~ \u00a0\u00ad\u200b\u2060\u2010-\u2015\u2212\u2053\u223c\u30fc-]+"
)
_BLOCK = re.compile(r"[0-9]+")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")  # "192.168.189.93" reads as a US number
_GAP_CHARS = frozenset(" .-()\u00a0\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc")
_MAX_GAP = 3  # ") (", " - "
_MAX_BLOCKS = 6  # "+44 (0) 20 7946 0958" has five
_MIN_DIGITS, _MAX_DIGITS = 7, 17  # "0086 10 6552 9988" has 14
_LATIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class _Blocks:
    starts: list[int]
    ends: list[int]
    digits: list[str]


def _national_readings(ds: str) -> Iterator[phonenumbers.PhoneNumber]:
    """The numbers a national (no "+") digit string can be in the supported regions."""
    if len(ds) == 10 and ds[0] in "23456789":
        yield phonenumbers.PhoneNumber(country_code=1, national_number=int(ds))
    if len(ds) == 11 and ds[0] == "1":
        yield phonenumbers.PhoneNumber(country_code=1, national_number=int(ds[1:]))
        yield phonenumbers.PhoneNumber(country_code=86, national_number=int(ds))
    if ds[0] == "0" and len(ds) in (10, 11):
        yield phonenumbers.PhoneNumber(country_code=44, national_number=int(ds[1:]))
    if ds[0] == "0" and len(ds) in (10, 11, 12):
        yield phonenumbers.PhoneNumber(country_code=86, national_number=int(ds[1:]))


def _international_readings(ds: str) -> Iterator[phonenumbers.PhoneNumber]:
    ds = ds.removeprefix("00")
    for size in (1, 2, 3):
        code, rest = int(ds[:size]), ds[size:]
        if rest and phonenumbers.region_code_for_country_code(code) != "ZZ":
            # "+44 (0)20 ...": the trunk zero is written but is not part of the number.
            rest = rest[1:] if rest.startswith("0") and code != 39 else rest
            if rest:
                yield phonenumbers.PhoneNumber(country_code=code, national_number=int(rest))


def _e164(ds: str, international: bool) -> str | None:
    readings = _international_readings(ds) if international else _national_readings(ds)
    for number in readings:
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _prefix(segment: str, start: int, window_end: int) -> int:
    """How many characters before ``start`` belong to the number: "+", "(+" or "("."""
    closes = ")" in segment[start:window_end]
    if segment[start - 1 : start] == "+":
        return 2 if closes and segment[start - 2 : start - 1] == "(" else 1
    return 1 if closes and segment[start - 1 : start] == "(" else 0


def _windows(blocks: _Blocks, segment: str, first: int) -> list[int]:
    """Ends (exclusive block indices) of the windows starting at ``first``, longest last."""
    ends, digits = [], 0
    for j in range(first, min(first + _MAX_BLOCKS, len(blocks.starts))):
        if j > first:
            gap = segment[blocks.ends[j - 1] : blocks.starts[j]]
            singles = len(blocks.digits[j]) == 1 and len(blocks.digits[j - 1]) == 1
            if len(gap) > _MAX_GAP or singles or not _GAP_CHARS.issuperset(gap):
                break
        digits += len(blocks.digits[j])
        if digits > _MAX_DIGITS:
            break
        if digits >= _MIN_DIGITS:
            ends.append(j + 1)
    return ends


def _glued(probe: str, start: int, end: int) -> bool:
    """Digits glued to Latin letters are codes and tokens, not numbers."""
    return (start > 0 and probe[start - 1] in _LATIN) or (end < len(probe) and probe[end] in _LATIN)


def _numbers_in(probe: str, seg: re.Match[str]) -> Iterator[tuple[int, int, str]]:
    segment, offset = seg.group(), seg.start()
    found = [(m.start(), m.end(), m.group()) for m in _BLOCK.finditer(segment)]
    blocks = _Blocks([f[0] for f in found], [f[1] for f in found], [f[2] for f in found])
    first = 0
    while first < len(blocks.starts):
        for end in reversed(_windows(blocks, segment, first)):
            lo = blocks.starts[first] - _prefix(segment, blocks.starts[first], blocks.ends[end - 1])
            hi = blocks.ends[end - 1]
            international = "+" in segment[lo : lo + 2] or blocks.digits[first][:2] == "00"
            ipv4 = _IPV4.fullmatch(segment, lo, hi) is not None
            e164 = None if ipv4 else _e164("".join(blocks.digits[first:end]), international)
            if e164 and not _glued(probe, offset + lo, offset + hi):
                yield offset + lo, offset + hi, e164
                first = end - 1
                break
        first += 1


def find_phones(probe: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, E.164) of each phone number in ``probe``, left to right."""
    for seg in _SEGMENT.finditer(probe):
        yield from _numbers_in(probe, seg)
