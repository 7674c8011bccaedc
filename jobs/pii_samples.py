"""Values for the labelled PII corpus (:mod:`jobs.pii_corpus`).

Each maker draws one value from a seeded ``random.Random``: real-looking values of one
entity type (checksums valid) in one written form, or a decoy that must stay unmasked
(a look-alike with a bad checksum, an order number, a timestamp, a version). Nothing
here is a real person's data: numbers are random and only their checksums are right.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers


@dataclass(frozen=True)
class Sample:
    """One value as written; ``parts`` are its gold spans relative to ``text``."""

    text: str
    entity: str | None  # None: a decoy, nothing in it may be masked
    parts: tuple[tuple[int, int], ...] = ()

    def spans(self) -> tuple[tuple[int, int], ...]:
        return self.parts or ((0, len(self.text)),)


Maker = Callable[[random.Random], Sample]


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def fullwidth(text: str) -> str:
    """ASCII letters, digits and punctuation to their full-width forms (U+FF01..)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# --------------------------------------------------------------------------
# Cards

BRANDS: dict[str, tuple[tuple[str, ...], int]] = {
    "visa": (("4",), 16),
    "mastercard": (("51", "52", "53", "54", "55"), 16),
    "mastercard2": (("2221", "2300", "2500", "2610", "2720"), 16),
    "amex": (("34", "37"), 15),
    "discover": (("6011", "644", "649", "65"), 16),
    "jcb": (("3528", "3550", "3589"), 16),
    "unionpay": (("62",), 16),
    "unionpay19": (("62",), 19),
    "diners": (("36", "300", "305"), 14),
}
_GROUPINGS = {14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4), 19: (4, 4, 4, 4, 3)}


def luhn_check_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


def card_digits(rng: random.Random, brand: str) -> str:
    prefixes, length = BRANDS[brand]
    prefix = rng.choice(prefixes)
    body = prefix + digits(rng, length - len(prefix) - 1)
    return body + luhn_check_digit(body)


def group(value: str, sizes: tuple[int, ...], seps: list[str]) -> str:
    out, cursor = [], 0
    for i, size in enumerate(sizes):
        out.append((seps[i - 1] if i else "") + value[cursor : cursor + size])
        cursor += size
    return "".join(out)


def card_written(rng: random.Random, pan: str) -> str:
    style = rng.choice(["compact", "spaces", "dashes", "mixed", "fullwidth"])
    sizes, gaps = _GROUPINGS[len(pan)], len(_GROUPINGS[len(pan)]) - 1
    if style == "compact":
        return pan
    if style == "fullwidth":
        return fullwidth(group(pan, sizes, [" "] * gaps))
    seps = {"spaces": [" "] * gaps, "dashes": ["-"] * gaps}.get(
        style, [rng.choice(" -") for _ in range(gaps)]
    )
    return group(pan, sizes, seps)


def card_maker(brand: str) -> Maker:
    return lambda rng: Sample(card_written(rng, card_digits(rng, brand)), "CARD_NUMBER")


def luhn_invalid_card(rng: random.Random) -> Sample:
    pan = card_digits(rng, rng.choice(["visa", "mastercard", "amex"]))
    bad = str((int(pan[-1]) + rng.randint(1, 9)) % 10)
    return Sample(card_written(rng, pan[:-1] + bad), None)


# --------------------------------------------------------------------------
# PRC resident identity numbers

_PRC_REGIONS = ("110105", "310101", "440305", "510104", "330106", "320102", "420106", "610113")
_PRC_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def prc_check(body: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, _PRC_WEIGHTS, strict=True)) % 11]


def prc_body(rng: random.Random) -> str:
    birth = f"{rng.randint(1940, 2012)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    return rng.choice(_PRC_REGIONS) + birth + digits(rng, 3)


def prc_valid(rng: random.Random) -> Sample:
    body = prc_body(rng)
    check = prc_check(body)
    written = body + (check.lower() if check == "X" and rng.random() < 0.3 else check)
    return Sample(fullwidth(written) if rng.random() < 0.1 else written, "PRC_ID")


def prc_bad_checksum(rng: random.Random) -> Sample:
    body = prc_body(rng)
    wrong = rng.choice([c for c in "0123456789X" if c != prc_check(body)])
    return Sample(body + wrong, None)


# --------------------------------------------------------------------------
# IBAN

# Country, BBAN layout as (count, class) with n digits, a upper letters, c alphanumerics.
_IBAN_LAYOUTS: dict[str, tuple[tuple[int, str], ...]] = {
    "DE": ((18, "n"),),
    "GB": ((4, "a"), (14, "n")),
    "FR": ((10, "n"), (11, "c"), (2, "n")),
    "ES": ((20, "n"),),
    "IT": ((1, "a"), (10, "n"), (12, "c")),
    "NL": ((4, "a"), (10, "n")),
    "BE": ((12, "n"),),
    "CH": ((5, "n"), (12, "c")),
    "NO": ((11, "n"),),
    "PL": ((24, "n"),),
}
_CLASSES = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + "ABCDEFGH"}


def iban_check_digits(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def iban_compact(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_LAYOUTS))
    bban = "".join(
        "".join(rng.choice(_CLASSES[cls]) for _ in range(n)) for n, cls in _IBAN_LAYOUTS[country]
    )
    return country + iban_check_digits(country, bban) + bban


def iban_written(rng: random.Random, compact: str) -> str:
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def iban_valid(rng: random.Random) -> Sample:
    return Sample(iban_written(rng, iban_compact(rng)), "IBAN")


def iban_bad_checksum(rng: random.Random) -> Sample:
    compact = iban_compact(rng)
    wrong = f"{(int(compact[2:4]) + rng.randint(1, 50)) % 97 + 2:02d}"
    return Sample(iban_written(rng, compact[:2] + wrong + compact[4:]), None)


# --------------------------------------------------------------------------
# Phones

_CN_MOBILE_FORMS = (
    "{m}",
    "{a} {b} {c}",
    "{a}-{b}-{c}",
    "+86 {a} {b} {c}",
    "+86-{a}-{b}-{c}",
    "+86{m}",
    "+86 {m}",
    "0086 {a} {b} {c}",
    "(+86) {m}",
)
_US_AREAS = ("212", "415", "646", "312", "617", "206", "303", "512", "702", "305")
_US_FORMS = (
    "({a}) {b}-{c}",
    "{a}-{b}-{c}",
    "{a}.{b}.{c}",
    "+1 {a} {b} {c}",
    "1-{a}-{b}-{c}",
    "{a}{b}{c}",
    "+1 ({a}) {b} {c}",
    "{a} {b} {c}",
    "+1{a}{b}{c}",
)
_GB_FORMS = ("+44 {a} {b} {c}", "0{a} {b} {c}", "+44 (0){a} {b} {c}", "+44{a}{b}{c}")
_CN_LANDLINE_FORMS = ("0{a}-{b}", "(0{a}) {b}", "+86 {a} {b}", "0{a} {b}")


def _valid(number: str, region: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, region))
    except phonenumbers.NumberParseException:
        return False


def cn_mobile(rng: random.Random) -> Sample:
    while True:
        m = rng.choice(["13", "15", "17", "18", "19"]) + digits(rng, 9)
        if _valid(m, "CN"):
            form = rng.choice(_CN_MOBILE_FORMS)
            text = form.format(m=m, a=m[:3], b=m[3:7], c=m[7:])
            return Sample(fullwidth(text) if rng.random() < 0.1 else text, "PHONE")


def us_phone(rng: random.Random) -> Sample:
    while True:
        a, b, c = rng.choice(_US_AREAS), str(rng.randint(200, 999)), digits(rng, 4)
        if _valid(a + b + c, "US"):
            return Sample(rng.choice(_US_FORMS).format(a=a, b=b, c=c), "PHONE")


def gb_phone(rng: random.Random) -> Sample:
    while True:
        a, b, c = rng.choice(["20", "161", "131"]), digits(rng, 4), digits(rng, 4)
        if a != "20":
            b, c = digits(rng, 3), digits(rng, 4)
        if _valid("0" + a + b + c, "GB"):
            return Sample(rng.choice(_GB_FORMS).format(a=a, b=b, c=c), "PHONE")


def cn_landline(rng: random.Random) -> Sample:
    while True:
        a, b = rng.choice(["10", "21", "755", "20", "571"]), str(rng.randint(2, 8)) + digits(rng, 7)
        if _valid("0" + a + b, "CN"):
            return Sample(rng.choice(_CN_LANDLINE_FORMS).format(a=a, b=b), "PHONE")


# --------------------------------------------------------------------------
# E-mail

_NAMES = ("li.wei", "zhang_san", "john.doe", "mary+news", "a.b-c", "wang.fang88", "k", "ops")
_DOMAINS = ("example.com", "qq.com", "163.com", "mail.example.co.uk", "corp.example.org", "x.io")


def email(rng: random.Random) -> Sample:
    local = rng.choice(_NAMES) if rng.random() < 0.7 else digits(rng, rng.randint(6, 11))
    if rng.random() < 0.3:
        local += str(rng.randint(1, 999))
    address = f"{local}@{rng.choice(_DOMAINS)}"
    if rng.random() < 0.1:  # "mailto:" and angle brackets stay; the gold is the address
        return Sample(f"<mailto:{address}>", "EMAIL", ((8, 8 + len(address)),))
    if rng.random() < 0.15:
        address = address.upper()
    if rng.random() < 0.1:
        address = address.replace("@", fullwidth("@"))
    return Sample(address, "EMAIL")
