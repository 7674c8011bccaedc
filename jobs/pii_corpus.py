"""A seeded, labelled synthetic corpus for measuring :mod:`jobs.pii` (``seekq pii-eval``).

Documents are English or Chinese sentences with values slotted into templates; every
value that is PII is a gold span ``(start, end, entity)``, every decoy (an order
number, a timestamp, a Luhn-invalid card number, a PRC id with a wrong check digit,
a version, a price) is recorded too, so false positives can be traced to their kind.
The same seed always gives the same corpus (``random.Random(seed)``, no network).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobs import pii_samples as num
from jobs import pii_text_samples as txt
from jobs.pii_samples import Maker, Sample


@dataclass(frozen=True)
class GoldSpan:
    start: int
    end: int
    entity: str | None  # None: a decoy span that must stay unmasked
    kind: str  # the maker that wrote it, e.g. "card.amex", "decoy.timestamp"


@dataclass(frozen=True)
class LabelledDocument:
    doc_id: str
    language: str  # "en" or "zh"
    text: str
    spans: tuple[GoldSpan, ...]

    @property
    def gold(self) -> tuple[GoldSpan, ...]:
        return tuple(s for s in self.spans if s.entity is not None)


# Kind name, maker, relative weight. Weights keep every entity type in the thousands
# with the default 1,500 documents and favour the formats that are easy to get wrong.
KINDS: tuple[tuple[str, Maker, int], ...] = (
    *((f"card.{brand}", num.card_maker(brand), 2) for brand in sorted(num.BRANDS)),
    ("prc_id", num.prc_valid, 12),
    ("iban", num.iban_valid, 12),
    ("phone.cn_mobile", num.cn_mobile, 6),
    ("phone.cn_landline", num.cn_landline, 2),
    ("phone.us", num.us_phone, 3),
    ("phone.gb", num.gb_phone, 2),
    ("email", num.email, 12),
    ("date", txt.date, 10),
    ("date.iso_datetime", txt.iso_datetime, 2),
    ("secret.api_key", txt.api_key, 10),
    ("secret.pem", txt.pem_key, 2),
    ("secret.url_password", txt.url_password, 2),
    ("decoy.card_luhn_invalid", num.luhn_invalid_card, 4),
    ("decoy.prc_bad_checksum", num.prc_bad_checksum, 4),
    ("decoy.iban_bad_checksum", num.iban_bad_checksum, 3),
    ("decoy.order_number", txt.order_number, 6),
    ("decoy.timestamp", txt.timestamp, 4),
    ("decoy.version_or_price", txt.version_or_price, 6),
    ("decoy.near_miss_secret", txt.near_miss_secret, 3),
    ("decoy.invalid_date", txt.invalid_date, 2),
)

_LABELS = {
    "CARD_NUMBER": ("card", "卡号"),
    "EMAIL": ("e-mail", "邮箱"),
    "PHONE": ("phone", "电话"),
    "PRC_ID": ("ID number", "身份证号"),
    "IBAN": ("IBAN", "账号"),
    "DATE": ("date", "日期"),
    "SECRET": ("API key", "密钥"),
    None: ("reference", "编号"),
}
# {v}: the value; {l}: a label for its type. Some put the value right against CJK
# characters or punctuation with no space, the usual way in Chinese text.
_TEMPLATES = {
    "en": (
        "Please note the {l} {v} for the record.",
        "{l}: {v}",
        "Customer wrote ({v}) in the form.",
        'The ticket says "{v}", see above.',
        "Updated {l} is {v}; please confirm.",
        "{v}",
        "Ref {v}, thanks!",
    ),
    "zh": (
        "请核对{l}{v}谢谢",
        "{l}\uff1a{v}。",
        "客户留下的{l}是{v}\uff0c请尽快处理。",
        "\uff08{v}\uff09已登记",
        "用户备注{v}无误",
        "「{v}」",
    ),
}
_MULTILINE_TEMPLATES = {"en": "{l}:\n{v}\nEnd of note.", "zh": "{l}如下\uff1a\n{v}\n以上。"}
_FILLER = {
    "en": (
        "The meeting moved to the second floor.",
        "We shipped 3 boxes and 42 items in total.",
        "Version 3.11 works; room 101 is free.",
        "Thanks for your patience.",
    ),
    "zh": (
        "会议改到二楼。",
        "共发出3箱\uff0c42件商品。",
        "感谢您的耐心等待。",
        "版本3.11可以使用。",
    ),
}


class _Builder:
    """Concatenates sentences and records where each slotted value landed."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.length = 0
        self.spans: list[GoldSpan] = []

    def add(self, text: str) -> None:
        self.pieces.append(text)
        self.length += len(text)

    def add_value(self, sample: Sample, kind: str) -> None:
        for lo, hi in sample.spans():
            self.spans.append(GoldSpan(self.length + lo, self.length + hi, sample.entity, kind))
        self.add(sample.text)


def _sentence(builder: _Builder, rng: random.Random, language: str) -> None:
    names, makers, weights = zip(*KINDS, strict=True)
    index = rng.choices(range(len(KINDS)), weights=weights)[0]
    sample = makers[index](rng)
    label = _LABELS[sample.entity][0 if language == "en" else 1]
    template = (
        _MULTILINE_TEMPLATES[language] if "\n" in sample.text else rng.choice(_TEMPLATES[language])
    )
    before, after = template.replace("{l}", label).split("{v}")
    builder.add(before)
    builder.add_value(sample, names[index])
    builder.add(after)


def generate_document(rng: random.Random, doc_id: str) -> LabelledDocument:
    language = rng.choice(("en", "zh"))
    builder = _Builder()
    for i in range(rng.randint(3, 8)):
        if i:
            builder.add(" " if language == "en" else "")
        if rng.random() < 0.15:
            builder.add(rng.choice(_FILLER[language]))
        else:
            _sentence(builder, rng, language)
    text = "".join(builder.pieces)
    return LabelledDocument(doc_id, language, text, tuple(builder.spans))


DEFAULT_SEED = 20261129
DEFAULT_DOCUMENTS = 1500


def generate_corpus(
    seed: int = DEFAULT_SEED, documents: int = DEFAULT_DOCUMENTS
) -> list[LabelledDocument]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    return [generate_document(rng, f"doc-{i:05d}") for i in range(documents)]
