"""Batch input files: OpenAI's batch JSON lines, checked line by line, masked, and stored
masked.

    {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Every problem names its line and field, never the line's content (it may hold personal
data). Only the envelope is checked here; each body is validated when its line runs, where
a bad body fails that line alone. User text in the body is masked before anything stores
it; custom_ids are echoed back unmasked in the output, so they must hold no personal data.
"""

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs import strict_json
from jobs.datasets import MAX_LINE_BYTES
from jobs.errors import DatasetError
from jobs.pii import PiiMasker

BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 64
_KEYS = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True)
class BatchInput:
    """Checked, masked requests and the entity counts their masking found."""

    lines: list[dict[str, Any]]  # {"line", "custom_id", "url", "body"}, the body masked
    entity_counts: dict[str, int]
    url: str  # the one url every line uses


def parse_batch_file(data: bytes, masker: PiiMasker, *, max_lines: int) -> BatchInput:
    """Every line checked (all problems reported, not just the first), then masked."""
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline
    if len(raw_lines) > max_lines:
        raise DatasetError(f"batch input file has {len(raw_lines)} lines; at most {max_lines}")
    problems: list[tuple[int, str]] = []
    requests: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        request = _check_line(raw.removesuffix(b"\r"), number, masker, first_seen, problems)
        if request is not None:
            requests.append(request)
    url = requests[0]["url"] if requests else ""
    problems.extend(
        (r["line"], f"url differs from the batch's url {url} (one endpoint per batch)")
        for r in requests
        if r["url"] != url
    )
    if problems:
        problems.sort()
        raise DatasetError(f"batch input file has {len(problems)} invalid line(s)", problems)
    if not requests:
        raise DatasetError("batch input file has no requests")
    counts: Counter[str] = Counter()
    masked = [{**r, "body": _masked_body(r["body"], masker, counts)} for r in requests]
    return BatchInput(masked, dict(counts), url)


def _check_line(
    raw: bytes,
    number: int,
    masker: PiiMasker,
    first_seen: dict[str, int],
    problems: list[tuple[int, str]],
) -> dict[str, Any] | None:
    """The request of a good line; a bad line's problems (joined, one entry) otherwise."""
    found = _json_object(raw)
    if isinstance(found, str):
        problems.append((number, found))
        return None
    line_problems = _field_problems(found, number, masker, first_seen)
    if line_problems:
        problems.append((number, "; ".join(line_problems)))
        return None
    return {
        "line": number,
        "custom_id": found["custom_id"],
        "url": found["url"],
        "body": found["body"],
    }


def _field_problems(
    request: dict[str, Any], number: int, masker: PiiMasker, first_seen: dict[str, int]
) -> list[str]:
    found = [
        _custom_id_problem(request, number, masker, first_seen),
        None if set(request) <= _KEYS else "unknown key(s): only custom_id, method, url, body",
        None if request.get("method") == "POST" else 'method must be "POST"',
        None if request.get("url") in BATCH_URLS else f"url must be one of {', '.join(BATCH_URLS)}",
        None if "body" in request else "body is missing",
    ]
    if "body" in request and not isinstance(request["body"], dict):
        found.append("body must be a JSON object")
    return [p for p in found if p is not None]


def _json_object(raw: bytes) -> dict[str, Any] | str:
    """The line's JSON object, or why it is not one."""
    if len(raw) > MAX_LINE_BYTES:
        return f"longer than {MAX_LINE_BYTES} bytes"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if not line.strip():
        return "empty line (remove it)"
    try:  # strict: no duplicate keys, NaN, NUL, lone surrogates or deep nesting
        parsed = strict_json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg}"  # the decoder's fixed words, never the line
    except (ValueError, RecursionError):
        return "not valid JSON"
    if not isinstance(parsed, dict):
        return "not a JSON object"
    return parsed


def _custom_id_problem(
    request: dict[str, Any], number: int, masker: PiiMasker, first_seen: dict[str, int]
) -> str | None:
    if "custom_id" not in request:
        return "custom_id is missing"
    custom_id = request["custom_id"]
    if not isinstance(custom_id, str):
        return "custom_id must be a string"
    if not custom_id:
        return "custom_id must not be empty"
    if len(custom_id) > MAX_CUSTOM_ID:
        return f"custom_id is longer than {MAX_CUSTOM_ID} characters"
    if masker.mask(custom_id).counts:
        return "custom_id must not hold personal data"
    first = first_seen.setdefault(custom_id, number)
    if first != number:
        return f"duplicate custom_id (first on line {first})"
    return None


def _masked_body(body: dict[str, Any], masker: PiiMasker, counts: Counter[str]) -> dict[str, Any]:
    """User text masked; `user` (OpenAI's end-user id, which may name a person) dropped;
    every other field, and any shape the per-line validation will refuse, left as is."""

    def mask(text: str) -> str:
        result = masker.mask(text)
        counts.update(result.counts)
        return result.text

    masked = {k: v for k, v in body.items() if k != "user"}
    for field in ("prompt", "input"):
        if field in masked:
            masked[field] = _mask_texts(masked[field], mask)
    if isinstance(masked.get("messages"), list):
        masked["messages"] = [_masked_message(m, mask) for m in masked["messages"]]
    return masked


def _mask_texts(value: Any, mask: Callable[[str], str]) -> Any:
    """A string, or the strings of a list, masked (token-id lists are left alone)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [mask(v) if isinstance(v, str) else v for v in value]
    return value


def _masked_message(message: Any, mask: Callable[[str], str]) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": mask(content)}
    if isinstance(content, list):
        parts = [
            {**p, "text": mask(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


def encode_batch_lines(lines: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode()


def decode_batch_lines(data: bytes) -> list[dict[str, Any]]:
    # Not splitlines(): it also splits at U+2028 and the like, which ensure_ascii=False keeps.
    return [json.loads(line) for line in data.decode().split("\n") if line]
