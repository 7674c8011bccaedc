"""Fine-tune datasets: per-line checks, masking, token counts against the model context."""

import json
from pathlib import Path

import pytest

from jobs.datasets import check_lengths, count_tokens, decode_examples, encode_examples
from jobs.datasets import parse_dataset as parse
from jobs.errors import DatasetError
from jobs.finetune_records import FineTuneCreate
from jobs.pii import PiiMasker
from jobs.prompts import PromptFormat

MASKER = PiiMasker(b"dataset-test-key-0123456789")


def lines(*records: object) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n").encode()


def good(n: int = 10) -> list[dict[str, object]]:
    return [{"prompt": f"question {i}:", "completion": f" answer {i}"} for i in range(n)]


def test_both_formats_are_read_with_their_line_numbers() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "weight": 1},
        ]
    }
    dataset = parse(lines(*good(3), chat), MASKER, min_examples=1, max_examples=100)
    assert [e["line"] for e in dataset.examples] == [1, 2, 3, 4]
    assert dataset.examples[3]["messages"][2] == {
        "role": "assistant",
        "content": "hello",
        "weight": 1,
    }
    assert decode_examples(encode_examples(dataset.examples)) == dataset.examples


def test_every_bad_line_is_named_without_its_content() -> None:
    secret = "alice@example.com"
    data = lines(
        *good(2),
        "",  # line 3: empty
        "{not json " + secret,  # line 4
        [1, 2],  # line 5: not an object
        {"text": secret},  # line 6: neither format
        {"prompt": "p", "completion": ""},  # line 7: empty completion
        {"messages": [{"role": "user", "content": "only a question"}]},  # line 8
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "q", "weight": 1}]},  # line 10
        {"prompt": "p", "completion": "c", "extra": True},  # line 11
        {"prompt": 5, "completion": "c"},  # line 12: strict types
        {"prompt": "p", "completion": "c", secret: 1},  # line 13: a key that is PII
    )
    with pytest.raises(DatasetError) as caught:
        parse(data, MASKER, min_examples=1, max_examples=100)
    numbers = [n for n, _ in caught.value.lines]
    assert numbers == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    message = str(caught.value)
    assert "line 3: empty line" in message
    assert "line 4: not valid JSON" in message
    assert "line 8:" in message and "assistant" in message
    assert "line 11: extra" in message
    assert "line 13: <key>" in message
    assert secret not in message


def test_example_counts_are_bounded() -> None:
    with pytest.raises(DatasetError, match=r"has 3 example.*at least 10"):
        parse(lines(*good(3)), MASKER, min_examples=10, max_examples=100)
    with pytest.raises(DatasetError, match="at most 5"):
        parse(lines(*good(6)), MASKER, min_examples=1, max_examples=5)


def test_not_utf8_is_refused() -> None:
    with pytest.raises(DatasetError, match="not UTF-8"):
        parse(b'{"prompt": "\xff"}\n', MASKER, min_examples=1, max_examples=5)


def test_personal_data_is_masked_and_counted() -> None:
    card = {"prompt": "mail bob@example.com:", "completion": " card 4111 1111 1111 1111"}
    records = [*good(9), card]
    dataset = parse(lines(*records), MASKER, min_examples=1, max_examples=100)
    stored = encode_examples(dataset.examples).decode()
    assert "bob@example.com" not in stored and "4111 1111 1111 1111" not in stored
    assert dataset.entity_counts.get("EMAIL") == 1
    assert sum(dataset.entity_counts.values()) >= 2


@pytest.fixture(scope="module")
def tiny_format(tmp_path_factory: pytest.TempPathFactory) -> PromptFormat:
    from workers.models.tiny import make_tiny_deepseek

    return PromptFormat.read(make_tiny_deepseek(tmp_path_factory.mktemp("m") / "tiny"))


def test_token_counts_match_the_tokenizer(tiny_format: PromptFormat) -> None:
    example = {"line": 1, "prompt": "the queue", "completion": " keeps every job"}
    ids = tiny_format.tokenizer.encode("the queue keeps every job", add_special_tokens=True).ids
    assert count_tokens(example, tiny_format) == len(ids) + 1  # + eos
    chat = {"line": 2, "messages": [{"role": "user", "content": "hi"}]}
    rendered = "<|user|>hi</s>"
    expected = len(tiny_format.tokenizer.encode(rendered, add_special_tokens=False).ids)
    assert count_tokens(chat, tiny_format) == expected


def test_too_long_examples_are_named(tiny_format: PromptFormat) -> None:
    short = {"line": 1, "prompt": "a", "completion": " b"}
    long = {"line": 7, "prompt": "the queue " * 600, "completion": " x"}
    assert check_lengths([short], tiny_format, 512, "training file") > 0
    with pytest.raises(DatasetError, match=r"line 7: \d+ tokens; the limit is 512"):
        check_lengths([short, long], tiny_format, 512, "training file")


def test_openai_hyperparameters_map_onto_seekq() -> None:
    body = FineTuneCreate.model_validate(
        {
            "model": "tiny",
            "training_file": "file-x",
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto"},
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"learning_rate_multiplier": 2.0}},
            },
            "seed": 7,
            "seekq": {"lora_r": 4},
        }
    )
    # method.supervised.hyperparameters wins over the legacy field, as in OpenAI's API
    assert body.hyperparameters_dict() == {"learning_rate": 4e-4, "seed": 7, "lora_r": 4}


def test_unsupported_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="supervised"):
        FineTuneCreate.model_validate(
            {"model": "tiny", "training_file": "file-x", "method": {"type": "dpo"}}
        )


def test_file_paths_are_not_read(tmp_path: Path) -> None:
    """A training_file is an uploaded file's id, never a path on the server."""
    with pytest.raises(ValueError):
        FineTuneCreate.model_validate({"model": "t", "training_file": "x" * 65})


def test_a_template_that_rewrites_earlier_turns_is_refused_per_line(
    tiny_format: PromptFormat,
) -> None:
    """A template that drops past assistant turns' text (as reasoning models' do) cannot
    delimit them: refused before queueing, naming the line; fine without completion_only."""
    from dataclasses import replace

    dropping = replace(
        tiny_format,
        chat_template=(
            "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
            "<|assistant|></s>{% else %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        ),
    )
    chat = {
        "line": 4,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "bye"},
        ],
    }
    assert check_lengths([chat], tiny_format, 512, "training file") > 0
    with pytest.raises(DatasetError, match="line 4: the model's chat template does not render"):
        check_lengths([chat], dropping, 512, "training file")
    assert check_lengths([chat], dropping, 512, "training file", completion_only=False) > 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "p", "prompt": "q", "completion": "c"}', "duplicate key in an object"),
        ('{"prompt": "p", "completion": "c", "weight": Infinity}', "NaN and Infinity"),
        ('{"prompt": "p\\u0000", "completion": "c"}', "a string holds a NUL character"),
    ],
)
def test_example_lines_json_reads_two_ways_are_refused(line: str, reason: str) -> None:
    with pytest.raises(DatasetError) as caught:
        parse(lines(*good(3), line), MASKER, min_examples=1, max_examples=100)
    assert caught.value.lines == [(4, caught.value.lines[0][1])]
    assert caught.value.lines[0][1].startswith(f"not valid JSON: {reason}")
