"""Unit tests for jobs.pii (policy pii-v2)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import time

import pytest

from jobs.pii import POLICY_VERSION, EntityType, MaskedText, PiiMasker

KEY = b"0123456789abcdef-test-key"
OTHER_KEY = b"fedcba9876543210-other-key"

# Full-width punctuation, written as escapes to keep the source ASCII-clean.
COLON = "\uff1a"
SEMICOLON = "\uff1b"

TOKEN = re.compile(r"\[([A-Z_]+):(?:(\*{4}[0-9]{4}):)?([0-9a-f]{8})\]")


def _fullwidth(text: str) -> str:
    """ASCII digits/@/. to their full-width forms (U+FF10.. etc.)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _fp(entity: str, value: str, key: bytes = KEY) -> str:
    return hmac.new(key, f"{entity}:{value}".encode(), hashlib.sha256).hexdigest()[:8]


def _tokens(text: str) -> list[tuple[str, str, str]]:
    return [(m[1], m[2] or "", m[3]) for m in TOKEN.finditer(text)]


@pytest.fixture
def masker() -> PiiMasker:
    return PiiMasker(KEY)


# --------------------------------------------------------------------------
# API surface


def test_policy_version() -> None:
    assert POLICY_VERSION == "pii-v2"


def test_entity_values_are_their_names() -> None:
    assert [e.value for e in EntityType] == [
        "CARD_NUMBER",
        "EMAIL",
        "PHONE",
        "PRC_ID",
        "IBAN",
        "DATE",
        "SECRET",
    ]
    assert EntityType.EMAIL == "EMAIL"


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 15])
def test_short_key_raises(key: bytes) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PiiMasker(key)


def test_sixteen_byte_key_accepted() -> None:
    PiiMasker(b"x" * 16)


def test_non_bytes_key_raises() -> None:
    with pytest.raises(TypeError):
        PiiMasker("x" * 32)  # type: ignore[arg-type]


def test_repr_does_not_leak_key(masker: PiiMasker) -> None:
    assert "0123456789abcdef" not in repr(masker)


def test_masked_text_is_frozen(masker: PiiMasker) -> None:
    result = masker.mask("mail a@example.com")
    assert isinstance(result, MaskedText)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "x"  # type: ignore[misc]


def test_text_without_pii_is_unchanged(masker: PiiMasker) -> None:
    text = "Hello world, 你好世界. Version 3.11, 42 apples, room 101."
    assert masker.mask(text) == MaskedText(text=text, counts={})


def test_empty_text(masker: PiiMasker) -> None:
    assert masker.mask("") == MaskedText(text="", counts={})


# --------------------------------------------------------------------------
# Each type in English and next to CJK text

CASES = [
    ("CARD_NUMBER", "4111111111111111"),
    ("EMAIL", "test.user@example.com"),
    ("PHONE", "13812345678"),
    ("PRC_ID", "11010519491231002X"),
    ("IBAN", "GB82WEST12345698765432"),
    ("DATE", "2024-03-15"),
]


@pytest.mark.parametrize(("entity", "raw"), CASES)
def test_masked_in_english_text(masker: PiiMasker, entity: str, raw: str) -> None:
    result = masker.mask(f"Please note {raw} for the record.")
    assert raw not in result.text
    assert result.counts == {entity: 1}
    assert [t[0] for t in _tokens(result.text)] == [entity]
    assert result.text.startswith("Please note [")
    assert result.text.endswith("] for the record.")


@pytest.mark.parametrize(("entity", "raw"), CASES)
def test_masked_next_to_cjk(masker: PiiMasker, entity: str, raw: str) -> None:
    result = masker.mask(f"联系我{raw}谢谢")
    assert raw not in result.text
    assert result.counts == {entity: 1}
    assert result.text.startswith("联系我[")
    assert result.text.endswith("]谢谢")


# --------------------------------------------------------------------------
# Cards


@pytest.mark.parametrize(
    ("raw", "last4"),
    [
        ("4111 1111 1111 1111", "1111"),  # Visa
        ("4111-1111-1111-1111", "1111"),
        ("5555 5555 5555 4444", "4444"),  # Mastercard
        ("5105-1051-0510-5100", "5100"),
        ("3782 822463 10005", "0005"),  # Amex 4-6-5
        ("3714-496353-98431", "8431"),
        ("4000056655665556", "5556"),
    ],
)
def test_card_masked_with_last_four_only(masker: PiiMasker, raw: str, last4: str) -> None:
    out = masker.mask(f"card: {raw}, thanks").text
    digits = re.sub(r"[^0-9]", "", raw)
    assert raw not in out
    assert digits not in out
    assert digits[:6] not in out  # BIN is not shown either
    assert _tokens(out) == [("CARD_NUMBER", "****" + last4, _fp("CARD_NUMBER", digits))]
    assert out == f"card: [CARD_NUMBER:****{last4}:{_fp('CARD_NUMBER', digits)}], thanks"


def test_fullwidth_card(masker: PiiMasker) -> None:
    raw = _fullwidth("4111111111111111")
    result = masker.mask(f"卡号{raw}谢谢")
    assert raw not in result.text
    assert result.text == f"卡号[CARD_NUMBER:****1111:{_fp('CARD_NUMBER', '4111111111111111')}]谢谢"


def test_arabic_indic_digits_card(masker: PiiMasker) -> None:
    raw = "".join(chr(0x0660 + int(d)) for d in "4111111111111111")
    assert masker.mask(f"card {raw}").counts == {"CARD_NUMBER": 1}


@pytest.mark.parametrize(
    "text",
    [
        "card 4111111111111112 declined",  # Luhn-invalid 16 digits
        "Order 1234567890 shipped",  # 10-digit order number
        "created_at=1700000000",  # unix timestamp
        "ts 1700000000123",  # millisecond timestamp, 13 digits
        "sha 4111111111111111abc",  # glued to letters: hex, not a PAN
        "ref 0000000000000000",  # no PAN starts with 0
        "long 41111111111111110000",  # embedded in a longer digit run
    ],
)
def test_card_lookalikes_left_alone(masker: PiiMasker, text: str) -> None:
    assert masker.mask(text) == MaskedText(text=text, counts={})


def test_card_found_after_unrelated_digit_group(masker: PiiMasker) -> None:
    out = masker.mask("pay 100 4111 1111 1111 1111").text
    assert out == f"pay 100 [CARD_NUMBER:****1111:{_fp('CARD_NUMBER', '4111111111111111')}]"


def test_two_cards_counted(masker: PiiMasker) -> None:
    result = masker.mask("a 4111111111111111 b 5555555555554444")
    assert result.counts == {"CARD_NUMBER": 2}
    assert "4111111111111111" not in result.text
    assert "5555555555554444" not in result.text


# --------------------------------------------------------------------------
# PRC resident IDs


@pytest.mark.parametrize("raw", ["11010519491231002X", "11010519491231002x", "440524188001010014"])
def test_valid_prc_id_masked(masker: PiiMasker, raw: str) -> None:
    result = masker.mask(f"身份证号{COLON}{raw}。")
    assert raw not in result.text
    assert result.text == f"身份证号{COLON}[PRC_ID:{_fp('PRC_ID', raw.upper())}]。"


@pytest.mark.parametrize("raw", ["110105194912310021", "11010519491231002Y", "440524188001010015"])
def test_invalid_prc_id_left_alone(masker: PiiMasker, raw: str) -> None:
    assert masker.mask(f"身份证号{COLON}{raw}").counts.get("PRC_ID") is None


def test_prc_id_case_insensitive_fingerprint(masker: PiiMasker) -> None:
    lower = masker.mask("11010519491231002x").text
    upper = masker.mask("11010519491231002X").text
    assert lower == upper


# --------------------------------------------------------------------------
# IBAN


@pytest.mark.parametrize(
    "raw",
    [
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
        "NO9386011117947",
    ],
)
def test_valid_iban_masked(masker: PiiMasker, raw: str) -> None:
    result = masker.mask(f"IBAN: {raw}. Thanks")
    compact = raw.replace(" ", "")
    assert raw not in result.text
    assert result.text == f"IBAN: [IBAN:{_fp('IBAN', compact)}]. Thanks"


@pytest.mark.parametrize(
    "raw", ["GB82WEST12345698765433", "GB83WEST12345698765432", "DE89370400440532013001"]
)
def test_invalid_iban_left_alone(masker: PiiMasker, raw: str) -> None:
    assert masker.mask(f"IBAN: {raw}") == MaskedText(text=f"IBAN: {raw}", counts={})


def test_grouped_iban_followed_by_word(masker: PiiMasker) -> None:
    # A 4-letter word after the last group must not be swallowed.
    out = masker.mask("FR14 2004 1010 0505 0001 3M02 606 THEN more").text
    assert out == f"[IBAN:{_fp('IBAN', 'FR1420041010050500013M02606')}] THEN more"


def test_iban_spacing_correlates(masker: PiiMasker) -> None:
    assert (
        masker.mask("GB82WEST12345698765432").text
        == masker.mask("GB82 WEST 1234 5698 7654 32").text
    )


# --------------------------------------------------------------------------
# E-mail


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Mail John.Doe+tag@Example.CO.UK now", "John.Doe+tag@Example.CO.UK"),
        ("联系我test.user@example.com谢谢", "test.user@example.com"),
        ("<a_b-c%d@sub.domain.org>", "a_b-c%d@sub.domain.org"),
        ("end of sentence x@y.io.", "x@y.io"),
    ],
)
def test_email_masked(masker: PiiMasker, text: str, address: str) -> None:
    result = masker.mask(text)
    assert address not in result.text
    assert result.counts == {"EMAIL": 1}
    assert f"[EMAIL:{_fp('EMAIL', address.lower())}]" in result.text


def test_fullwidth_at_sign(masker: PiiMasker) -> None:
    raw = "test.user" + _fullwidth("@") + "example.com"
    result = masker.mask(f"邮箱{raw}。")
    assert result.text == f"邮箱[EMAIL:{_fp('EMAIL', 'test.user@example.com')}]。"


def test_email_case_insensitive_fingerprint(masker: PiiMasker) -> None:
    assert masker.mask("A@B.COM").text == masker.mask("a@b.com").text


def test_digits_inside_email_stay_one_email(masker: PiiMasker) -> None:
    result = masker.mask("QQ: 13812345678@qq.com")
    assert result.counts == {"EMAIL": 1}
    assert "13812345678" not in result.text


@pytest.mark.parametrize("text", ["a@b", "user@localhost", "@example.com", "x@.com"])
def test_non_emails_left_alone(masker: PiiMasker, text: str) -> None:
    assert masker.mask(text).counts == {}


# --------------------------------------------------------------------------
# Phones


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 415-555-2671", "+14155552671"),
        ("(415) 555-2671", "+14155552671"),
        ("+44 20 7946 0958", "+442079460958"),
        ("020 7946 0958", "+442079460958"),
        ("13812345678", "+8613812345678"),
        ("+86 138 1234 5678", "+8613812345678"),
        ("+86 138-1234-5678", "+8613812345678"),
        ("0086 138 1234 5678", "+8613812345678"),
        ("+8613812345678", "+8613812345678"),
    ],
)
def test_phone_masked_as_e164(masker: PiiMasker, raw: str, e164: str) -> None:
    result = masker.mask(f"call {raw} today")
    assert result.text == f"call [PHONE:{_fp('PHONE', e164)}] today"
    assert result.counts == {"PHONE": 1}


def test_fullwidth_cn_mobile(masker: PiiMasker) -> None:
    raw = _fullwidth("13812345678")
    expected = f"电话{COLON}[PHONE:{_fp('PHONE', '+8613812345678')}]"
    assert masker.mask(f"电话{COLON}{raw}").text == expected


def test_cn_mobile_in_longer_digit_run_left_alone(masker: PiiMasker) -> None:
    text = "流水号 913812345678901"
    assert masker.mask(text).counts.get("PHONE") is None


def test_phone_formats_correlate(masker: PiiMasker) -> None:
    tokens = {
        masker.mask(t).text for t in ["13812345678", "+86 138 1234 5678", "0086-138-1234-5678"]
    }
    assert len(tokens) == 1


# --------------------------------------------------------------------------
# Dates


@pytest.mark.parametrize(
    "raw",
    [
        "2024-03-15",
        "2024/03/15",
        "15/03/2024",
        "03/15/2024",
        "15.03.2024",
        "2024年3月15日",
        "2024年03月15日",
        _fullwidth("2024") + "年" + _fullwidth("3") + "月" + _fullwidth("15") + "日",
    ],
)
def test_dates_masked(masker: PiiMasker, raw: str) -> None:
    result = masker.mask(f"出生日期 {raw} ok")
    assert raw not in result.text
    assert result.text == f"出生日期 [DATE:{_fp('DATE', '2024-03-15')}] ok"


def test_iso_datetime_date_part_masked(masker: PiiMasker) -> None:
    out = masker.mask("at 2024-03-15T10:30:00Z").text
    assert out == f"at [DATE:{_fp('DATE', '2024-03-15')}]T10:30:00Z"


@pytest.mark.parametrize(
    "raw", ["2024-13-45", "2024-00-10", "2024-02-32", "32/13/2024", "15.13.2024"]
)
def test_invalid_dates_left_alone(masker: PiiMasker, raw: str) -> None:
    assert masker.mask(f"on {raw}") == MaskedText(text=f"on {raw}", counts={})


# --------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_stable_across_calls_and_instances() -> None:
    text = "mail a@example.com card 4111111111111111"
    assert PiiMasker(KEY).mask(text) == PiiMasker(KEY).mask(text)


def test_fingerprint_is_keyed_hmac_not_plain_hash(masker: PiiMasker) -> None:
    value = "a@example.com"
    out = masker.mask(value).text
    assert out == f"[EMAIL:{_fp('EMAIL', value)}]"
    plain = hashlib.sha256(f"EMAIL:{value}".encode()).hexdigest()[:8]
    assert plain not in out


def test_fingerprint_differs_across_keys() -> None:
    text = "card 4111111111111111 mail a@example.com tel 13812345678"
    ours = {t[2] for t in _tokens(PiiMasker(KEY).mask(text).text)}
    theirs = {t[2] for t in _tokens(PiiMasker(OTHER_KEY).mask(text).text)}
    assert len(ours) == 3
    assert ours.isdisjoint(theirs)


def test_different_values_get_different_fingerprints(masker: PiiMasker) -> None:
    out = masker.mask("a@example.com b@example.com").text
    fps = [t[2] for t in _tokens(out)]
    assert len(set(fps)) == 2


def test_same_value_same_token_within_text(masker: PiiMasker) -> None:
    out = masker.mask("a@example.com and again A@Example.com").text
    first, second = _tokens(out)
    assert first == second


# --------------------------------------------------------------------------
# Mixed text, counts, raw values never leak

MIXED_RAWS = [
    "4111 1111 1111 1111",
    "john.doe@example.com",
    "+1 415-555-2671",
    "13812345678",
    "11010519491231002X",
    "GB82 WEST 1234 5698 7654 32",
    "2024-03-15",
    "15/03/2024",
]
MIXED = (
    "Customer john.doe@example.com (tel +1 415-555-2671, 手机13812345678) paid with "
    f"4111 1111 1111 1111 on 2024-03-15; 身份证11010519491231002X{SEMICOLON}"
    "IBAN GB82 WEST 1234 5698 7654 32, due 15/03/2024."
)


def test_mixed_text_counts_and_no_leaks(masker: PiiMasker) -> None:
    result = masker.mask(MIXED)
    assert result.counts == {
        "EMAIL": 1,
        "PHONE": 2,
        "CARD_NUMBER": 1,
        "DATE": 2,
        "PRC_ID": 1,
        "IBAN": 1,
    }
    for raw in MIXED_RAWS:
        assert raw not in result.text
    for compact in ["4111111111111111", "GB82WEST12345698765432", "4155552671", "110105"]:
        assert compact not in result.text
    assert len(_tokens(result.text)) == sum(result.counts.values())


def test_mask_many_sums_counts(masker: PiiMasker) -> None:
    texts = ["a@example.com", "b@example.com 13812345678", "nothing here", MIXED]
    masked, totals = masker.mask_many(texts)
    assert masked == [masker.mask(t).text for t in texts]
    assert totals == {"EMAIL": 3, "PHONE": 3, "CARD_NUMBER": 1, "DATE": 2, "PRC_ID": 1, "IBAN": 1}


def test_mask_many_empty(masker: PiiMasker) -> None:
    assert masker.mask_many([]) == ([], {})


# --------------------------------------------------------------------------
# Adversarial input: linear time


def test_adversarial_inputs_are_fast(masker: PiiMasker) -> None:
    inputs = ["1-" * 100_000, "a@" * 100_000, "1 " * 100_000, "1" * 200_000, "a." * 100_000]
    # CPU time, not wall time: what is bounded is the algorithm's cost, and a
    # busy CI host must not turn scheduler delays into failures.
    started = time.process_time()
    for text in inputs:
        result = masker.mask(text)
        assert len(result.text) == len(text)
    assert time.process_time() - started < 5.0
