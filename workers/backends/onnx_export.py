"""ONNX exports of embedding models, built once and cached on disk.

An export is the model plus mean pooling in one graph (inputs `input_ids`,
`attention_mask` and, where the tokenizer makes them, `token_type_ids`; output `pooled`,
one unnormalised vector per text), made with `torch.onnx.export` (the TorchScript
exporter, `dynamo=False`: it exports MiniLM in ~1.5 s where the dynamo exporter takes far
longer; optimum has no exporter that works with transformers 5).

The cache directory of an export is named by what makes it: the hash of the model's
weights and config, the opset and the variant (fp32, or an int8 recipe), so a changed
model or recipe never reuses a stale graph. Its `manifest.json` records the graph's
sha256, checked on every load: a graph that does not match (a torn copy, a disk error,
a hand edit) is rebuilt, never run. Exports are written to a temporary directory and
renamed into place, so workers starting together never see half a graph; the slower of
two racing builds finds the other's in place and keeps it.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from jobs.errors import ConfigError

log = logging.getLogger(__name__)

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "pooled"
GRAPH = "model.onnx"
MANIFEST = "manifest.json"
# Files whose bytes decide the exported graph.
MODEL_FILES = ("*.safetensors", "config.json")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Export:
    directory: Path
    manifest: dict[str, Any]

    @property
    def graph(self) -> Path:
        return self.directory / GRAPH

    @property
    def input_names(self) -> list[str]:
        return list(self.manifest["inputs"])


def model_hash(model_dir: Path) -> str:
    """sha256 over the names and bytes of the weight and config files."""
    digest = hashlib.sha256()
    files = sorted({f for pattern in MODEL_FILES for f in model_dir.glob(pattern)})
    if not files:
        raise ConfigError(f"model directory {model_dir.name!r} has no weights to export")
    for file in files:
        digest.update(file.name.encode() + b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(model_dir: Path, variant: str, opset: int = OPSET) -> str:
    return f"{model_hash(model_dir)[:24]}-opset{opset}-{variant}"


def cached_export(
    cache_dir: Path,
    key: str,
    build: Callable[[Path], dict[str, Any]],
) -> Export:
    """The export under `cache_dir/key`, built by `build(target_dir)` (which writes
    `model.onnx` and returns the manifest's fields) when missing or damaged."""
    directory = cache_dir / key
    found = _verified(directory)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    try:
        manifest = {**build(staging), "key": key}
        manifest["sha256"] = file_sha256(staging / GRAPH)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _publish(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    found = _verified(directory)
    if found is None:
        raise ConfigError(f"ONNX export {key} did not verify after it was written")
    return found


def _verified(directory: Path) -> Export | None:
    """The export in `directory` when its graph matches its manifest; a damaged one is
    removed (and so rebuilt)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        intact = file_sha256(directory / GRAPH) == manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
        manifest = None
    if intact and isinstance(manifest, dict):
        return Export(directory, manifest)
    if directory.exists():
        log.warning(
            "ONNX export %s is damaged (sha256 mismatch or no manifest); rebuilding", directory.name
        )
        shutil.rmtree(directory, ignore_errors=True)
    return None


def _publish(staging: Path, directory: Path) -> None:
    try:
        os.rename(staging, directory)
    except OSError:
        if not (directory / MANIFEST).exists():
            raise
        # Another worker published the same export first: keep theirs.


def export_embedding_model(
    model_dir: Path, target: Path, *, trust_remote_code: bool, opset: int = OPSET
) -> dict[str, Any]:
    """Write `target/model.onnx`: the model (float32) with mean pooling, dynamic batch and
    sequence axes. Returns the manifest's fields."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(
        model_dir,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        dtype=torch.float32,
    ).eval()
    sample = tokenizer(
        ["a short text", "a somewhat longer sample text"], padding=True, return_tensors="pt"
    )
    names = [name for name in INPUTS if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with torch.inference_mode():
        torch.onnx.export(
            MeanPooled(model, names),
            tuple(sample[name] for name in names),
            str(target / GRAPH),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return {
        "inputs": names,
        "opset": opset,
        "dimensions": int(model.config.hidden_size),
        "torch": torch.__version__,
        "model_hash": model_hash(model_dir),
    }


class MeanPooled(torch.nn.Module):
    """The model's last hidden state averaged over real (unpadded) tokens."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.names, inputs, strict=True))
        hidden = self.model(**named).last_hidden_state
        mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return pooled
