"""LoRA fine-tuning on the real tiny DeepSeek-V3 MoE (CPU, Trainer, peft): labels, a taught
pattern, cancel + resume, the refused targets and the adapter directory."""

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.lora_data import encode_examples
from workers.models.tiny import CORPUS, make_tiny_deepseek
from workers.training import (
    LoraHyperparameters,
    TrainingEvent,
    default_target_modules,
    encode_example,
    train_lora,
)

IGNORE = -100
PATTERN = " refunds are prorated"
# Seen in training / held out: the adapter must answer prompts it never saw. (Not
# "refunds": a prompt that holds the pattern's first word makes the model skip it.)
TRAIN_PROMPTS = [f"question {word}:" for line in CORPUS[:2] for word in line.split()]
HELD_OUT_PROMPTS = [
    f"question {word}:" for word in ("hello", "thanks", "please", "help", "plan", "router", "42")
]


@dataclass
class RecordingHooks:
    """Records events and checkpoints; asks to stop at the end of step `stop_at_step`."""

    stop_at_step: int | None = None
    events: list[TrainingEvent] = field(default_factory=list)
    checkpoints: list[tuple[Path, int, list[str]]] = field(default_factory=list)
    asked: int = 0  # should_stop calls: one per optimizer step

    def should_stop(self) -> bool:
        self.asked += 1
        return self.asked == self.stop_at_step

    def on_log(self, event: TrainingEvent) -> None:
        self.events.append(event)

    def on_checkpoint(self, directory: Path, step: int) -> None:
        self.checkpoints.append((directory, step, sorted(p.name for p in directory.iterdir())))

    def losses(self) -> dict[int, float]:
        return {e.step: e.loss for e in self.events if e.loss is not None}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """train_lora leaves threads to its caller, as a worker sets them. One thread: on 2
    cores with anything else running, 2 threads took 100 steps 26-38 s, one 2 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_deepseek(tmp_path_factory.mktemp("models") / "tiny-deepseek")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_dir)


def _pattern_examples() -> list[dict[str, Any]]:
    return [{"prompt": prompt, "completion": PATTERN} for prompt in TRAIN_PROMPTS]


def _labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE])


def test_prompt_completion_loss_on_completion_and_eos_only(tokenizer: Any) -> None:
    example = {"prompt": "question plan:", "completion": PATTERN}
    ids, labels = encode_example(tokenizer, example, completion_only=True, max_length=512)
    assert tokenizer.decode(ids) == "question plan:" + PATTERN + "</s>"
    assert _labelled_text(tokenizer, ids, labels) == PATTERN + "</s>"
    assert labels[-1] == ids[-1] == tokenizer.eos_token_id
    everything = encode_example(tokenizer, example, completion_only=False, max_length=512)
    assert everything == (ids, ids)


def test_messages_loss_on_weighted_assistant_turns_only(tokenizer: Any) -> None:
    example = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "refunds are prorated", "weight": 1},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": "please wait", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "ten working days"},
        ]
    }
    ids, labels = encode_example(tokenizer, example, completion_only=True, max_length=512)
    rendered = tokenizer.apply_chat_template(example["messages"], tokenize=False)
    assert tokenizer.decode(ids) == rendered
    # The template's assistant turn is "<|assistant|>{content}</s>": content + end marker.
    assert _labelled_text(tokenizer, ids, labels) == (
        "refunds are prorated</s>ten working days</s>"
    )
    assert encode_example(tokenizer, example, completion_only=False, max_length=512) == (ids, ids)


def test_truncated_to_max_length(tokenizer: Any) -> None:
    example = {"prompt": "question plan:", "completion": PATTERN}
    full_ids, full_labels = encode_example(tokenizer, example, True, max_length=512)
    ids, labels = encode_example(tokenizer, example, True, max_length=6)
    assert (ids, labels) == (full_ids[:6], full_labels[:6])


def test_examples_cut_before_their_completion_are_dropped(tokenizer: Any) -> None:
    short = {"prompt": "q:", "completion": PATTERN}
    long = {"prompt": "question " * 20, "completion": PATTERN}
    features = encode_examples(tokenizer, [short, long], completion_only=True, max_length=8)
    assert [f["input_ids"] for f in features] == [encode_example(tokenizer, short, True, 8)[0]]
    with pytest.raises(ValueError, match="no example has a token to train on"):
        encode_examples(tokenizer, [long], completion_only=True, max_length=8)


def _greedy(model: Any, tokenizer: Any, prompt: str) -> str:
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=8, do_sample=False)
    text: str = tokenizer.decode(out[0, encoded.input_ids.shape[1] :])
    return text


def test_adapter_teaches_a_pattern_the_base_lacks(
    tiny_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    # Measured (batch 8, lr 3e-3, one thread): 40, 60 and 100 steps all answer the 7
    # held-out prompts exactly for seeds 0-4 (100 steps: ~2 s); the base answers none.
    # The loss stays near 3.7: the frozen random lm_head (std 0.02) caps how peaked a
    # distribution the adapter can reach, but the pattern's tokens become the argmax.
    params = LoraHyperparameters(max_steps=100, batch_size=8, learning_rate=3e-3)
    hooks = RecordingHooks()
    outcome = train_lora(tiny_dir, _pattern_examples(), params, tmp_path / "work", hooks)

    assert outcome.adapter_dir == tmp_path / "work" / "adapter"
    assert (outcome.steps, outcome.total_steps, outcome.stopped) == (100, 100, False)
    assert [e.step for e in hooks.events if e.loss is not None] == list(range(1, 101))
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert not any(_greedy(base, tokenizer, p).startswith(PATTERN) for p in HELD_OUT_PROMPTS)
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir), outcome.adapter_dir
    )
    answers = [_greedy(tuned, tokenizer, p) for p in HELD_OUT_PROMPTS]
    assert answers == [PATTERN + "</s>"] * len(HELD_OUT_PROMPTS)


def test_adapter_dir_is_safetensors_and_config_only(tiny_dir: Path, tmp_path: Path) -> None:
    params = LoraHyperparameters(max_steps=2, batch_size=8, r=4)
    outcome = train_lora(tiny_dir, _pattern_examples(), params, tmp_path, RecordingHooks())

    assert outcome.adapter_dir is not None
    files = sorted(p.name for p in outcome.adapter_dir.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert outcome.adapter_size_bytes == sum(
        p.stat().st_size for p in outcome.adapter_dir.iterdir()
    )
    # Attention-only r=4 on 4 layers: 16,640 fp32 parameters, ~66 KB plus the header.
    assert outcome.trainable_params == 16_640
    assert 66_000 < outcome.adapter_size_bytes < 80_000
    assert outcome.trained_tokens > 2 * 8 * 5  # two batches of 8, five or more tokens each


def test_cancel_keeps_a_checkpoint_and_resume_continues_the_same_run(
    tiny_dir: Path, tmp_path: Path
) -> None:
    # 20 examples, 4 held out: 16 train, 2 steps an epoch; step 7 stops mid-epoch.
    examples = [{"prompt": p, "completion": PATTERN} for p in TRAIN_PROMPTS[:20]]
    params = LoraHyperparameters(
        max_steps=16,
        batch_size=8,
        learning_rate=3e-3,
        checkpoint_every=5,
        validation_split=0.2,
        warmup_ratio=0.1,
    )
    whole = RecordingHooks()
    uninterrupted = train_lora(tiny_dir, examples, params, tmp_path / "whole", whole)

    cancelled = RecordingHooks(stop_at_step=7)
    stopped = train_lora(tiny_dir, examples, params, tmp_path / "first", cancelled)
    assert (stopped.stopped, stopped.steps, stopped.adapter_dir) == (True, 7, None)
    assert [step for _, step, _ in cancelled.checkpoints] == [5, 7]
    last_dir, _, last_files = cancelled.checkpoints[-1]
    # The .pt/.pth files are torch pickles, which resume loads with weights_only=True.
    assert last_files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
    ]
    copied = shutil.copytree(last_dir, tmp_path / "downloaded")  # as from an artifact store

    resumed_hooks = RecordingHooks()
    resumed = train_lora(
        tiny_dir, examples, params, tmp_path / "second", resumed_hooks, resume_from=copied
    )
    assert (resumed.resumed_from_step, resumed.steps, resumed.stopped) == (7, 16, False)
    assert sorted(resumed_hooks.losses()) == list(range(8, 17))
    expected = whole.losses()
    for step, loss in resumed_hooks.losses().items():
        assert loss == pytest.approx(expected[step], abs=1e-5), step
    assert resumed.train_loss == pytest.approx(uninterrupted.train_loss, abs=1e-5)
    assert resumed.eval_loss == pytest.approx(uninterrupted.eval_loss, abs=1e-5)
    assert resumed.trained_tokens == uninterrupted.trained_tokens
    evals = [e.step for e in whole.events if e.eval_loss is not None]
    assert evals == [5, 10, 15, 16]  # at checkpoint cadence and at the end


def test_routed_expert_targets_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    for targets in (("gate_proj", "up_proj", "down_proj"), ("down_proj",), ("o_proj", "up_proj")):
        params = LoraHyperparameters(max_steps=1, target_modules=targets)
        with pytest.raises(ValueError, match="mixed-adapter batches"):
            train_lora(tiny_dir, _pattern_examples(), params, tmp_path, RecordingHooks())


def test_targets_matching_nothing_are_refused_with_candidates(
    tiny_dir: Path, tmp_path: Path
) -> None:
    params = LoraHyperparameters(max_steps=1, target_modules=("o_proj", "query_key_value"))
    with pytest.raises(ValueError, match="query_key_value") as refused:
        train_lora(tiny_dir, _pattern_examples(), params, tmp_path, RecordingHooks())
    assert "kv_a_proj_with_mqa" in str(refused.value)


def test_default_targets() -> None:
    mla = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    assert default_target_modules("deepseek_v3", SimpleNamespace(q_lora_rank=64)) == mla
    no_q_lora = default_target_modules("deepseek_v3", SimpleNamespace(q_lora_rank=None))
    assert no_q_lora == ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    assert default_target_modules("llama") == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert default_target_modules("phi3") == ("qkv_proj", "o_proj")
    with pytest.raises(ValueError, match="pass target_modules"):
        default_target_modules("falcon_mamba")
