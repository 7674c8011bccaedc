"""Fine-tune datasets: JSON lines in OpenAI's two formats, checked line by line, masked,
and stored masked; the token check against the base model's context before queueing.

    {"prompt": "...", "completion": "..."}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1}]}

Every problem names its line and field, never the line's content (it may hold personal
data). The stored form keeps each example's line number so later checks can name it.
"""

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs import strict_json
from jobs.errors import DatasetError, SpecError
from jobs.finetune_specs import ChatLine, PromptCompletionLine
from jobs.pii import PiiMasker
from jobs.prompts import PromptFormat
from jobs.specs import describe_validation_error

MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """Validated, masked examples (JSON dicts with their `line`) and entity counts."""

    examples: list[dict[str, Any]]
    entity_counts: dict[str, int]


def parse_dataset(
    data: bytes, masker: PiiMasker, *, min_examples: int, max_examples: int
) -> Dataset:
    """Every line checked (all problems reported, not just the first), then masked."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"training file is not UTF-8 text (byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    problems: list[tuple[int, str]] = []
    examples: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        example = _check_line(line.removesuffix("\r"), number, problems)
        if example is not None:
            examples.append(example)
    if problems:
        raise DatasetError(f"training file has {len(problems)} invalid line(s)", problems)
    _check_count(len(examples), min_examples, max_examples)
    counts: Counter[str] = Counter()
    masked = [_masked(example, masker, counts) for example in examples]
    return Dataset(masked, dict(counts))


def _check_line(line: str, number: int, problems: list[tuple[int, str]]) -> dict[str, Any] | None:
    if not line.strip():
        problems.append((number, "empty line (remove it)"))
        return None
    if len(line.encode()) > MAX_LINE_BYTES:
        problems.append((number, f"longer than {MAX_LINE_BYTES} bytes"))
        return None
    try:  # strict: no duplicate keys, NaN, NUL, lone surrogates or deep nesting
        raw = strict_json.loads(line)
    except json.JSONDecodeError as exc:  # the decoder's fixed words, never the line
        problems.append((number, f"not valid JSON: {exc.msg}"))
        return None
    except (ValueError, RecursionError):
        problems.append((number, "not valid JSON"))
        return None
    if not isinstance(raw, dict):
        problems.append((number, "not a JSON object"))
        return None
    shape = _shape(raw)
    if shape is None:
        problems.append((number, 'expected {"prompt", "completion"} or {"messages": [...]}'))
        return None
    try:
        parsed = shape.model_validate(raw)
    except ValidationError as exc:
        problems.append((number, describe_validation_error(exc)))
        return None
    return {"line": number, **parsed.model_dump(mode="json", exclude_none=True)}


def _shape(raw: dict[str, Any]) -> type[PromptCompletionLine] | type[ChatLine] | None:
    if "messages" in raw:
        return ChatLine
    if "prompt" in raw or "completion" in raw:
        return PromptCompletionLine
    return None


def _check_count(count: int, min_examples: int, max_examples: int) -> None:
    if count < min_examples:
        raise DatasetError(
            f"training file has {count} example(s); at least {min_examples} are needed"
        )
    if count > max_examples:
        raise DatasetError(f"training file has {count} examples; at most {max_examples}")


def _masked(example: dict[str, Any], masker: PiiMasker, counts: Counter[str]) -> dict[str, Any]:
    def mask(text: str) -> str:
        result = masker.mask(text)
        counts.update(result.counts)
        return result.text

    if "messages" in example:
        messages = [{**m, "content": mask(m["content"])} for m in example["messages"]]
        return {**example, "messages": messages}
    return {**example, "prompt": mask(example["prompt"]), "completion": mask(example["completion"])}


def count_tokens(example: dict[str, Any], fmt: PromptFormat) -> int:
    """Tokens of the example as training sees it: prompt + completion + eos, or the whole
    conversation through the chat template."""
    if "messages" in example:
        messages = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
        rendered = fmt.render_messages(messages, add_generation_prompt=False)
        return len(fmt.tokenizer.encode(rendered, add_special_tokens=False).ids)
    text = example["prompt"] + example["completion"]
    return len(fmt.tokenizer.encode(text, add_special_tokens=True).ids) + 1


def check_turns(example: dict[str, Any], fmt: PromptFormat) -> None:
    """Completion-only training finds each trained assistant turn as the text between the
    conversation rendered up to it (with the generation prompt) and rendered through it;
    a template that rewrites earlier turns (dropping past reasoning, say) breaks that, and
    training would refuse the example. Refused here instead, before anything is queued."""
    turns = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
    whole = fmt.render_messages(turns, add_generation_prompt=False)
    for i, message in enumerate(example["messages"]):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = fmt.render_messages(turns[:i], add_generation_prompt=True)
        through = fmt.render_messages(turns[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and whole.startswith(through)):
            raise SpecError(
                f"the model's chat template does not render assistant turn {i} after the "
                "turns before it, so its tokens cannot be located (send prompt/completion "
                "examples, or set completion_only false)"
            )


def check_lengths(
    examples: list[dict[str, Any]],
    fmt: PromptFormat,
    limit: int,
    what: str,
    *,
    completion_only: bool = True,
) -> int:
    """The examples' total tokens; raises DatasetError naming every example over `limit`,
    and every chat example whose trained turns the template cannot delimit."""
    if any("messages" in e for e in examples) and fmt.chat_template is None:
        raise DatasetError(f"{what}: chat examples need a model with a chat template")
    total = 0
    too_long: list[tuple[int, str]] = []  # (line, problem): too long, or not renderable
    for example in examples:
        try:
            tokens = count_tokens(example, fmt)
            if completion_only and "messages" in example:
                check_turns(example, fmt)
        except SpecError as exc:  # the chat template refused or garbles this conversation
            too_long.append((example["line"], str(exc)))
            continue
        total += tokens
        if tokens > limit:
            too_long.append((example["line"], f"{tokens} tokens; the limit is {limit}"))
    if too_long:
        raise DatasetError(f"{what} has {len(too_long)} example(s) that cannot be used", too_long)
    return total


def encode_examples(examples: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(e, ensure_ascii=False) for e in examples).encode()


def decode_examples(data: bytes) -> list[dict[str, Any]]:
    # "\n" only: splitlines() would also cut at U+2028 and friends, which
    # ensure_ascii=False writes raw inside a record.
    return [json.loads(line) for line in data.decode().split("\n") if line]
