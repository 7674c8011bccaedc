"""`seekq models make-tiny`: a real DeepSeek-V3 MoE through the from_pretrained path."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.models.tiny import make_tiny_deepseek


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_deepseek(tmp_path_factory.mktemp("models") / "tiny-deepseek")


def test_written_as_safetensors_with_tokenizer_and_chat_template(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]


def test_loads_as_native_deepseek_v3_moe_and_generates(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, trust_remote_code=False)
    config = model.config
    assert type(model).__name__ == "DeepseekV3ForCausalLM"
    assert (config.n_routed_experts, config.num_experts_per_tok, config.n_shared_experts) == (
        8,
        2,
        1,
    )
    assert tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 6


def test_same_seed_same_weights(tmp_path: Path) -> None:
    first = AutoModelForCausalLM.from_pretrained(make_tiny_deepseek(tmp_path / "a", seed=3))
    second = AutoModelForCausalLM.from_pretrained(make_tiny_deepseek(tmp_path / "b", seed=3))
    for (name, left), (_, right) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(left, right), name
