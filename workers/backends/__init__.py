"""Model backends: narrow protocols, implementations registered by dotted path.

Implementations are imported lazily by name, so importing this package never loads torch.
"""

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jobs.errors import ConfigError


@dataclass(frozen=True)
class Embeddings:
    vectors: "np.ndarray[Any, np.dtype[np.float32]]"  # (inputs, dimensions), input order
    token_counts: list[int]


class Embedder(Protocol):
    """Turns texts into vectors. `should_stop` is polled between batches."""

    dimensions: int

    def embed(
        self, texts: Sequence[str], normalize: bool, should_stop: Callable[[], bool]
    ) -> Embeddings: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EmbedderOptions:
    """How a worker loads an embedding model, whatever the backend."""

    device: str = "cpu"  # "cpu", or "cuda" in a worker pinned to one GPU
    batch_tokens: int = 8192  # padded tokens in one forward pass
    max_batch: int = 128  # texts in one forward pass
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto: float32 on the CPU, float16 on a GPU
    # Pad each batch to a multiple of this (8 feeds fp16 Tensor Cores); None: to the
    # longest text only. On the CPU padding only costs.
    pad_to_multiple_of: int | None = None
    attn_implementation: str | None = None  # None: transformers' choice (sdpa where it can)
    compile: bool = False  # torch.compile the HF model
    # Exported ONNX graphs and TensorRT engines (built once, reused by every worker).
    cache_dir: Path | None = None
    threads: int | None = None  # intra-op threads of an ONNX Runtime session


class EmbedderLoader(Protocol):
    def __call__(self, path: Path, options: EmbedderOptions) -> Embedder: ...


# "auto" is resolved by the worker (workers.backends.choice) before a loader is looked up.
EMBEDDERS: dict[str, str] = {
    "hf": "workers.backends.hf:load_hf_embedder",
    "onnx": "workers.backends.onnx:load_onnx_embedder",
    "onnx-int8": "workers.backends.onnx:load_onnx_int8_embedder",
    "tensorrt": "workers.backends.tensorrt:load_tensorrt_embedder",
}


def embedder_loader(backend: str) -> EmbedderLoader:
    """The loader registered for `backend`, imported on first use."""
    target = EMBEDDERS.get(backend)
    if target is None:
        known = ", ".join(sorted(EMBEDDERS))
        raise ConfigError(f"unknown embedding backend '{backend}'; known: {known}")
    module_name, _, attr = target.partition(":")
    loader: EmbedderLoader = getattr(importlib.import_module(module_name), attr)
    return loader
