"""PII masking (policy ``pii-v2``).

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

from jobs.pii_dates import find_dates
from jobs.pii_phones import find_phones
from jobs.pii_secrets import find_secrets

POLICY_VERSION: str = "pii-v2"
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
    SECRET = "SECRET"  # noqa: S105 - an entity name, not a password


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
    reserved: bool = False  # a look-alike: kept from later detectors, left unmasked


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


def _prc_birth_date_ok(value: str) -> bool:
    """Digits 7-14 are the holder's birth date; 18xx is valid (GB 11643 allows it)."""
    century, month, day = value[6:8], int(value[10:12]), int(value[12:14])
    return century in {"18", "19", "20"} and 1 <= month <= 12 and 1 <= day <= 31


def _find_prc_ids(probe: str) -> Iterator[_Span]:
    for m in _PRC_ID.finditer(probe):
        if _prc_birth_date_ok(m.group()) and _prc_checksum_ok(m.group()):
            yield _Span(m.start(), m.end(), EntityType.PRC_ID, m.group().upper())


# --------------------------------------------------------------------------
# IBAN (ISO 13616)

# Either one unbroken token or groups of four with a shorter last group.
_IBAN = re.compile(
    r"(?<![0-9A-Za-z])[A-Za-z]{2}[0-9]{2}"
    r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)"
    r"(?![0-9A-Za-z])"
)
# Length of each country's IBAN (SWIFT IBAN registry): a candidate must have exactly
# its country's length, which rules out chance mod-97 passes on shorter prefixes.
_IBAN_REGISTRY = (
    "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BR:29 BY:28 CH:21 CR:22 "
    "CY:28 CZ:24 DE:22 DK:18 DO:28 EE:20 EG:29 ES:24 FI:18 FO:18 FR:27 GB:22 GE:22 "
    "GI:23 GL:18 GR:27 GT:28 HR:21 HU:28 IE:22 IL:23 IQ:23 IS:26 IT:27 JO:30 KW:30 "
    "KZ:20 LB:28 LC:32 LI:21 LT:20 LU:20 LV:21 MC:27 MD:24 ME:22 MK:19 MR:27 MT:31 "
    "MU:30 NL:18 NO:15 PK:24 PL:28 PS:29 PT:25 QA:29 RO:24 RS:22 SA:24 SC:31 SE:24 "
    "SI:19 SK:24 SM:27 ST:25 SV:28 TL:23 TN:24 TR:26 UA:29 VA:22 VG:24 XK:20"
)
_IBAN_LENGTHS = {cc: int(n) for cc, n in (row.split(":") for row in _IBAN_REGISTRY.split())}


def _iban_checksum_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_shaped(candidate: str) -> int:
    """Length of the group-aligned prefix with the country's IBAN length, or 0.

    The grouped form may swallow a following 4-letter word ("... 32 THEN"),
    so shorter group-aligned prefixes are tried too.
    """
    wanted = _IBAN_LENGTHS.get(candidate[:2].upper(), 0)
    ends = [len(candidate)] + [i for i in range(len(candidate) - 1, 3, -1) if candidate[i] == " "]
    for end in ends:
        if len(candidate[:end].replace(" ", "")) == wanted:
            return end
    return 0


def _find_ibans(probe: str) -> Iterator[_Span]:
    for m in _IBAN.finditer(probe):
        length = _iban_shaped(m.group())
        if length:
            value = m.group()[:length].replace(" ", "").upper()
            # A wrong check digit is a typo or a look-alike: not masked, but reserved
            # so its digit groups are not read as a card or a phone either.
            reserved = not _iban_checksum_ok(value)
            yield _Span(m.start(), m.start() + length, EntityType.IBAN, value, reserved=reserved)


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


# Issuer prefixes (as numeric ranges of their first four digits) and the PAN lengths
# each brand issues. Luhn alone passes one random number in ten, so order, invoice and
# ID numbers need the brand's prefix *and* length as well.
_BRAND_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4000, 4999, frozenset({13, 16, 19})),  # Visa
    (5100, 5599, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (3400, 3499, frozenset({15})),  # Amex
    (3700, 3799, frozenset({15})),
    (3000, 3059, frozenset(range(14, 20))),  # Diners Club
    (3600, 3699, frozenset(range(14, 20))),
    (3800, 3999, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (6011, 6011, frozenset(range(16, 20))),  # Discover
    (6440, 6599, frozenset(range(16, 20))),
    (6200, 6299, frozenset(range(16, 20))),  # UnionPay
    (5018, 5018, frozenset(range(13, 20))),  # Maestro (12-digit ones are not searched)
    (5020, 5038, frozenset(range(13, 20))),
    (6304, 6304, frozenset(range(13, 20))),
    (6759, 6763, frozenset(range(13, 20))),
)


def _pan_lengths(first_digits: str) -> frozenset[int]:
    """The PAN lengths a number starting with these four digits may have (none: no brand)."""
    lead = int(first_digits[:4].ljust(4, "0"))
    lengths: frozenset[int] = frozenset()
    for low, high, allowed in _BRAND_RANGES:
        if low <= lead <= high:
            lengths |= allowed
    return lengths


def _card_end(
    groups: _Groups, sums: tuple[list[int], ...], span: tuple[int, int], lengths: frozenset[int]
) -> int:
    """Index past the last group of the longest valid PAN in groups[first:limit], or -1."""
    (first, limit), cuts = span, groups.cuts
    base = cuts[first]
    shortest = max(bisect.bisect_left(cuts, base + _PAN_MIN), first + 1)
    longest = min(bisect.bisect_right(cuts, base + _PAN_MAX) - 1, limit)
    for end in range(longest, shortest - 1, -1):
        # Check digit is digits[hi-1], so the doubled indices j have j % 2 == hi % 2.
        hi = cuts[end]
        if hi - base not in lengths:
            continue
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


# How cards are printed: 4-4-4-4 (most brands), 4-6-5 (Amex), 4-6-4 (Diners).
_CARD_GROUPINGS = frozenset({(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3)})


def _card_shaped_end(run: re.Match[str], groups: _Groups) -> int:
    """Probe offset where the run's leading card-printed groups end, or -1.

    "Printed like a card" means a card grouping of a known brand's prefix and length,
    whatever the check digit; the run may go on ("3730-172429-03395 1973/03/12").
    """
    sizes = [hi - lo for lo, hi in zip(groups.starts, groups.ends, strict=True)]
    lengths = _pan_lengths(run.group()[:9].replace(" ", "").replace("-", "")[:4])
    for count in (3, 4, 5):
        if tuple(sizes[:count]) in _CARD_GROUPINGS and sum(sizes[:count]) in lengths:
            return groups.ends[count - 1]
    return -1


def _cards_in_run(probe: str, run: re.Match[str]) -> Iterator[_Span]:
    found = False
    for span in _luhn_cards_in_run(probe, run):
        found = True
        yield span
    end = -1 if found else _card_shaped_end(run, _groups_of(run))
    if end > 0:
        # A typo or a look-alike: left unmasked, but its groups are not a phone either.
        yield _Span(run.start(), end, EntityType.CARD_NUMBER, "", reserved=True)


def _luhn_cards_in_run(probe: str, run: re.Match[str]) -> Iterator[_Span]:
    groups = _groups_of(run)
    digits = "".join(_DIGIT_GROUP.findall(run.group()))
    sums = _luhn_prefix_sums(digits)
    glued_left, glued_right = _glued(probe, run)
    first = 1 if glued_left else 0
    limit = len(groups.starts) - (1 if glued_right else 0)
    while first < limit:
        lengths = _pan_lengths(digits[groups.cuts[first] : groups.cuts[first] + 4])
        end = _card_end(groups, sums, (first, limit), lengths) if lengths else -1
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
    r"(?<![0-9A-Za-z+])(?:(?:\((?:\+|00)86\)|(?:\+|00)86)[ -]?)?"
    r"(1[3-9][0-9])[ -]?([0-9]{4})[ -]?([0-9]{4})"
    r"(?![0-9A-Za-z])"
)


def _find_cn_mobiles(probe: str) -> Iterator[_Span]:
    for m in _CN_MOBILE.finditer(probe):
        yield _Span(m.start(), m.end(), EntityType.PHONE, "+86" + "".join(m.groups()))


def _find_phones(probe: str) -> Iterator[_Span]:
    for start, end, e164 in find_phones(probe):
        yield _Span(start, end, EntityType.PHONE, e164)


# --------------------------------------------------------------------------
# Dates (patterns in jobs.pii_dates)


def _find_dates(probe: str) -> Iterator[_Span]:
    for start, end, iso in find_dates(probe):
        yield _Span(start, end, EntityType.DATE, iso)


# --------------------------------------------------------------------------
# Secrets (patterns in jobs.pii_secrets)


def _find_secrets(probe: str) -> Iterator[_Span]:
    for start, end in find_secrets(probe):
        yield _Span(start, end, EntityType.SECRET, probe[start:end])


# --------------------------------------------------------------------------
# Orchestration

# Earlier detectors win overlaps: secrets first so the digits in a key are not
# cards or phones; then e-mail so digits inside an address
# are not split into phone/ID tokens; structured IDs before the lenient
# phone matcher; dates after the structured IDs, which contain date-like runs, but
# before the phone matcher, which reads "16.09.2021" as a valid number.
_DETECTORS: tuple[Detector, ...] = (
    _find_secrets,
    _find_emails,
    _find_prc_ids,
    _find_ibans,
    _find_cards,
    _find_cn_mobiles,
    _find_dates,
    _find_phones,
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
    return sorted((s for s in accepted if not s.reserved), key=lambda s: s.start)


@dataclass(frozen=True)
class PiiSpan:
    """A detected value: text[start:end] in the caller's (unfolded) text."""

    start: int
    end: int
    entity: EntityType


def detect(text: str) -> list[PiiSpan]:
    """The spans mask() replaces, in order and without overlaps; no key needed."""
    return [PiiSpan(s.start, s.end, s.entity) for s in _collect(_probe(text))]


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
