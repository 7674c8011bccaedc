"""ONNX Runtime embedding backend (CPU here; the CUDA execution provider on a GPU).

The graph is the cached export of `workers.backends.onnx_export` (model + mean pooling);
texts are tokenised, sorted longest first and batched by a token budget exactly as the
HF backend does, so both backends give the same vectors (cosine >= 0.9999, measured) and
differ only in speed.

`onnx-int8` is the same graph with dynamically quantised int8 weights
(`workers.backends.onnx_quant`). It is offered only when it clears the quality bar of
`workers.backends.embed_quality` for this model; otherwise loading it fails with the
measured numbers, and the operator keeps `onnx` (float32).
"""

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from jobs.errors import ConfigError
from storage.settings import get_storage_settings
from workers.backends import EmbedderOptions
from workers.backends.hf import TokenBatched, max_seq_length, require_safetensors
from workers.backends.onnx_export import Export, cache_key, cached_export, export_embedding_model

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class OnnxEmbedder(TokenBatched):
    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: PreTrainedTokenizerBase,
        export: Export,
        *,
        max_length: int,
        batch_tokens: int,
        max_batch: int,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.input_names = export.input_names
        self.dimensions = int(export.manifest["dimensions"])
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.pad_to_multiple_of = pad_to_multiple_of

    def _forward(self, ids: list[list[int]], normalize: bool) -> "np.ndarray[Any, Any]":
        encoded = self.tokenizer.pad(
            {"input_ids": ids}, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="np"
        )
        feed = {name: _int64(encoded, name) for name in self.input_names}
        pooled: np.ndarray[Any, Any] = self.session.run(None, feed)[0].astype(np.float32)
        if normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled

    def close(self) -> None:
        del self.session


def _int64(encoded: Any, name: str) -> "np.ndarray[Any, Any]":
    if name == "token_type_ids" and name not in encoded:
        return np.zeros_like(encoded["input_ids"], dtype=np.int64)
    return np.asarray(encoded[name], dtype=np.int64)


def load_onnx_embedder(path: Path, options: EmbedderOptions) -> OnnxEmbedder:
    export = fp32_export(path, options)
    return make_embedder(path, export, options, providers_for(options.device))


def load_onnx_int8_embedder(path: Path, options: EmbedderOptions) -> OnnxEmbedder:
    from workers.backends.onnx_quant import int8_export

    export = int8_export(path, options, fp32_export(path, options))
    quality = export.manifest["quality"]
    if not quality["passes"]:
        raise ConfigError(
            f"onnx-int8 is not offered for model {path.name!r}: int8 falls short of the "
            f"quality bar ({quality['description']}); use backend 'onnx' (float32)"
        )
    return make_embedder(path, export, options, [CPU])  # int8 kernels are CPU kernels


def fp32_export(path: Path, options: EmbedderOptions) -> Export:
    require_safetensors(path)

    def build(target: Path) -> dict[str, Any]:
        log.info("exporting %s to ONNX (once; cached in %s)", path.name, cache_dir(options))
        return export_embedding_model(path, target, trust_remote_code=options.trust_remote_code)

    return cached_export(cache_dir(options), cache_key(path, "fp32"), build)


def make_embedder(
    path: Path, export: Export, options: EmbedderOptions, providers: list[Any]
) -> OnnxEmbedder:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
    session = ort.InferenceSession(
        str(export.graph), session_options(options.threads), providers=providers
    )
    return OnnxEmbedder(
        session,
        tokenizer,
        export,
        max_length=max_seq_length(path, tokenizer),
        batch_tokens=options.batch_tokens,
        max_batch=options.max_batch,
        pad_to_multiple_of=options.pad_to_multiple_of,
    )


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    return options


def providers_for(device: str) -> list[Any]:
    """ONNX Runtime's CPU provider; on a GPU worker its CUDA provider first, when this
    onnxruntime build has one (onnxruntime-gpu), else the CPU with a logged reason."""
    if not device.startswith("cuda"):
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [(CUDA, {"device_id": 0}), CPU]  # a pinned worker sees one device: 0
    log.warning(
        "onnx backend on %s: this onnxruntime build has no CUDA provider (install "
        "onnxruntime-gpu); running on the CPU",
        device,
    )
    return [CPU]


def cache_dir(options: EmbedderOptions) -> Path:
    return options.cache_dir or get_storage_settings().data_dir / "cache" / "onnx"
