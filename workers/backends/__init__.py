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


class EmbedderLoader(Protocol):
    def __call__(
        self,
        path: Path,
        *,
        device: str,
        batch_tokens: int,
        max_batch: int,
        trust_remote_code: bool,
    ) -> Embedder: ...


EMBEDDERS: dict[str, str] = {
    "hf": "workers.backends.hf:load_hf_embedder",
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
