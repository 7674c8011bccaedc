"""Fine-tuning examples as token ids and labels: which tokens the loss is taken on.

Two example shapes (the OpenAI fine-tuning formats), validated upstream:

- `{"prompt": str, "completion": str}`: the text is prompt + completion, with the
  tokenizer's bos in front if it adds one and its eos after the completion; the loss is
  on the completion and the eos.
- `{"messages": [{"role", "content", optional "weight": 0 | 1}, ...]}`: rendered with the
  tokenizer's chat template; the loss is on what the template emits for each assistant
  turn whose weight is not 0 (its content and end marker).

Spans are found in characters, then mapped onto tokens through the fast tokenizer's offsets,
so no template or tokenizer needs special-casing. Labels are -100 where a token carries no
loss (the value PyTorch's cross-entropy and transformers' collators ignore).
"""

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

IGNORE_INDEX = -100

Span = tuple[int, int]  # [start, end) in characters of the rendered text


def encode_example(
    tokenizer: Any, example: dict[str, Any], completion_only: bool, max_length: int
) -> tuple[list[int], list[int]]:
    """Input ids and labels for one example, cut to `max_length` tokens (the end is cut:
    a prompt longer than the limit leaves no loss, and `encode_examples` drops it)."""
    if "messages" in example:
        text, spans = _chat_text(tokenizer, example["messages"])
        ids, labels = _labelled_tokens(tokenizer, text, spans, completion_only)
    else:
        prompt, completion = example["prompt"], example["completion"]
        text = prompt + completion
        ids, labels = _labelled_tokens(tokenizer, text, [(len(prompt), len(text))], completion_only)
        ids, labels = _with_bos(tokenizer, ids, labels)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
    return ids[:max_length], labels[:max_length]


def _chat_text(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> tuple[str, list[Span]]:
    """The rendered conversation and its trained assistant spans.

    Each span is the difference between the conversation rendered up to that assistant turn
    with the generation prompt, and rendered through it: exactly what the model must emit
    for that turn. That only holds if rendering a prefix gives a prefix of the whole, which
    templates that rewrite earlier turns (e.g. dropping past reasoning) break: refused."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = _render(tokenizer, turns, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, turns[:i], add_generation_prompt=True)
        through = _render(tokenizer, turns[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                "the chat template does not render a conversation's prefix as a prefix of the "
                f"whole (assistant turn {i}), so its assistant tokens cannot be located; "
                "use prompt/completion examples or completion_only=False"
            )
        spans.append((len(before), len(through)))
    return text, spans


def _render(tokenizer: Any, turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
    text: str = tokenizer.apply_chat_template(
        turns, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return text


def _labelled_tokens(
    tokenizer: Any, text: str, spans: Sequence[Span], completion_only: bool
) -> tuple[list[int], list[int]]:
    """Tokens of `text`; a token that overlaps a span keeps its id as label."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    if not completion_only:
        return ids, list(ids)
    labels = [
        token if any(end > lo and start < hi for lo, hi in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def _with_bos(tokenizer: Any, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """Prepend bos when the tokenizer adds one to plain text, as the model saw in training."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("a").input_ids[:1] != [bos]:
        return ids, labels
    return [bos, *ids], [IGNORE_INDEX, *labels]


def encode_examples(
    tokenizer: Any, examples: Sequence[dict[str, Any]], completion_only: bool, max_length: int
) -> list[dict[str, list[int]]]:
    """Encoded features, less examples left with no loss-bearing token: they teach nothing,
    and a batch made only of them logs a NaN loss (a mean over zero tokens)."""
    features = []
    for example in examples:
        ids, labels = encode_example(tokenizer, example, completion_only, max_length)
        if any(label != IGNORE_INDEX for label in labels):
            features.append({"input_ids": ids, "labels": labels})
    if not features:
        raise ValueError(f"no example has a token to train on within {max_length} tokens")
    return features


def training_tokenizer(base_dir: Path) -> Any:
    """The model's tokenizer, right-padded: a left-padded batch (the generation setting)
    would shift positions. A missing pad becomes eos: padded labels are -100, so the real
    eos still trains."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def feature_datasets(
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    validation_split: float,
    seed: int,
    completion_only: bool,
    max_length: int,
    eval_examples: Sequence[dict[str, Any]] | None = None,
) -> tuple["FeatureDataset", "FeatureDataset | None"]:
    """The training set and the held-out one: `eval_examples` when given, else a split of
    `examples` (None without a validation split)."""
    if eval_examples:
        train, held_out = list(examples), list(eval_examples)
    else:
        train, held_out = split_examples(examples, validation_split, seed)
    train_set = FeatureDataset(encode_examples(tokenizer, train, completion_only, max_length))
    if not held_out:
        return train_set, None
    return train_set, FeatureDataset(
        encode_examples(tokenizer, held_out, completion_only, max_length)
    )


def split_examples(
    examples: Sequence[dict[str, Any]], validation_split: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and held-out examples: a seeded shuffle, so a resumed run holds out the same
    ones. Any split above 0 holds out at least one example and keeps at least one."""
    if validation_split <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # noqa: S311 (a data split, not a secret)
    held = min(max(1, round(len(examples) * validation_split)), len(examples) - 1)
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


class FeatureDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Encoded features in memory, for Trainer's sampler and collator."""

    def __init__(self, features: list[dict[str, list[int]]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.features[index]
