"""TensorRT embedding backend: ONNX Runtime's TensorRT execution provider over the cached
ONNX export, in fp16, with dynamic-shape profiles for batch size and sequence length.

Engines are built by TensorRT on first use (minutes for a large model) and cached on disk
under a directory named by everything an engine depends on: the model's hash, the
TensorRT version, the GPU's architecture (compute capability) and the shape profile.
Engines are not portable across any of those, so a change builds a new one instead of
loading a wrong one. After a build the engine files' sha256 are written to `engine.json`;
every later load checks them first and throws away (and so rebuilds) an engine whose
bytes changed: TensorRT would deserialise a tampered engine without complaint.

When TensorRT cannot run (no GPU, an onnxruntime build without the TensorRT provider, no
TensorRT libraries) the worker logs why and serves the model with the HF backend on the
same device instead: slower, never wrong.
"""

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.backends import Embedder, EmbedderOptions
from workers.backends.onnx_export import file_sha256, model_hash

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
ENGINE_MANIFEST = "engine.json"
OPT_BATCH = 64
OPT_SEQUENCE = 128


@dataclass(frozen=True)
class Profile:
    """The shapes an engine accepts: batch 1..max_batch, sequence 1..max_sequence."""

    max_batch: int
    max_sequence: int

    def shapes(self, names: list[str], batch: int, sequence: int) -> str:
        return ",".join(f"{name}:{batch}x{sequence}" for name in names)

    def provider_options(self, names: list[str]) -> dict[str, str]:
        opt_batch, opt_sequence = (
            min(OPT_BATCH, self.max_batch),
            min(OPT_SEQUENCE, self.max_sequence),
        )
        return {
            "trt_profile_min_shapes": self.shapes(names, 1, 1),
            "trt_profile_opt_shapes": self.shapes(names, opt_batch, opt_sequence),
            "trt_profile_max_shapes": self.shapes(names, self.max_batch, self.max_sequence),
        }

    @property
    def tag(self) -> str:
        return f"b{self.max_batch}-s{self.max_sequence}"


def unavailable_reason(device: str) -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    if not device.startswith("cuda"):
        return f"the worker runs on {device}, not a GPU"
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        return "this onnxruntime build has no TensorRT provider (install onnxruntime-gpu)"
    if tensorrt_version() is None:
        return "the TensorRT libraries are not installed (pip install tensorrt-cu12)"
    return None


def tensorrt_version() -> str | None:
    try:
        import tensorrt  # type: ignore[import-not-found,unused-ignore]
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__)


def gpu_architecture() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"sm{major}{minor}"


def engine_dir(cache: Path, model_dir: Path, trt: str, arch: str, profile: Profile) -> Path:
    """Where the engine for exactly this model, TensorRT, GPU and profile lives."""
    key = f"{model_hash(model_dir)[:24]}|trt{trt}|{arch}|{profile.tag}|fp16"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache / "tensorrt" / f"{model_dir.name}-trt{trt}-{arch}-{profile.tag}-{digest}"


def verify_engines(directory: Path) -> bool:
    """True when the engine files match their recorded sha256. A directory with no record
    (never finished building) or changed bytes is removed, so TensorRT builds afresh."""
    manifest = directory / ENGINE_MANIFEST
    try:
        recorded = json.loads(manifest.read_text())["files"]
        intact = bool(recorded) and all(
            file_sha256(directory / name) == digest for name, digest in recorded.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if not intact and directory.exists():
        log.warning(
            "TensorRT engine cache %s does not match its sha256 record; rebuilding", directory.name
        )
        shutil.rmtree(directory, ignore_errors=True)
    return intact


def record_engines(directory: Path) -> None:
    files = {
        path.name: file_sha256(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != ENGINE_MANIFEST
    }
    (directory / ENGINE_MANIFEST).write_text(json.dumps({"files": files}, indent=2))


def load_tensorrt_embedder(path: Path, options: EmbedderOptions) -> Embedder:
    reason = unavailable_reason(options.device)
    if reason is not None:
        log.warning(
            "tensorrt backend for %s unavailable: %s; using the hf backend", path.name, reason
        )
        from workers.backends.hf import load_hf_embedder

        return load_hf_embedder(path, options)
    return _tensorrt_embedder(path, options)


def _tensorrt_embedder(path: Path, options: EmbedderOptions) -> Embedder:
    from transformers import AutoTokenizer

    from workers.backends.hf import max_seq_length
    from workers.backends.onnx import CPU, CUDA, cache_dir, fp32_export, make_embedder

    export = fp32_export(path, options)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
    profile = Profile(options.max_batch, max_seq_length(path, tokenizer))
    engines = engine_dir(
        cache_dir(options), path, str(tensorrt_version()), gpu_architecture(), profile
    )
    fresh = not verify_engines(engines)
    engines.mkdir(parents=True, exist_ok=True)
    trt_options: dict[str, Any] = {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(engines),
        **profile.provider_options(export.input_names),
    }
    if fresh:
        log.info(
            "building the TensorRT engine for %s (%s); once, cached in %s",
            path.name,
            profile.tag,
            engines,
        )
    providers = [(TENSORRT, trt_options), (CUDA, {"device_id": 0}), CPU]
    embedder = make_embedder(path, export, options, providers)
    if fresh:
        embedder.embed(["warm up"], True, lambda: False)  # the engine is built on first run
        record_engines(engines)
    return embedder
