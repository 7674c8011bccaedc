"""JSON as seekq accepts it from clients: one meaning per document, storable everywhere.

Python's `json.loads` keeps the last of two equal keys, reads `NaN`, `Infinity` and `1e999`
as floats, and lets through strings that PostgreSQL refuses to store (NUL characters,
lone UTF-16 surrogates). `loads` refuses all of these, and nesting deeper than
`MAX_DEPTH`, with a `json.JSONDecodeError` whose message names the problem and never the
text. `find_unstorable` checks an already decoded value the same way (the in-cluster
producer's specs).
"""

import json
import re
from typing import Any

MAX_DEPTH = 64
# NUL and lone surrogates: PostgreSQL text and jsonb cannot hold them; other control
# characters are legal JSON string content and are kept.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class StrictJsonError(json.JSONDecodeError):
    """A syntactically valid JSON document seekq refuses (duplicate key, NaN...)."""

    def __init__(self, problem: str, doc: str = "", pos: int = 0) -> None:
        super().__init__(problem, doc, pos)


def loads(text: str | bytes) -> Any:
    """Decode a client's JSON document strictly (see the module docstring)."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError:
        raise StrictJsonError("not UTF-8 text") from None
    except ValueError:  # an integer of more than 4300 digits
        raise StrictJsonError("a number is too large") from None
    problem = find_unstorable(value)
    if problem is not None:
        raise StrictJsonError(problem)
    return value


def find_unstorable(value: Any) -> str | None:
    """Why a decoded JSON value cannot be accepted (too deep, a NUL character, a lone
    surrogate in a string or a key), or None. Iterative: depth is what it checks."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list) and depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            for key, child in item.items():
                if _UNSTORABLE.search(key):
                    return "an object key holds a NUL character or a lone surrogate"
                pending.append((child, depth + 1))
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and _UNSTORABLE.search(item):
            return "a string holds a NUL character (\\u0000) or a lone surrogate (\\ud800-\\udfff)"
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise StrictJsonError("duplicate key in an object")
    return result


def _no_constant(_: str) -> Any:
    raise StrictJsonError("NaN and Infinity are not JSON numbers")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise StrictJsonError("a number is too large (out of the float range)")
    return number
