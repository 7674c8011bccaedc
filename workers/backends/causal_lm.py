"""Hugging Face transformers causal-LM backend: load a model directory, turn specs into
prompt tokens, and serve it through a continuous-batching GenerationEngine.

Loading follows the usual conventions: safetensors only, `trust_remote_code` only when the
registry allows it, `dtype` fp32 on the CPU and bf16 (fp16 where bf16 is unsupported) on a
GPU, and `device_map="auto"` when an entry asks for a model to span several GPUs.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from jobs.errors import ConfigError
from jobs.prompts import CONTEXT_KEYS
from jobs.specs import GenerateSpec
from workers.backends.hf import require_safetensors
from workers.backends.sliding import apply_sliding_window
from workers.engine import GenerationEngine

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CausalLM:
    name: str
    engine: GenerationEngine
    context_length: int

    def encode(self, spec: GenerateSpec) -> list[int]:
        """Prompt token ids: the prompt as is, or the messages through the chat template."""
        tokenizer = self.engine.tokenizer
        if spec.prompt is not None:
            return list(tokenizer(spec.prompt)["input_ids"])
        messages = [{"role": m.role, "content": m.content} for m in spec.messages or []]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        self.engine.close()


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_causal_lm(
    path: Path,
    *,
    device: str,
    dtype: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    sliding_window: int | None = None,
) -> tuple[PreTrainedModel, object]:
    """The model (eval mode, on `device` or spread by `device_map`) and its tokenizer."""
    require_safetensors(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        config=apply_sliding_window(config, sliding_window),
        dtype=resolve_dtype(dtype, device),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
    )
    if device_map is None:
        model.to(device)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer


def context_length(model: PreTrainedModel) -> int:
    for key in CONTEXT_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(f"{model.config.model_type}: the config gives no context length")
