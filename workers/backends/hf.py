"""Hugging Face transformers embedding backend: mean pooling, length-sorted token batches.

Equivalent to sentence-transformers' Transformer + mean Pooling + Normalize pipeline, but
batched by a token budget rather than a fixed count: texts are sorted longest first (as
sentence-transformers does) so that each padded batch wastes little compute.

On a GPU the model runs in float16 by default (`dtype` of the model's registry entry),
batches are padded to a multiple of 8 for the Tensor Cores, attention is transformers'
choice (SDPA where the architecture has it) unless `attn_implementation` names one
(e.g. "flash_attention_2"), and `compile` wraps the model in `torch.compile`.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from jobs.errors import ConfigError, JobCancelledError
from workers.backends import EmbedderOptions, Embeddings

DEFAULT_MAX_SEQ_LENGTH = 512
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TokenBatched(ABC):
    """Tokenise, sort longest first, run batches of at most `batch_tokens` padded tokens
    and `max_batch` texts through `_forward`; the vectors in input order. Shared by the
    HF and ONNX Runtime backends, which differ only in `_forward`."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    batch_tokens: int
    max_batch: int
    dimensions: int

    def embed(
        self, texts: Sequence[str], normalize: bool, should_stop: Callable[[], bool]
    ) -> Embeddings:
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        counts = [len(row) for row in ids]
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for batch in token_batches(counts, self.batch_tokens, self.max_batch):
            if should_stop():
                raise JobCancelledError("stopped between batches")
            vectors[batch] = self._forward([ids[i] for i in batch], normalize)
        return Embeddings(vectors=vectors, token_counts=counts)

    @abstractmethod
    def _forward(self, ids: list[list[int]], normalize: bool) -> "np.ndarray[Any, Any]":
        """One padded batch of token ids -> its pooled vectors (float32)."""


class HFEmbedder(TokenBatched):
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
        batch_tokens: int,
        max_batch: int,
        pad_to_multiple_of: int | None = None,
        forward: Callable[..., Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.pad_to_multiple_of = pad_to_multiple_of
        self.forward = model if forward is None else forward  # torch.compile wraps it
        self.dimensions = int(model.config.hidden_size)

    @torch.inference_mode()
    def _forward(self, ids: list[list[int]], normalize: bool) -> "np.ndarray[Any, Any]":
        encoded = self.tokenizer.pad(
            {"input_ids": ids}, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        inputs = {k: v.to(self.model.device) for k, v in encoded.items()}
        hidden = self.forward(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        result: np.ndarray[Any, Any] = pooled.float().cpu().numpy()
        return result

    def close(self) -> None:
        del self.model


def token_batches(lengths: Sequence[int], budget: int, max_batch: int) -> Iterator[list[int]]:
    """Indices grouped longest first so that each padded batch holds <= `budget` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        # Sorted descending: the batch's first entry is its padded length.
        padded = lengths[batch[0]] if batch else lengths[index]
        if batch and ((len(batch) + 1) * padded > budget or len(batch) >= max_batch):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def load_hf_embedder(path: Path, options: EmbedderOptions) -> HFEmbedder:
    require_safetensors(path)
    trust = options.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    extra = {"attn_implementation": options.attn_implementation}
    model = AutoModel.from_pretrained(
        path,
        use_safetensors=True,
        trust_remote_code=trust,
        dtype=embedding_dtype(options.dtype, options.device),
        **{k: v for k, v in extra.items() if v is not None},
    )
    model.to(options.device).eval()
    return HFEmbedder(
        model,
        tokenizer,
        max_length=max_seq_length(path, tokenizer),
        batch_tokens=options.batch_tokens,
        max_batch=options.max_batch,
        pad_to_multiple_of=options.pad_to_multiple_of,
        # dynamic: batch and sequence lengths vary from call to call.
        forward=torch.compile(model, dynamic=True) if options.compile else None,
    )


def embedding_dtype(dtype: str, device: str) -> torch.dtype:
    """float32 on the CPU; float16 on a GPU (an embedding's few layers keep fp16's extra
    mantissa bits over bf16); or what the registry entry names."""
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def require_safetensors(path: Path) -> None:
    """Refuse pickle-format weights: loading a .bin/.pt runs arbitrary code."""
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
        found = f" (found {', '.join(pickled[:3])})" if pickled else ""
        raise ConfigError(
            f"model directory {path.name!r} has no .safetensors weights{found}; "
            "seekq loads safetensors only"
        )


def max_seq_length(path: Path, tokenizer: PreTrainedTokenizerBase) -> int:
    """sentence-transformers' max_seq_length when the folder has one, else the tokenizer's."""
    config = path / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text())["max_seq_length"])
    limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_SEQ_LENGTH)
    return min(int(limit), DEFAULT_MAX_SEQ_LENGTH)
