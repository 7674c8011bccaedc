"""PII masking (policy ``pii-v1``).

Detected values are replaced by ``[TYPE:<fp>]`` tokens where ``<fp>`` is a
keyed HMAC-SHA256 fingerprint of the normalised value: equal values correlate
across texts masked with the same key, but nobody without the key can
brute-force the (small) value space back from a token.

Detection runs on a *probe*: a copy of the text in which full-width ASCII
forms and non-ASCII decimal digits are translated to ASCII one code point for
one code point, so every span found in the probe is valid in the original.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers

POLICY_VERSION: str = "pii-v1"
# What a masked value looks like in text: [TYPE:<fp>] or [TYPE:<shown>:<fp>].
MASK_TOKEN = re.compile(r"\[[A-Z_]+:(?:[^\]:\s]*:)?[0-9a-f]{8}\]")

_MIN_KEY_BYTES = 16
_FINGERPRINT_HEX_CHARS = 8
# Written over already-masked spans so later detectors neither re-match nor
# glue onto them; no detector pattern or phone punctuation contains it.
_BLANK = "\x00"


class EntityType(StrEnum):
    CARD_NUMBER = "CARD_NUMBER"
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    PRC_ID = "PRC_ID"
    IBAN = "IBAN"
    DATE = "DATE"


@dataclass(frozen=True)
class MaskedText:
    text: str
    counts: dict[str, int]


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    entity: EntityType
    value: str  # normalised: the fingerprint input, never emitted
    shown: str = ""  # the part the policy allows to stay visible


Detector = Callable[[str], Iterable[_Span]]


# --------------------------------------------------------------------------
# Probe: length-preserving ASCII folding for detection only.


_FULLWIDTH_FIRST, _FULLWIDTH_LAST = 0xFF01, 0xFF5E  # U+FF14 "4", U+FF20 "@", ...
_FULLWIDTH_OFFSET = 0xFEE0
_IDEOGRAPHIC_SPACE = 0x3000
_LAST_DIGIT_PLANE_END = 0x20000  # every Unicode Nd digit lies in planes 0-1


def _build_fold_table() -> dict[int, int]:
    """Only non-identity entries, so str.translate stays in C for all else.

    ~15 ms at import; a lazily-filled table would instead grow with every
    distinct code point a caller ever sends.
    """
    table = {cp: cp - _FULLWIDTH_OFFSET for cp in range(_FULLWIDTH_FIRST, _FULLWIDTH_LAST + 1)}
    table[_IDEOGRAPHIC_SPACE] = ord(" ")
    for cp in range(0x80, _LAST_DIGIT_PLANE_END):
        if chr(cp).isdecimal():  # exactly the Nd category, e.g. Arabic-Indic digits
            table[cp] = ord("0") + unicodedata.decimal(chr(cp))
    return table


_FOLD = _build_fold_table()


def _probe(text: str) -> str:
    return text.translate(_FOLD)


# --------------------------------------------------------------------------
# E-mail

# The look-behind pins each attempt to the start of a local part, which keeps
# the scan linear on long runs of local-part characters such as "aaaa...".
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])"
    r"[A-Za-z0-9._%+-]{1,64}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}"
    r"[A-Za-z]{2,63}(?![A-Za-z])"
)


def _find_emails(probe: str) -> Iterator[_Span]:
    for m in _EMAIL.finditer(probe):
        yield _Span(m.start(), m.end(), EntityType.EMAIL, m.group().lower())


# --------------------------------------------------------------------------
# PRC resident identity card (GB 11643-1999)

_PRC_ID = re.compile(r"(?<![0-9A-Za-z])[1-9][0-9]{16}[0-9Xx](?![0-9A-Za-z])")
_PRC_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_PRC_CHECK = "10X98765432"


def _prc_checksum_ok(value: str) -> bool:
    total = sum(int(d) * w for d, w in zip(value, _PRC_WEIGHTS, strict=False))
    return _PRC_CHECK[total % 11] == value[17].upper()


def _find_prc_ids(probe: str) -> Iterator[_Span]:
    for m in _PRC_ID.finditer(probe):
        if _prc_checksum_ok(m.group()):
            yield _Span(m.start(), m.end(), EntityType.PRC_ID, m.group().upper())


# --------------------------------------------------------------------------
# IBAN (ISO 13616)

# Either one unbroken token or groups of four with a shorter last group.
_IBAN = re.compile(
    r"(?<![0-9A-Za-z])[A-Za-z]{2}[0-9]{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)"
    r"(?![0-9A-Za-z])"
)
_IBAN_MIN_LEN = 15  # Norway, the shortest national format


def _iban_checksum_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_in(candidate: str) -> int:
    """Length of the longest valid IBAN prefix ending on a group, or 0.

    The grouped form may swallow a following 4-letter word ("... 32 THEN"),
    so shorter group-aligned prefixes are tried too.
    """
    ends = [len(candidate)] + [i for i in range(len(candidate) - 1, 3, -1) if candidate[i] == " "]
    for end in ends:
        compact = candidate[:end].replace(" ", "").upper()
        if len(compact) >= _IBAN_MIN_LEN and _iban_checksum_ok(compact):
            return end
    return 0


def _find_ibans(probe: str) -> Iterator[_Span]:
    for m in _IBAN.finditer(probe):
        length = _iban_in(m.group())
        if length:
            value = m.group()[:length].replace(" ", "").upper()
            yield _Span(m.start(), m.start() + length, EntityType.IBAN, value)


# --------------------------------------------------------------------------
# Payment card numbers (PAN)

# Maximal runs of digit groups joined by single spaces or dashes; a card is
# searched inside each run on group boundaries (e.g. "pay 100 4111 1111 ...").
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_PAN_MIN, _PAN_MAX = 13, 19
_LATIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_GLUE_BEFORE = _LATIN | {"+"}
_GLUE_AFTER = _LATIN


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # digit d doubled, digits summed


def _luhn_prefix_sums(digits: str) -> tuple[list[int], ...]:
    """sums[p][i]: Luhn sum of digits[:i] doubling the indices j with j % 2 == p.

    Makes each window's Luhn check O(1), so a 100k-group run stays linear.
    """
    plain = [int(ch) for ch in digits]
    doubled = [_LUHN_DOUBLED[d] for d in plain]
    even_doubled = [doubled[j] if j % 2 == 0 else plain[j] for j in range(len(plain))]
    odd_doubled = [plain[j] if j % 2 == 0 else doubled[j] for j in range(len(plain))]
    return (
        list(itertools.accumulate(even_doubled, initial=0)),
        list(itertools.accumulate(odd_doubled, initial=0)),
    )


@dataclass(frozen=True)
class _Groups:
    starts: list[int]  # probe offset of each group
    ends: list[int]
    cuts: list[int]  # digit index where each group starts, plus the total


def _groups_of(run: re.Match[str]) -> _Groups:
    offset = run.start()
    spans = [g.span() for g in _DIGIT_GROUP.finditer(run.group())]
    return _Groups(
        starts=[offset + lo for lo, _ in spans],
        ends=[offset + hi for _, hi in spans],
        cuts=list(itertools.accumulate((hi - lo for lo, hi in spans), initial=0)),
    )


def _card_end(groups: _Groups, sums: tuple[list[int], ...], first: int, limit: int) -> int:
    """Index past the last group of the longest valid PAN in groups[first:limit], or -1."""
    cuts, base = groups.cuts, groups.cuts[first]
    shortest = max(bisect.bisect_left(cuts, base + _PAN_MIN), first + 1)
    longest = min(bisect.bisect_right(cuts, base + _PAN_MAX) - 1, limit)
    for end in range(longest, shortest - 1, -1):
        # Check digit is digits[hi-1], so the doubled indices j have j % 2 == hi % 2.
        hi = cuts[end]
        table = sums[hi % 2]
        if (table[hi] - table[base]) % 10 == 0:
            return end
    return -1


def _glued(probe: str, run: re.Match[str]) -> tuple[bool, bool]:
    """Whether the run's first/last group touches a Latin letter (or "+" before).

    Digits glued to letters are hex, tokens or IBAN bodies far more often
    than PANs; "+86 138 ..." is a phone.
    """
    before = probe[run.start() - 1] if run.start() > 0 else ""
    after = probe[run.end()] if run.end() < len(probe) else ""
    return before in _GLUE_BEFORE, after in _GLUE_AFTER


def _cards_in_run(probe: str, run: re.Match[str]) -> Iterator[_Span]:
    groups = _groups_of(run)
    digits = "".join(_DIGIT_GROUP.findall(run.group()))
    sums = _luhn_prefix_sums(digits)
    glued_left, glued_right = _glued(probe, run)
    first = 1 if glued_left else 0
    limit = len(groups.starts) - (1 if glued_right else 0)
    while first < limit:
        # No PAN starts with 0 (ISO/IEC 7812 major industry identifier).
        leading_zero = digits[groups.cuts[first]] == "0"
        end = -1 if leading_zero else _card_end(groups, sums, first, limit)
        if end < 0:
            first += 1
            continue
        pan = digits[groups.cuts[first] : groups.cuts[end]]
        start, stop = groups.starts[first], groups.ends[end - 1]
        yield _Span(start, stop, EntityType.CARD_NUMBER, pan, "****" + pan[-4:])
        first = end


def _find_cards(probe: str) -> Iterator[_Span]:
    for run in _DIGIT_RUN.finditer(probe):
        if len(run.group()) >= _PAN_MIN:
            yield from _cards_in_run(probe, run)


# --------------------------------------------------------------------------
# Phones

_CN_MOBILE = re.compile(
    r"(?<![0-9A-Za-z+])(?:(?:\+|00)86[ -]?)?(1[3-9][0-9])[ -]?([0-9]{4})[ -]?([0-9]{4})"
    r"(?![0-9A-Za-z])"
)


def _find_cn_mobiles(probe: str) -> Iterator[_Span]:
    for m in _CN_MOBILE.finditer(probe):
        yield _Span(m.start(), m.end(), EntityType.PHONE, "+86" + "".join(m.groups()))


PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "CN")

# Characters PhoneNumberMatcher accepts inside a number (its lead class and
# VALID_PUNCTUATION minus the letter "x", after probe folding). Pre-cutting
# the text into such segments keeps the matcher off prose entirely.
_PHONE_SEGMENT = re.compile(
    "[0-9+()\\[\\]./~ \u00a0\u00ad\u200b\u2060\u2010-\u2015\u2212\u2053\u223c\u30fc-]+"
)
_PHONE_MIN_DIGITS = 6
_PHONE_MAX_BLOCK = 17  # longer digit blocks cannot be (part of) a number


def _phone_pieces(segment: str) -> Iterator[tuple[int, int]]:
    """Split a segment where no number can straddle, yielding (start, end).

    The matcher parses every digit block of a candidate, so "1 1 1 ..." or
    a long digit run would make a 200 KB input take seconds. Written phone
    numbers do not have two one-digit blocks in a row, and no block longer
    than a whole number can belong to one, so cutting there costs no recall.
    """
    piece_start, prev_len = 0, 0
    for block in _DIGIT_GROUP.finditer(segment):
        size = len(block.group())
        if size > _PHONE_MAX_BLOCK or (size == 1 and prev_len == 1):
            yield piece_start, block.start()
            piece_start = block.end() if size > _PHONE_MAX_BLOCK else block.start()
        prev_len = size
    yield piece_start, len(segment)


def _phone_windows(probe: str) -> Iterator[tuple[int, int]]:
    for seg in _PHONE_SEGMENT.finditer(probe):
        if len(seg.group()) < _PHONE_MIN_DIGITS:
            continue
        for lo, hi in _phone_pieces(seg.group()):
            piece = seg.group()[lo:hi]
            if sum(ch.isdigit() for ch in piece) >= _PHONE_MIN_DIGITS:
                yield seg.start() + lo, seg.start() + hi


def _context(probe: str, lo: int, hi: int) -> tuple[int, int]:
    """Widen a piece by one non-digit character each side.

    The matcher then applies its own "not glued to a Latin letter" rule,
    while a digit on a cut edge stays out so it cannot join a candidate.
    """
    if lo > 0 and not probe[lo - 1].isdigit():
        lo -= 1
    if hi < len(probe) and not probe[hi].isdigit():
        hi += 1
    return lo, hi


def _matches_in(probe: str, lo: int, hi: int, region: str) -> Iterator[_Span]:
    ctx_lo, ctx_hi = _context(probe, lo, hi)
    matcher = phonenumbers.PhoneNumberMatcher(
        probe[ctx_lo:ctx_hi], region, leniency=phonenumbers.Leniency.VALID
    )
    for m in matcher:
        start, end = ctx_lo + m.start, ctx_lo + m.end
        if lo <= start and end <= hi:
            e164 = phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164)
            yield _Span(start, end, EntityType.PHONE, e164)


def _find_phones(probe: str) -> Iterator[_Span]:
    for lo, hi in _phone_windows(probe):
        for region in PHONE_REGIONS:
            yield from _matches_in(probe, lo, hi, region)


# --------------------------------------------------------------------------
# Dates

_YMD = re.compile(
    r"(?<![0-9])(?P<y>[0-9]{4})(?P<sep>[-/.])(?P<m>[0-9]{1,2})(?P=sep)(?P<d>[0-9]{1,2})(?![0-9])"
)
_DMY = re.compile(
    r"(?<![0-9])(?P<a>[0-9]{1,2})(?P<sep>[-/.])(?P<b>[0-9]{1,2})(?P=sep)(?P<y>[0-9]{4})(?![0-9])"
)
_CJK_DATE = re.compile(
    r"(?<![0-9])(?P<y>[0-9]{4}) ?年 ?(?P<m>[0-9]{1,2}) ?月 ?(?P<d>[0-9]{1,2}) ?[日号](?![0-9])"
)


def _iso_date(year: str, month: str, day: str) -> str | None:
    if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
        return f"{year}-{int(month):02d}-{int(day):02d}"
    return None


def _year_first(m: re.Match[str]) -> str | None:
    return _iso_date(m["y"], m["m"], m["d"])


def _day_or_month_first(m: re.Match[str]) -> str | None:
    # Day-first unless only month-first validates ("03/15/2024"), so an
    # ambiguous "03/04/2024" correlates with "2024-04-03".
    return _iso_date(m["y"], m["b"], m["a"]) or _iso_date(m["y"], m["a"], m["b"])


_DATE_FORMS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]], ...] = (
    (_CJK_DATE, _year_first),
    (_YMD, _year_first),
    (_DMY, _day_or_month_first),
)


def _find_dates(probe: str) -> Iterator[_Span]:
    for pattern, to_iso in _DATE_FORMS:
        for m in pattern.finditer(probe):
            iso = to_iso(m)
            if iso is not None:
                yield _Span(m.start(), m.end(), EntityType.DATE, iso)


# --------------------------------------------------------------------------
# Orchestration

# Earlier detectors win overlaps: e-mail first so digits inside an address
# are not split into phone/ID tokens; structured IDs before the lenient
# phone matcher; dates last because every other type contains date-like runs.
_DETECTORS: tuple[Detector, ...] = (
    _find_emails,
    _find_prc_ids,
    _find_ibans,
    _find_cards,
    _find_cn_mobiles,
    _find_phones,
    _find_dates,
)


def _blank_out(probe: str, spans: Sequence[_Span]) -> str:
    pieces: list[str] = []
    cursor = 0
    for span in sorted(spans, key=lambda s: s.start):
        pieces.append(probe[cursor : span.start])
        pieces.append(_BLANK * (span.end - span.start))
        cursor = span.end
    pieces.append(probe[cursor:])
    return "".join(pieces)


def _collect(probe: str) -> list[_Span]:
    accepted: list[_Span] = []
    taken = bytearray(len(probe))
    for detect in _DETECTORS:
        view = _blank_out(probe, accepted) if accepted else probe
        for span in detect(view):
            # Detectors may overlap among themselves (e.g. phone regions).
            if 1 not in taken[span.start : span.end]:
                taken[span.start : span.end] = b"\x01" * (span.end - span.start)
                accepted.append(span)
    return sorted(accepted, key=lambda s: s.start)


class PiiMasker:
    """Masks PII with keyed fingerprints; safe to share across threads."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes):
            raise TypeError("key must be bytes")
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(f"key must be at least {_MIN_KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return "PiiMasker(key=<redacted>)"

    def _token(self, span: _Span) -> str:
        message = f"{span.entity.value}:{span.value}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
        fp = digest[:_FINGERPRINT_HEX_CHARS]
        middle = f"{span.shown}:" if span.shown else ""
        return f"[{span.entity.value}:{middle}{fp}]"

    def mask(self, text: str) -> MaskedText:
        spans = _collect(_probe(text))
        pieces: list[str] = []
        counts: dict[str, int] = {}
        cursor = 0
        for span in spans:
            pieces.append(text[cursor : span.start])
            pieces.append(self._token(span))
            counts[span.entity.value] = counts.get(span.entity.value, 0) + 1
            cursor = span.end
        pieces.append(text[cursor:])
        return MaskedText(text="".join(pieces), counts=counts)

    def mask_many(self, texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
        masked: list[str] = []
        totals: dict[str, int] = {}
        for text in texts:
            result = self.mask(text)
            masked.append(result.text)
            for entity, n in result.counts.items():
                totals[entity] = totals.get(entity, 0) + n
        return masked, totals
