"""1 MB adversarial inputs: masking stays linear (no catastrophic backtracking, no
quadratic candidate search, no try limit past which text goes unsearched)."""

from __future__ import annotations

import time

import pytest

from jobs.pii import PiiMasker

KEY = b"0123456789abcdef-test-key"
MB = 1_000_000
BUDGET_S = 10.0  # CPU seconds for 1 MB on a slow shared box; typical is 0.2-3.5 s
GROWTH_LIMIT = 25  # 10x the input may cost at most 25x the time


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# Each unit is repeated to the wanted size; names say what they attack.
UNITS = {
    "digit_run": "1",
    "email_chain": "a@a.a@",
    "dash_between_digits": "1-",
    "space_between_digits": "1 ",
    "card_groups": "1234 ",
    "card_groups_then_word": "1234 5678 x ",
    "plus86": "+86",
    "plus86_space": "+86 ",
    "nested_brackets": "((([[[1]]])))",
    "open_brackets": "(",
    "iban_prefix": "GB82 ",
    "iban_glued": "GB82WEST",
    "fullwidth_digits": _fullwidth("1"),
    "fullwidth_groups": _fullwidth("1234 "),
    "cjk_and_digits": "电话13812",
    "valid_us_phones": "415 555 2671 ",
    "trunk_zero_groups": "0123 ",
    "gb_near_misses": "+44 20 7946 09 x ",
    "date_prefixes": "2024-",
    "slash_dates": "1/1/",
    "month_names": "Nov 29, ",
    "dotted_numbers": "1.",
    "prc_prefix": "11010519491231002",
    "sk_prefix": "sk-",
    "jwt_prefix": "eyJ",
    "pem_headers": "-----BEGIN PRIVATE KEY-----\n",
    "base64_line": "A1b+",
    "url_userinfo": "://a:",
    "url_no_at": "://user:" + "p" * 300 + " ",
}


def _text(name: str, size: int) -> str:
    unit = UNITS[name]
    return (unit * (size // len(unit) + 1))[:size]


def _cpu_seconds(masker: PiiMasker, text: str) -> float:
    # CPU time, not wall time: a busy host must not turn scheduling into failures.
    started = time.process_time()
    masker.mask(text)
    return time.process_time() - started


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(UNITS))
def test_one_megabyte_is_fast_and_linear(name: str) -> None:
    masker = PiiMasker(KEY)
    small = _cpu_seconds(masker, _text(name, MB // 10))
    large = _cpu_seconds(masker, _text(name, MB))
    assert large < BUDGET_S, f"{name}: {large:.2f} s for 1 MB"
    # Floor the small time so timer resolution on tiny runs cannot fail the ratio.
    assert large < GROWTH_LIMIT * max(small, 0.02), f"{name}: {small:.3f} s -> {large:.3f} s"


@pytest.mark.slow
def test_unterminated_email() -> None:
    masker = PiiMasker(KEY)
    for text in ("a" * MB + "@", "a." * (MB // 2) + "@", "@" + "a" * MB):
        assert _cpu_seconds(masker, text) < BUDGET_S


def test_phone_after_a_long_numeric_run_is_still_found() -> None:
    """The old matcher gave up after 65,535 candidates; nothing past them was searched."""
    text = "1234 " * 40_000 + "call +1 415-555-2671 now"
    result = PiiMasker(KEY).mask(text)
    assert result.counts == {"PHONE": 1}
    assert result.text.endswith("] now")
