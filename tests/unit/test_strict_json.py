"""jobs.strict_json: JSON as seekq accepts it from clients."""

import json

import pytest

from jobs.catalog import get_entry, parse_spec
from jobs.errors import SpecError
from jobs.strict_json import MAX_DEPTH, find_unstorable, loads

SECRET = "4111 1111 1111 1111"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": 1, "a": 2}', "duplicate key"),
        ('{"x": {"a": 1, "a": 1}}', "duplicate key"),
        ("[NaN]", "NaN and Infinity"),
        ("[-Infinity]", "NaN and Infinity"),
        ("[1e999]", "too large"),
        ("[" + "9" * 5000 + "]", "too large"),
        ('["a\\u0000b"]', "NUL"),
        ('["\\ud800"]', "lone surrogate"),
        ('{"\\u0000": 1}', "object key"),
        ("[" * 100_000, f"deeper than {MAX_DEPTH}"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_refused_with_a_reason_and_never_the_text(text: str | bytes, problem: str) -> None:
    marked = text.replace('"a"', f'"{SECRET}"') if isinstance(text, str) else text
    with pytest.raises(json.JSONDecodeError) as refused:
        loads(marked)
    assert problem in refused.value.msg
    assert SECRET not in str(refused.value.msg)


def test_ordinary_json_is_read_as_json_loads_reads_it() -> None:
    text = '{"a": [1, 2.5, -0.0, "\\ud83d\\ude00", null, true], "b": {"c": "tab\\there"}}'
    assert loads(text) == json.loads(text)
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(nested) == json.loads(nested)


def test_in_cluster_specs_are_checked_too() -> None:
    """jobs.service.submit's callers skip the gateway: parse_spec refuses the same text."""
    assert find_unstorable({"payload": "fine"}) is None
    with pytest.raises(SpecError, match="NUL"):
        parse_spec(get_entry("ping"), {"payload": "a\x00b"})
