"""Dates, secrets and decoys for the labelled PII corpus (see :mod:`jobs.pii_samples`)."""

from __future__ import annotations

import base64
import json
import random
import string

from jobs.pii_samples import Sample, digits, fullwidth

# --------------------------------------------------------------------------
# Dates. ISO 8601 datetimes count as a DATE on their date part only: the time of
# day is kept (it dates an event, not a person), the calendar date may be a birthday.

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_LONG_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_DATE_FORMS = (
    "{y}-{m:02d}-{d:02d}",
    "{y}/{m:02d}/{d:02d}",
    "{y}.{m}.{d}",
    "{d:02d}/{m:02d}/{y}",
    "{d}/{m}/{y}",
    "{m}/{d}/{y}",
    "{d:02d}.{m:02d}.{y}",
    "{d}-{m}-{y}",
    "{y}年{m}月{d}日",
    "{y}年{m:02d}月{d:02d}日",
    "{y}年{m}月{d}号",
    "{d} {mon} {y}",
    "{mon} {d}, {y}",
    "{d} {month} {y}",
    "{month} {d}, {y}",
    "{month} {d}th, {y}",
    "{d}th {mon} {y}",
    "{mon}. {d}, {y}",
    "{d} {lower} {y}",
    "{m}/{d}/{yy:02d}",
    "{d:02d}/{m:02d}/{yy:02d}",
)


def date(rng: random.Random) -> Sample:
    y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    text = rng.choice(_DATE_FORMS).format(
        y=y,
        m=m,
        d=d,
        mon=_MONTHS[m - 1],
        month=_LONG_MONTHS[m - 1],
        lower=_MONTHS[m - 1].lower(),
        yy=y % 100,
    )
    if text[0].isdigit() and rng.random() < 0.1:
        text = fullwidth(text)
    return Sample(text, "DATE")


def iso_datetime(rng: random.Random) -> Sample:
    day = f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    time = f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    zone = rng.choice(["Z", "+08:00", ".123Z", ""])
    return Sample(day + time + zone, "DATE", ((0, len(day)),))


# --------------------------------------------------------------------------
# Secrets

_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "-_"


def _random(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _seekq_key(rng: random.Random) -> str:  # jobs.keys: sq_<16 hex>_<token_urlsafe(32)>
    return f"sq_{_random(rng, '0123456789abcdef', 16)}_{_random(rng, _URLSAFE, 43)}"


def _jwt(rng: random.Random) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": str(rng.randint(1, 10**6)), "iat": rng.randint(1_600_000_000, 1_800_000_000)}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{_random(rng, _URLSAFE, 43)}"


_KEY_FORMS = (
    lambda rng: "sk-" + _random(rng, _ALNUM, 48),
    lambda rng: "sk-proj-" + _random(rng, _URLSAFE, 120),
    lambda rng: "sk-ant-api03-" + _random(rng, _URLSAFE, 93) + "AA",
    lambda rng: "sk_live_" + _random(rng, _ALNUM, 24),
    lambda rng: "whsec_" + _random(rng, _ALNUM, 32),
    lambda rng: rng.choice(["ghp_", "gho_", "ghs_"]) + _random(rng, _ALNUM, 36),
    lambda rng: "github_pat_" + _random(rng, _ALNUM, 22) + "_" + _random(rng, _ALNUM, 59),
    lambda rng: "glpat-" + _random(rng, _URLSAFE, 20),
    lambda rng: f"xoxb-{digits(rng, 12)}-{digits(rng, 13)}-{_random(rng, _ALNUM, 24)}",
    lambda rng: f"xoxp-{digits(rng, 12)}-{digits(rng, 12)}-{digits(rng, 13)}-{digits(rng, 32)}",
    lambda rng: "AKIA" + _random(rng, string.ascii_uppercase + string.digits, 16),
    lambda rng: "AIza" + _random(rng, _URLSAFE, 35),
    lambda rng: "hf_" + _random(rng, _ALNUM, 34),
    _seekq_key,
    _jwt,
)


def api_key(rng: random.Random) -> Sample:
    return Sample(rng.choice(_KEY_FORMS)(rng), "SECRET")


def url_password(rng: random.Random) -> Sample:
    """A connection string; the gold span is the password alone."""
    scheme = rng.choice(["postgres", "postgresql+psycopg", "redis", "mysql", "amqp", "https"])
    user = rng.choice(["app", "admin", "svc_etl", "li.wei"])
    password = _random(rng, _ALNUM + "!*-_.~", rng.randint(8, 24))
    host = rng.choice(["db.internal:5432/app", "10.0.0.5:6379/0", "mq.example.com/vhost"])
    head = f"{scheme}://{user}:"
    return Sample(f"{head}{password}@{host}", "SECRET", ((len(head), len(head) + len(password)),))


# DER sizes of real keys: Ed25519 and EC P-256 (PKCS#8, SEC 1), RSA 2048 and 4096.
_KEY_DER_BYTES = (48, 121, 138, 1217, 1218, 1219, 2374, 2375)
_PEM_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


def pem_key(rng: random.Random) -> Sample:
    """The gold span is the key material (the base64 lines); the markers may stay."""
    body = base64.b64encode(rng.randbytes(rng.choice(_KEY_DER_BYTES))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    label = rng.choice(_PEM_LABELS)
    head = f"-----BEGIN {label}-----\n"
    text = head + "\n".join(lines) + f"\n-----END {label}-----"
    return Sample(text, "SECRET", ((len(head), len(head) + len(body) + len(lines) - 1),))


# --------------------------------------------------------------------------
# Decoys: must stay unmasked


def order_number(rng: random.Random) -> Sample:
    forms = (
        lambda: (
            f"ORD-{rng.randint(2020, 2026)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            f"-{digits(rng, 4)}"
        ),
        lambda: f"#{rng.randint(100000, 999999)}",
        lambda: (
            f"{rng.randint(2024, 2026)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            + digits(rng, 10)
        ),
        lambda: f"INV-{rng.randint(2020, 2026)}-{digits(rng, 5)}",
        lambda: "1Z" + _random(rng, string.ascii_uppercase + string.digits, 16),  # UPS
        lambda: "SF" + digits(rng, 12),  # SF Express waybill
    )
    return Sample(rng.choice(forms)(), None)


def timestamp(rng: random.Random) -> Sample:
    seconds = rng.randint(1_600_000_000, 1_800_000_000)
    return Sample(str(seconds) if rng.random() < 0.6 else f"{seconds}{digits(rng, 3)}", None)


def version_or_price(rng: random.Random) -> Sample:
    forms = (
        lambda: f"{rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 30)}",
        lambda: f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 99)}",
        lambda: f"${rng.randint(1, 9)},{rng.randint(100, 999)}.{rng.randint(0, 99):02d}",
        lambda: f"¥{rng.randint(1, 99)},{rng.randint(100, 999)}",
        lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        lambda: f"{rng.randint(1, 9)}/{rng.randint(2, 9)}",
        lambda: f"{rng.randint(1, 99)}%",
        lambda: f"{rng.randint(1980, 2030)}",
        lambda: f"{rng.randint(1000, 99999):,}",
        lambda: f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",  # IPv4
        lambda: f"{rng.randint(1, 12)}/{rng.randint(1, 28)}",  # a day and month, no year
        lambda: f"+{rng.randint(1, 99)}.{rng.randint(0, 99)}%",  # a change in percent
    )
    return Sample(rng.choice(forms)(), None)


def near_miss_secret(rng: random.Random) -> Sample:
    forms = (
        lambda: "sk-learn-" + rng.choice(["tutorial", "pipeline-basics", "release-notes-2024"]),
        lambda: "task-" + _random(rng, _ALNUM, 24),
        lambda: "AKIA" + _random(rng, string.ascii_uppercase, 8),
        lambda: _random(rng, "0123456789abcdef", 64),  # a SHA-256 digest
        lambda: "ghp_" + _random(rng, _ALNUM, 8),
    )
    return Sample(rng.choice(forms)(), None)


def invalid_date(rng: random.Random) -> Sample:
    y = rng.randint(2000, 2030)
    forms = (f"{y}-{rng.randint(13, 19)}-{rng.randint(1, 28):02d}", f"{rng.randint(32, 39)}/13/{y}")
    return Sample(rng.choice(forms), None)
