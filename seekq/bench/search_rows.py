"""Rows of the document pipeline: ingest throughput (I1) and search latency (F3).

- I1: chunks/s of one index job over synthetic documents, end to end (chunking in the index
  worker, embedding through sub-jobs on the embed worker, the FAISS version and the SQL
  swap), against `SentenceTransformer.encode` of the very same chunk texts in this process
  (batch 64). No target: the issue asks for the ratio.
- F3: p50 of a search job through the queue (submit → `cpu.search` worker → result read
  back) minus p50 of the same steps in this process (`workers.searching.run_search` on the
  same index: embed the query, FAISS top-k, chunks from SQL). Calls alternate in blocks.
"""

import random
import time
from contextlib import ExitStack
from typing import Any

from jobs.index_specs import IndexCreate, SearchSpec
from jobs.status import JobStatus
from seekq.bench.embed_rows import VOCABULARY, in_process_model
from seekq.bench.harness import Harness, Sizes, seekq_worker
from seekq.bench.queue_rows import percentiles
from seekq.bench.report import Row

BLOCK = 10
F3_TARGET_MS = 3.0
QUERIES = 100
DOCUMENTS = 120  # of 4-8 paragraphs each: about 3 chunks of <= 256 tokens per document


def document_rows(harness: Harness, sizes: Sizes) -> list[Row]:
    with ExitStack() as workers:
        workers.enter_context(seekq_worker(harness.stack, "cpu.index"))
        workers.enter_context(seekq_worker(harness.stack, "cpu.search"))
        ingest = i1_ingest(harness, DOCUMENTS if sizes.embed_rounds > 1 else DOCUMENTS // 4)
        return [ingest, f3_search(harness, QUERIES if sizes.embed_rounds > 1 else 30)]


# ---------------------------------------------------------------- I1: ingest


def i1_ingest(harness: Harness, documents: int) -> Row:
    context, who = harness.context, harness.who
    context.indexes.create(who, IndexCreate(name="bench", type="hnsw"))
    spec = {"action": "upsert", "documents": synthetic_documents(documents, seed=4)}
    harness.settle()
    started = time.perf_counter()
    job_id = context.indexes.change(who, "bench", spec).job.id
    job = context.service.wait(who, job_id, 1800)
    elapsed_s = time.perf_counter() - started
    if job.status != JobStatus.SUCCEEDED.value or job.result is None:
        raise RuntimeError(f"bench index job ended {job.status}: {job.error}")
    chunks = int(job.result["chunks"])
    texts = chunk_texts(harness)
    peer_rate = encode_rate(texts, harness.threads, harness)
    rate = chunks / elapsed_s
    return Row(
        id="I1",
        what=f"ingest {documents} documents → {chunks} chunks (≤256 tokens), one index job",
        seekq=f"{rate:.0f} chunks/s end to end ({job.result['embed_jobs']} embed sub-jobs)",
        peer=f"{peer_rate:.0f} chunks/s (ST encode of the same chunks, batch 64)",
        ratio=f"{rate / peer_rate:.2f}x",
        target="report",
        passed=None,
    )


def synthetic_documents(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 (synthetic text, not secrets)
    words = VOCABULARY.split()
    documents = []
    for n in range(count):
        paragraphs = [
            " ".join(rng.choices(words, k=rng.randint(40, 90))).capitalize() + "."
            for _ in range(rng.randint(4, 8))
        ]
        documents.append({"id": f"doc-{n}", "text": "\n\n".join(paragraphs)})
    return documents


def chunk_texts(harness: Harness) -> list[str]:
    from sqlalchemy import select

    from storage.tables import ChunkRow, IndexRow

    with harness.context.sessions() as session:
        index_id = session.scalar(select(IndexRow.id).where(IndexRow.name == "bench"))
        return list(session.scalars(select(ChunkRow.text).where(ChunkRow.index_id == index_id)))


def encode_rate(texts: list[str], threads: int, harness: Harness) -> float:
    model = in_process_model(threads)
    model.encode(texts[:64], batch_size=64)
    harness.settle()
    started = time.perf_counter()
    model.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - started)


# ---------------------------------------------------------------- F3: search latency


def f3_search(harness: Harness, calls: int) -> Row:
    queries = [f"{d['text'][:80]}" for d in synthetic_documents(calls, seed=9)]
    local = _local_search(harness)
    for query in queries[:10]:  # warm both sides
        _queued_ms(harness, query)
        local(query)
    harness.settle()
    queued: list[float] = []
    direct: list[float] = []
    for lo in range(0, calls, BLOCK):
        queued += [_queued_ms(harness, q) for q in queries[lo : lo + BLOCK]]
        direct += [local(q) for q in queries[lo : lo + BLOCK]]
    q50, q99 = percentiles(queued)
    d50, d99 = percentiles(direct)
    gap = q50 - d50
    return Row(
        id="F3",
        what=f"search job latency (k=5, HNSW), sequential, {len(queued)} calls each",
        seekq=f"p50 {q50:.1f} ms / p99 {q99:.1f} ms via cpu.search",
        peer=f"p50 {d50:.1f} ms / p99 {d99:.1f} ms (same steps in-process)",
        ratio=f"Δp50 {gap:+.1f} ms",
        target=f"Δp50 ≤ {F3_TARGET_MS:.0f} ms",
        passed=gap <= F3_TARGET_MS,
    )


def _queued_ms(harness: Harness, query: str) -> float:
    started = time.perf_counter()
    job_id = harness.context.indexes.search(harness.who, "bench", {"query": query, "k": 5}).job.id
    job = harness.context.service.wait(harness.who, job_id, 60)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if job.status != JobStatus.SUCCEEDED.value:
        raise RuntimeError(f"search job ended {job.status}: {job.error}")
    return elapsed_ms


def _local_search(harness: Harness) -> Any:
    """`run_search` in this process, on a model pool of its own (the worker's code path
    without the queue, the claim and the result write)."""
    from workers.pool import ModelPool
    from workers.runners import RunningJob
    from workers.searching import run_search
    from workers.settings import WorkerSettings

    pool = ModelPool(harness.context.models, WorkerSettings(), context=harness.context)
    job = RunningJob("bench", 1, lambda: False, harness.who.tenant_id)

    def search_ms(query: str) -> float:
        started = time.perf_counter()
        run_search(SearchSpec(index="bench", query=query, k=5), pool, job)
        return (time.perf_counter() - started) * 1000

    return search_ms


def main() -> None:
    """`python -m seekq.bench.search_rows`: I1 and F3 alone (the full table: seekq bench)."""
    import tempfile
    from pathlib import Path

    import torch
    from rich.console import Console

    from seekq.bench.harness import FULL, start
    from seekq.bench.report import results_table

    console = Console()
    with tempfile.TemporaryDirectory(prefix="seekq-bench-") as tmp, ExitStack() as exits:
        harness = start(Path(tmp), torch.get_num_threads(), exits, console)
        console.print(results_table(document_rows(harness, FULL)))


if __name__ == "__main__":
    main()
